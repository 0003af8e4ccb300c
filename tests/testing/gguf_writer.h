// A small GGUF writer for tests: metadata of every value type (nested arrays included) and
// tensors of any type, written as GGUF v3 (or v2) bytes, plus a tiny random "llama" model that
// other suites can load without the real SmolLM2 file.
//
// The writer is deliberately independent of the reader in model/gguf.cc (it shares only the type
// ids of model/ggml_types.h), so a round trip tests the reader against a second implementation
// of the format rather than against itself.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/ggml_types.h"

namespace kvlab::testing {

// GGUF metadata value type ids (the GGUF spec's gguf_metadata_value_type).
enum class MetaType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

// One metadata value. Scalars keep their bits in `u` (integers, bools) or `f` (floats); arrays
// hold their elements, which all have type `elem_type` (arrays of arrays are allowed).
struct MetaValue {
  MetaType type = MetaType::kU8;
  uint64_t u = 0;     // integers (two's complement for the signed ones) and bools
  double f = 0;       // f32 / f64
  std::string s;      // strings
  MetaType elem_type = MetaType::kU8;
  std::vector<MetaValue> items;

  static MetaValue u8(uint8_t v);
  static MetaValue i8(int8_t v);
  static MetaValue u16(uint16_t v);
  static MetaValue i16(int16_t v);
  static MetaValue u32(uint32_t v);
  static MetaValue i32(int32_t v);
  static MetaValue u64(uint64_t v);
  static MetaValue i64(int64_t v);
  static MetaValue f32(float v);
  static MetaValue f64(double v);
  static MetaValue boolean(bool v);
  static MetaValue string(std::string v);
  // REQUIRES: every item has type `elem_type`.
  static MetaValue array(MetaType elem_type, std::vector<MetaValue> items);
};

class GgufWriter {
 public:
  // alignment: written as general.alignment when it is not the default 32.
  explicit GgufWriter(uint32_t version = 3, uint32_t alignment = 32);

  void add(const std::string& key, MetaValue value);
  void add_u32(const std::string& key, uint32_t v) { add(key, MetaValue::u32(v)); }
  void add_i32(const std::string& key, int32_t v) { add(key, MetaValue::i32(v)); }
  void add_f32(const std::string& key, float v) { add(key, MetaValue::f32(v)); }
  void add_bool(const std::string& key, bool v) { add(key, MetaValue::boolean(v)); }
  void add_string(const std::string& key, const std::string& v) { add(key, MetaValue::string(v)); }
  void add_string_array(const std::string& key, const std::vector<std::string>& v);
  void add_i32_array(const std::string& key, const std::vector<int32_t>& v);
  void add_f32_array(const std::string& key, const std::vector<float>& v);
  // Drops a key / tensor written earlier; false if there was none.
  bool remove(const std::string& key);
  bool remove_tensor(const std::string& name);

  // Tensors. `shape` is in GGUF order (shape[0] innermost); data is written in the order given.
  void add_tensor_f32(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& values);
  // Rounds each value to f16 (round to nearest even).
  void add_tensor_f16(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& values);
  // Raw block bytes (34 per 32 values for Q8_0, 20 for Q4_1); sizes are checked.
  void add_tensor_q8_0(const std::string& name, std::vector<int64_t> shape, std::vector<uint8_t> blocks);
  void add_tensor_q4_1(const std::string& name, std::vector<int64_t> shape, std::vector<uint8_t> blocks);
  // Any type id (unknown ones too), with whatever bytes are given: nothing is checked.
  void add_tensor_raw(const std::string& name, std::vector<int64_t> shape, uint32_t type_id, std::vector<uint8_t> data);

  // Byte offsets of the parts of the file just written, for tests that cut or corrupt it.
  struct Layout {
    size_t kv_begin = 0;          // first metadata key (after the 24-byte header)
    size_t tensor_info_begin = 0;
    size_t data_begin = 0;        // start of the data section
    std::vector<size_t> fields;   // start offset of every field (header, keys, values, infos...)
  };
  // The file. Each tensor starts on an `alignment` boundary; nothing follows the last tensor's
  // bytes, so any shorter prefix of the file loses data.
  std::vector<uint8_t> bytes(Layout* layout = nullptr) const;

 private:
  struct TensorEntry {
    std::string name;
    std::vector<int64_t> shape;
    uint32_t type_id;
    std::vector<uint8_t> data;
  };
  uint32_t version_;
  uint32_t alignment_;
  std::vector<std::pair<std::string, MetaValue>> meta_;
  std::vector<TensorEntry> tensors_;
};

// Hand-built blocks. Scales are given as f16 bit patterns so tests control them exactly.
std::vector<uint8_t> q8_0_block(uint16_t d_f16, const int8_t (&q)[32]);
std::vector<uint8_t> q4_1_block(uint16_t d_f16, uint16_t m_f16, const uint8_t (&q)[32]);  // q in [0, 15]

// A tiny random Llama model in GGUF. Its tensors mix types so a load exercises every decoder:
// token_embd Q8_0, attn_q Q4_1, attn_k F16, everything else F32 (and output.weight F32 when
// untied). The tokenizer metadata is a toy byte-level vocabulary (tokens, token_type, an empty
// merges list, pre "smollm", bos 1, eos 2), enough for loaders that read it.
struct TinyLlamaSpec {
  int n_layers = 2;
  int dim = 32;        // a multiple of 32 (Q8_0 / Q4_1 rows)
  int n_heads = 4;
  int n_kv_heads = 2;
  int hidden_dim = 48;
  int vocab_size = 64;
  int context_length = 128;
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  bool tied = true;    // no output.weight
  uint32_t seed = 1;
};
struct TinyLlamaGguf {
  std::vector<uint8_t> bytes;
  // The exact f32 values a correct reader must produce for every tensor, by GGUF name, in file
  // (row-major [out, in]) order.
  std::map<std::string, std::vector<float>> values;
  GgufWriter::Layout layout;
};
// The writer holding the model, before bytes() (to add or replace entries).
GgufWriter tiny_llama_writer(const TinyLlamaSpec& spec, std::map<std::string, std::vector<float>>* values);
TinyLlamaGguf make_tiny_llama_gguf(const TinyLlamaSpec& spec = {});

}  // namespace kvlab::testing
