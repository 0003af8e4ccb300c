#include "base/serialize.h"

#include "base/file.h"

namespace kvlab {

Status write_checked_file(const std::string& path, BinaryWriter w) {
  w.put<uint64_t>(fnv1a(w.bytes().data(), w.bytes().size()));
  return write_file_atomic(path, w.bytes());
}

StatusOr<std::vector<uint8_t>> read_checked_file(const std::string& path, const char (&magic)[8], uint32_t version,
                                                 const std::string& kind, const std::string& maker) {
  KVLAB_ASSIGN_OR_RETURN(std::vector<uint8_t> data, read_file_bytes(path));
  const std::string what = "calibration file " + path;
  if (data.size() < sizeof magic + 4 || std::memcmp(data.data(), magic, sizeof magic) != 0) {
    return invalid_argument(what + ": not " + kind + " (bad magic; make one with " + maker + ")");
  }
  uint32_t found = 0;
  std::memcpy(&found, data.data() + sizeof magic, 4);
  if (found != version) {
    return invalid_argument(what + ": format version " + std::to_string(found) + ", this build reads version " +
                            std::to_string(version) + " (recalibrate with this kvlab)");
  }
  if (data.size() < sizeof magic + 4 + 8) return data_loss(what + ": truncated");
  uint64_t stored_sum = 0;
  std::memcpy(&stored_sum, data.data() + data.size() - 8, 8);
  if (fnv1a(data.data(), data.size() - 8) != stored_sum) {
    return data_loss(what + ": checksum mismatch (truncated or corrupted)");
  }
  data.resize(data.size() - 8);
  data.erase(data.begin(), data.begin() + sizeof magic + 4);
  return data;
}

}  // namespace kvlab
