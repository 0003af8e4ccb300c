// GGUF v2/v3 reader: header, metadata, tensor table and tensor data, all bounds-checked.
//
// The whole file is read into memory and validated by open(): every length, count, offset and
// tensor extent is checked against the file size before it is used, so a truncated or corrupt
// file is a kDataLoss Status naming what is wrong and where, never an out-of-bounds read.
// Tensor types that kvlab cannot dequantize are reported as kUnsupported by dequantize() (and by
// the model loader), with the list of types that are supported.
//
// Layout (all little-endian; "string" is a u64 byte length then the bytes, no terminator):
//   u32 magic "GGUF" | u32 version (2 or 3) | u64 tensor_count | u64 kv_count
//   kv_count x { string key | u32 value type | value }      value: see GgufValueType
//   tensor_count x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset }
//   padding to general.alignment (default 32) | data section (tensor offsets are from its start)
// Version 1 used u32 for the counts and string lengths and is refused as kUnsupported.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "model/ggml_types.h"

namespace kvlab {

// Metadata value types, with the ids GGUF writes. An array holds one element type (arrays of
// arrays are allowed) and a u64 count.
enum class GgufValueType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};
// "u32", "string", "array"...; "unknown" for an id outside the enum.
const char* gguf_value_type_name(GgufValueType type);

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
  // The value of `key` as text: numbers in decimal (floats with 9 significant digits), strings
  // quoted, arrays as "[a, b, ...]" (nested arrays included) with at most `max_elements` shown
  // per array and "... (N elements)" for the rest. For `kvlab info` and for tests of values the
  // typed getters do not reach (arrays of arrays). kNotFound for a missing key.
  StatusOr<std::string> format_value(std::string_view key, size_t max_elements = 8) const;

  const std::vector<Tensor>& tensors() const { return tensors_; }
  const Tensor* find_tensor(std::string_view name) const;  // nullptr if absent
  // Raw bytes of a tensor (n_bytes long).
  const uint8_t* tensor_data(const Tensor& t) const;
  // The tensor as f32, row-major with shape[0] innermost. kUnsupported for types without a
  // dequantizer (see ggml_types.h).
  StatusOr<std::vector<float>> dequantize(const Tensor& t) const;

  // Implementation detail, public only so the parser in gguf.cc can fill it. Values are not
  // decoded at open(): they stay in bytes_ (already validated) and the getters decode them, so a
  // 49k-token vocabulary costs no allocation until someone asks for it.
  struct Value {
    GgufValueType type = GgufValueType::kU8;
    uint64_t offset = 0;  // in bytes_: scalars and arrays: first payload byte; strings: first char
    uint64_t count = 0;   // strings: byte length; arrays: number of elements
    GgufValueType elem_type = GgufValueType::kU8;  // arrays only
  };
  struct Entry {
    std::string key;
    Value value;
  };

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
