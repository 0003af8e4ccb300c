// Whole-file reads with clear errors, and atomic writes (temporary file + rename) so that a
// failed run never leaves a half-written output behind.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace kvlab {

StatusOr<std::vector<uint8_t>> read_file_bytes(const std::string& path);
StatusOr<std::string> read_file_text(const std::string& path);
// Writes `content` to `path` through `path.tmp.<pid>` and a rename.
Status write_file_atomic(const std::string& path, std::string_view content);
bool file_exists(const std::string& path);

}  // namespace kvlab
