// Little-endian binary writer/reader for versioned files (saved caches, calibration files).
// The reader checks every read against the end of the buffer: a truncated file is a kDataLoss
// Status, never an out-of-bounds read.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "base/status.h"

namespace kvlab {

class BinaryWriter {
 public:
  template <typename T>
  void put(T v) {
    static_assert(std::is_trivially_copyable_v<T>);
    buf_.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  void put_bytes(const void* p, size_t n) { buf_.append(static_cast<const char*>(p), n); }
  void put_string(std::string_view s) {
    put<uint64_t>(s.size());
    buf_.append(s);
  }
  template <typename T>
  void put_array(const T* p, size_t n) {
    put<uint64_t>(n);
    put_bytes(p, n * sizeof(T));
  }
  const std::string& bytes() const { return buf_; }

 private:
  std::string buf_;
};

class BinaryReader {
 public:
  BinaryReader(const void* data, size_t size, std::string what)
      : p_(static_cast<const uint8_t*>(data)), size_(size), what_(std::move(what)) {}

  // Reads a uint32 version and refuses any other than `expected`: "<what>: <name> version V
  // (this build reads version E)".
  Status expect_version(uint32_t expected, const std::string& name) {
    uint32_t version = 0;
    KVLAB_RETURN_IF_ERROR(get(&version));
    if (version == expected) return Status::Ok();
    return unsupported(what_ + ": " + name + " version " + std::to_string(version) + " (this build reads version " +
                       std::to_string(expected) + ")");
  }

  template <typename T>
  Status get(T* v) {
    static_assert(std::is_trivially_copyable_v<T>);
    KVLAB_RETURN_IF_ERROR(need(sizeof(T)));
    std::memcpy(v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return Status::Ok();
  }
  Status get_bytes(void* dst, size_t n) {
    KVLAB_RETURN_IF_ERROR(need(n));
    if (n == 0) return Status::Ok();  // dst may then be null (an empty vector's data()): memcpy's UB
    std::memcpy(dst, p_ + pos_, n);
    pos_ += n;
    return Status::Ok();
  }
  Status get_string(std::string* s, size_t max_len = 1 << 20) {
    uint64_t n = 0;
    KVLAB_RETURN_IF_ERROR(get(&n));
    if (n > max_len) return data_loss(what_ + ": string of " + std::to_string(n) + " bytes at offset " + std::to_string(pos_));
    KVLAB_RETURN_IF_ERROR(need(n));
    s->assign(reinterpret_cast<const char*>(p_ + pos_), n);
    pos_ += n;
    return Status::Ok();
  }
  // Reads an array written by put_array; `expected` < 0 accepts any length.
  template <typename T, typename Alloc>
  Status get_array(std::vector<T, Alloc>* v, int64_t expected = -1) {
    uint64_t n = 0;
    KVLAB_RETURN_IF_ERROR(get(&n));
    if (expected >= 0 && n != uint64_t(expected)) {
      return data_loss(what_ + ": array of " + std::to_string(n) + " elements where " +
                       std::to_string(expected) + " were expected");
    }
    if (n > (size_ - pos_) / sizeof(T)) return need(n * sizeof(T));
    v->resize(n);
    return get_bytes(v->data(), n * sizeof(T));
  }
  size_t remaining() const { return size_ - pos_; }
  size_t offset() const { return pos_; }
  const std::string& what() const { return what_; }

 private:
  Status need(size_t n) const {
    if (n > size_ - pos_) {
      return data_loss(what_ + " is truncated: needs " + std::to_string(n) + " more bytes at offset " +
                       std::to_string(pos_) + ", has " + std::to_string(size_ - pos_));
    }
    return Status::Ok();
  }
  const uint8_t* p_;
  size_t size_;
  size_t pos_ = 0;
  std::string what_;
};

// 64-bit FNV-1a: the checksum of calibration files.
inline uint64_t fnv1a(const void* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

// Side-data files (AQUA-KV predictors, dynsparse deciders): an 8-byte magic, a u32 format
// version, the payload, and the FNV-1a of everything before it.
//   write: `w` holds magic, version and payload; appends the checksum and writes atomically.
Status write_checked_file(const std::string& path, BinaryWriter w);
// Reads such a file. Errors name `kind` ("an AQUA-KV calibration file", made by `maker`): bad
// magic, another version, a checksum mismatch (truncated or corrupted). Returns the payload alone
// (magic, version and checksum cut off).
StatusOr<std::vector<uint8_t>> read_checked_file(const std::string& path, const char (&magic)[8], uint32_t version,
                                                 const std::string& kind, const std::string& maker);

}  // namespace kvlab
