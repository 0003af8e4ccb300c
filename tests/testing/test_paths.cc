#include "tests/testing/test_paths.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sys/wait.h>

#include "base/file.h"
#include "base/paths.h"

namespace kvlab::testing {

std::string stories260k_path() { return shared_dir() + "/models/stories260K.bin"; }
std::string tok512_path() { return shared_dir() + "/models/tok512.bin"; }
std::string llama2_tokenizer_path() { return shared_dir() + "/models/tokenizer.bin"; }

std::string smollm2_path() {
  const std::string p = models_dir() + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  return file_exists(p) ? p : "";
}

std::string shared_data_path(const std::string& name) { return shared_dir() + "/data/" + name; }
std::string fixture_path(const std::string& name) { return source_dir() + "/tests/fixtures/" + name; }

std::string temp_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "kvlab";
  for (char& c : name) {
    if (c == '/') c = '_';
  }
  const auto dir = std::filesystem::temp_directory_path() / ("kvlab_test_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

CommandResult run_kvlab(const std::vector<std::string>& args) {
  const char* bin_dir = std::getenv("KVLAB_BIN_DIR");
  std::string cmd = std::string(bin_dir ? bin_dir : ".") + "/kvlab";
  for (const auto& a : args) {
    std::string quoted = "'";
    for (char c : a) quoted += (c == '\'') ? std::string("'\\''") : std::string(1, c);
    cmd += " " + quoted + "'";
  }
  cmd += " 2>&1";
  CommandResult result;
  std::FILE* pipe = ::popen(cmd.c_str(), "r");
  if (!pipe) return result;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) result.output.append(buf.data(), n);
  const int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

}  // namespace kvlab::testing
