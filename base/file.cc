#include "base/file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sys/stat.h>
#include <unistd.h>

namespace kvlab {
namespace {

template <typename Container>
StatusOr<Container> read_all(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return not_found("cannot open '" + path + "': " + std::strerror(errno));
  }
  if (S_ISDIR(st.st_mode)) return invalid_argument("'" + path + "' is a directory, not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found("cannot open '" + path + "': " + std::strerror(errno));
  Container data(static_cast<size_t>(st.st_size), 0);
  in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size()));
  if (static_cast<size_t>(in.gcount()) != data.size()) {
    return data_loss("short read of '" + path + "'");
  }
  return data;
}

}  // namespace

StatusOr<std::vector<uint8_t>> read_file_bytes(const std::string& path) {
  return read_all<std::vector<uint8_t>>(path);
}

StatusOr<std::string> read_file_text(const std::string& path) { return read_all<std::string>(path); }

Status write_file_atomic(const std::string& path, std::string_view content) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) return invalid_argument("cannot write '" + tmp + "': " + std::strerror(errno));
  const bool written = std::fwrite(content.data(), 1, content.size(), f) == content.size();
  const bool closed = std::fclose(f) == 0;
  if (!written || !closed || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return invalid_argument("cannot write '" + path + "': " + std::strerror(errno));
  }
  return Status::Ok();
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace kvlab
