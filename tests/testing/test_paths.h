// Paths to the models, text and fixtures the tests read, and a way to run the kvlab binary.
#pragma once

#include <string>
#include <vector>

namespace kvlab::testing {

std::string stories260k_path();   // ../shared/models/stories260K.bin
std::string tok512_path();        // ../shared/models/tok512.bin
std::string llama2_tokenizer_path();  // ../shared/models/tokenizer.bin (32k vocabulary)
// The SmolLM2 GGUF fetched by scripts/fetch_models.sh; "" when it is not there (the suites that
// need it then skip and say so).
std::string smollm2_path();
std::string shared_data_path(const std::string& name);  // ../shared/data/<name>
std::string fixture_path(const std::string& name);      // tests/fixtures/<name>
// A fresh empty directory under the test's temporary folder.
std::string temp_dir();

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};
// Runs build/bin/kvlab with `args` (each shell-quoted).
CommandResult run_kvlab(const std::vector<std::string>& args);

}  // namespace kvlab::testing
