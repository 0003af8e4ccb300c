#include "base/paths.h"

#include <cstdlib>

#ifndef KVLAB_SOURCE_DIR
#error "KVLAB_SOURCE_DIR must be defined by the build"
#endif

namespace kvlab {
namespace {

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return (v && *v) ? std::string(v) : fallback;
}

}  // namespace

std::string source_dir() { return KVLAB_SOURCE_DIR; }
std::string shared_dir() { return env_or("KVLAB_SHARED", source_dir() + "/../shared"); }
std::string models_dir() { return env_or("KVLAB_MODELS", source_dir() + "/.models"); }

}  // namespace kvlab
