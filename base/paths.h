// Where kvlab finds data it does not ship: ../shared beside the source tree (design notes, the
// stories260K model, evaluation text) and the folder where scripts/fetch_models.sh puts
// downloaded models. Environment variables win over the built-in defaults.
#pragma once

#include <string>

namespace kvlab {

// $KVLAB_SHARED, else <source dir>/../shared.
std::string shared_dir();
// $KVLAB_MODELS, else <source dir>/.models (where scripts/fetch_models.sh writes).
std::string models_dir();
// The source tree this binary was built from.
std::string source_dir();

}  // namespace kvlab
