// GGUF v2/v3 reader: header, metadata, tensor table and tensor data, all bounds-checked.
//
// The whole file is read into memory and validated by open(): every length, count, offset and
// tensor extent is checked against the file size before it is used, so a truncated or corrupt
// file is a kDataLoss Status naming what is wrong and where, never an out-of-bounds read.
// Tensor types that kvlab cannot dequantize are reported as kUnsupported by dequantize() (and by
// the model loader), with the list of types that are supported.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "model/ggml_types.h"

namespace kvlab {

class GgufFile {
 public:
  struct Tensor {
    std::string name;
    std::vector<int64_t> shape;  // ggml order: shape[0] is the innermost (contiguous) dimension
    GgmlType type;
    int64_t n_elements = 0;
    uint64_t offset = 0;   // from the start of the data section
    uint64_t n_bytes = 0;  // validated to lie inside the file
  };

  static StatusOr<GgufFile> open(const std::string& path);
  // Same checks on bytes already in memory (tests build files this way).
  static StatusOr<GgufFile> from_bytes(std::vector<uint8_t> bytes, std::string name = "<memory>");

  uint32_t version() const { return version_; }
  const std::string& path() const { return path_; }

  bool has(std::string_view key) const;
  // Typed metadata access. A missing key is kNotFound, a key of another type kInvalidArgument;
  // both messages name the key.
  StatusOr<int64_t> get_int(std::string_view key) const;      // any integer type
  StatusOr<double> get_float(std::string_view key) const;     // f32, f64 (or an integer)
  StatusOr<bool> get_bool(std::string_view key) const;
  StatusOr<std::string> get_string(std::string_view key) const;
  StatusOr<std::vector<std::string>> get_string_array(std::string_view key) const;
  StatusOr<std::vector<int64_t>> get_int_array(std::string_view key) const;
  StatusOr<std::vector<float>> get_float_array(std::string_view key) const;
  // All metadata keys, in file order (for `kvlab info`).
  std::vector<std::string> keys() const;

  const std::vector<Tensor>& tensors() const { return tensors_; }
  const Tensor* find_tensor(std::string_view name) const;  // nullptr if absent
  // Raw bytes of a tensor (n_bytes long).
  const uint8_t* tensor_data(const Tensor& t) const;
  // The tensor as f32, row-major with shape[0] innermost. kUnsupported for types without a
  // dequantizer (see ggml_types.h).
  StatusOr<std::vector<float>> dequantize(const Tensor& t) const;

  // Implementation detail, public only so the parser in gguf.cc can fill it.
  struct Value;
  struct Entry;

 private:
  std::string path_;
  uint32_t version_ = 0;
  std::vector<uint8_t> bytes_;
  uint64_t data_offset_ = 0;
  std::vector<Entry> entries_;
  std::vector<Tensor> tensors_;
  const Entry* find_entry(std::string_view key) const;
  friend class GgufParser;
};

}  // namespace kvlab
