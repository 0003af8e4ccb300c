#include "tests/testing/gguf_writer.h"

#include <cstring>
#include <random>
#include <stdexcept>

#include "base/half.h"

namespace kvlab::testing {
namespace {

// Appends little-endian fields to a byte vector.
struct Out {
  std::vector<uint8_t>* b;
  std::vector<size_t>* fields;  // may be null
  void mark() const {
    if (fields) fields->push_back(b->size());
  }
  template <typename T>
  void put(T v) const {
    uint8_t raw[sizeof(T)];
    std::memcpy(raw, &v, sizeof(T));
    b->insert(b->end(), raw, raw + sizeof(T));
  }
  void str(const std::string& s) const {
    put<uint64_t>(s.size());
    b->insert(b->end(), s.begin(), s.end());
  }
  void pad_to(size_t alignment) const {
    while (b->size() % alignment != 0) b->push_back(0);
  }
};

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

void write_payload(const Out& o, const MetaValue& v) {
  switch (v.type) {
    case MetaType::kU8: case MetaType::kI8: case MetaType::kBool: o.put<uint8_t>(uint8_t(v.u)); break;
    case MetaType::kU16: case MetaType::kI16: o.put<uint16_t>(uint16_t(v.u)); break;
    case MetaType::kU32: case MetaType::kI32: o.put<uint32_t>(uint32_t(v.u)); break;
    case MetaType::kU64: case MetaType::kI64: o.put<uint64_t>(v.u); break;
    case MetaType::kF32: o.put<float>(float(v.f)); break;
    case MetaType::kF64: o.put<double>(v.f); break;
    case MetaType::kString: o.str(v.s); break;
    case MetaType::kArray:
      o.put<uint32_t>(uint32_t(v.elem_type));
      o.put<uint64_t>(v.items.size());
      for (const auto& item : v.items) write_payload(o, item);
      break;
  }
}

MetaValue scalar(MetaType t, uint64_t u) {
  MetaValue v;
  v.type = t;
  v.u = u;
  return v;
}

}  // namespace

MetaValue MetaValue::u8(uint8_t v) { return scalar(MetaType::kU8, v); }
MetaValue MetaValue::i8(int8_t v) { return scalar(MetaType::kI8, uint64_t(int64_t(v))); }
MetaValue MetaValue::u16(uint16_t v) { return scalar(MetaType::kU16, v); }
MetaValue MetaValue::i16(int16_t v) { return scalar(MetaType::kI16, uint64_t(int64_t(v))); }
MetaValue MetaValue::u32(uint32_t v) { return scalar(MetaType::kU32, v); }
MetaValue MetaValue::i32(int32_t v) { return scalar(MetaType::kI32, uint64_t(int64_t(v))); }
MetaValue MetaValue::u64(uint64_t v) { return scalar(MetaType::kU64, v); }
MetaValue MetaValue::i64(int64_t v) { return scalar(MetaType::kI64, uint64_t(v)); }
MetaValue MetaValue::boolean(bool v) { return scalar(MetaType::kBool, v ? 1 : 0); }
MetaValue MetaValue::f32(float v) {
  MetaValue m;
  m.type = MetaType::kF32;
  m.f = v;
  return m;
}
MetaValue MetaValue::f64(double v) {
  MetaValue m;
  m.type = MetaType::kF64;
  m.f = v;
  return m;
}
MetaValue MetaValue::string(std::string v) {
  MetaValue m;
  m.type = MetaType::kString;
  m.s = std::move(v);
  return m;
}
MetaValue MetaValue::array(MetaType elem_type, std::vector<MetaValue> items) {
  for (const auto& item : items) {
    if (item.type != elem_type) throw std::invalid_argument("MetaValue::array: element of another type");
  }
  MetaValue m;
  m.type = MetaType::kArray;
  m.elem_type = elem_type;
  m.items = std::move(items);
  return m;
}

GgufWriter::GgufWriter(uint32_t version, uint32_t alignment) : version_(version), alignment_(alignment) {
  if (alignment_ != 32) add_u32("general.alignment", alignment_);
}

void GgufWriter::add(const std::string& key, MetaValue value) { meta_.emplace_back(key, std::move(value)); }

void GgufWriter::add_string_array(const std::string& key, const std::vector<std::string>& v) {
  std::vector<MetaValue> items;
  for (const auto& s : v) items.push_back(MetaValue::string(s));
  add(key, MetaValue::array(MetaType::kString, std::move(items)));
}

void GgufWriter::add_i32_array(const std::string& key, const std::vector<int32_t>& v) {
  std::vector<MetaValue> items;
  for (int32_t x : v) items.push_back(MetaValue::i32(x));
  add(key, MetaValue::array(MetaType::kI32, std::move(items)));
}

void GgufWriter::add_f32_array(const std::string& key, const std::vector<float>& v) {
  std::vector<MetaValue> items;
  for (float x : v) items.push_back(MetaValue::f32(x));
  add(key, MetaValue::array(MetaType::kF32, std::move(items)));
}

bool GgufWriter::remove(const std::string& key) {
  return std::erase_if(meta_, [&](const auto& kv) { return kv.first == key; }) > 0;
}

bool GgufWriter::remove_tensor(const std::string& name) {
  return std::erase_if(tensors_, [&](const TensorEntry& t) { return t.name == name; }) > 0;
}

namespace {

int64_t count(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

void GgufWriter::add_tensor_f32(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& values) {
  if (int64_t(values.size()) != count(shape)) throw std::invalid_argument("add_tensor_f32: size != shape");
  std::vector<uint8_t> data(values.size() * 4);
  std::memcpy(data.data(), values.data(), data.size());
  tensors_.push_back({name, std::move(shape), uint32_t(GgmlType::kF32), std::move(data)});
}

void GgufWriter::add_tensor_f16(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& values) {
  if (int64_t(values.size()) != count(shape)) throw std::invalid_argument("add_tensor_f16: size != shape");
  std::vector<uint8_t> data(values.size() * 2);
  for (size_t i = 0; i < values.size(); ++i) {
    const uint16_t h = f32_to_f16(values[i]);
    std::memcpy(data.data() + 2 * i, &h, 2);
  }
  tensors_.push_back({name, std::move(shape), uint32_t(GgmlType::kF16), std::move(data)});
}

void GgufWriter::add_tensor_q8_0(const std::string& name, std::vector<int64_t> shape, std::vector<uint8_t> blocks) {
  if (shape.empty() || shape[0] % 32 != 0 || int64_t(blocks.size()) != count(shape) / 32 * 34) {
    throw std::invalid_argument("add_tensor_q8_0: rows must be whole blocks of 34 bytes per 32 values");
  }
  tensors_.push_back({name, std::move(shape), uint32_t(GgmlType::kQ8_0), std::move(blocks)});
}

void GgufWriter::add_tensor_q4_1(const std::string& name, std::vector<int64_t> shape, std::vector<uint8_t> blocks) {
  if (shape.empty() || shape[0] % 32 != 0 || int64_t(blocks.size()) != count(shape) / 32 * 20) {
    throw std::invalid_argument("add_tensor_q4_1: rows must be whole blocks of 20 bytes per 32 values");
  }
  tensors_.push_back({name, std::move(shape), uint32_t(GgmlType::kQ4_1), std::move(blocks)});
}

void GgufWriter::add_tensor_raw(const std::string& name, std::vector<int64_t> shape, uint32_t type_id,
                                std::vector<uint8_t> data) {
  tensors_.push_back({name, std::move(shape), type_id, std::move(data)});
}

std::vector<uint8_t> GgufWriter::bytes(Layout* layout) const {
  std::vector<uint8_t> b;
  Layout local;
  Layout& l = layout ? *layout : local;
  l = Layout{};
  const Out o{&b, &l.fields};

  o.mark();
  b.insert(b.end(), {'G', 'G', 'U', 'F'});
  o.mark();
  o.put<uint32_t>(version_);
  o.mark();
  o.put<uint64_t>(tensors_.size());
  o.mark();
  o.put<uint64_t>(meta_.size());

  l.kv_begin = b.size();
  for (const auto& [key, value] : meta_) {
    o.mark();
    o.str(key);
    o.mark();
    o.put<uint32_t>(uint32_t(value.type));
    o.mark();
    write_payload(o, value);
  }

  l.tensor_info_begin = b.size();
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    offset = align_up(offset, alignment_);
    o.mark();
    o.str(t.name);
    o.mark();
    o.put<uint32_t>(uint32_t(t.shape.size()));
    for (int64_t d : t.shape) {
      o.mark();
      o.put<uint64_t>(uint64_t(d));
    }
    o.mark();
    o.put<uint32_t>(t.type_id);
    o.mark();
    o.put<uint64_t>(offset);
    offset += t.data.size();
  }

  o.pad_to(alignment_);
  l.data_begin = b.size();
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (i > 0) o.pad_to(alignment_);  // relative to data_begin, which is itself aligned
    o.mark();
    b.insert(b.end(), tensors_[i].data.begin(), tensors_[i].data.end());
  }
  return b;
}

std::vector<uint8_t> q8_0_block(uint16_t d_f16, const int8_t (&q)[32]) {
  std::vector<uint8_t> b(34);
  std::memcpy(b.data(), &d_f16, 2);
  std::memcpy(b.data() + 2, q, 32);
  return b;
}

std::vector<uint8_t> q4_1_block(uint16_t d_f16, uint16_t m_f16, const uint8_t (&q)[32]) {
  std::vector<uint8_t> b(20);
  std::memcpy(b.data(), &d_f16, 2);
  std::memcpy(b.data() + 2, &m_f16, 2);
  // Element j < 16 is the low nibble of byte j, element j + 16 the high nibble.
  for (int j = 0; j < 16; ++j) b[4 + j] = uint8_t((q[j] & 0x0f) | (q[j + 16] & 0x0f) << 4);
  return b;
}

namespace {

// Random tensors with the exact values a reader must decode from them.
struct TensorMaker {
  std::mt19937 rng;
  GgufWriter* w;
  std::map<std::string, std::vector<float>>* values;

  float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }
  int uniform_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
  // A random f16 scale of either sign (d < 0 happens in real files: ggml keeps the sign of the
  // element with the largest magnitude).
  uint16_t scale(float magnitude) {
    const float s = uniform(0.25f, 1.0f) * magnitude;
    return f32_to_f16(uniform_int(0, 1) ? s : -s);
  }

  void f32(const std::string& name, std::vector<int64_t> shape, float lo, float hi) {
    std::vector<float> v(size_t(count(shape)));
    for (float& x : v) x = uniform(lo, hi);
    w->add_tensor_f32(name, std::move(shape), v);
    (*values)[name] = v;
  }
  void f16(const std::string& name, std::vector<int64_t> shape) {
    std::vector<float> v(size_t(count(shape)));
    for (float& x : v) x = f16_to_f32(f32_to_f16(uniform(-0.5f, 0.5f)));  // exactly representable
    w->add_tensor_f16(name, std::move(shape), v);
    (*values)[name] = v;
  }
  void q8_0(const std::string& name, std::vector<int64_t> shape) {
    const int64_t n_blocks = count(shape) / 32;
    std::vector<uint8_t> data;
    std::vector<float> v;
    for (int64_t b = 0; b < n_blocks; ++b) {
      const uint16_t d = scale(0.01f);
      int8_t q[32];
      for (int8_t& x : q) x = int8_t(uniform_int(-128, 127));
      const auto block = q8_0_block(d, q);
      data.insert(data.end(), block.begin(), block.end());
      for (int8_t x : q) v.push_back(f16_to_f32(d) * float(x));
    }
    w->add_tensor_q8_0(name, std::move(shape), std::move(data));
    (*values)[name] = v;
  }
  void q4_1(const std::string& name, std::vector<int64_t> shape) {
    const int64_t n_blocks = count(shape) / 32;
    std::vector<uint8_t> data;
    std::vector<float> v;
    for (int64_t b = 0; b < n_blocks; ++b) {
      const uint16_t d = scale(0.02f), m = scale(0.15f);
      uint8_t q[32];
      for (uint8_t& x : q) x = uint8_t(uniform_int(0, 15));
      const auto block = q4_1_block(d, m, q);
      data.insert(data.end(), block.begin(), block.end());
      for (uint8_t x : q) v.push_back(f16_to_f32(d) * float(x) + f16_to_f32(m));
    }
    w->add_tensor_q4_1(name, std::move(shape), std::move(data));
    (*values)[name] = v;
  }
};

}  // namespace

GgufWriter tiny_llama_writer(const TinyLlamaSpec& s, std::map<std::string, std::vector<float>>* values) {
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_string("general.name", "tiny-llama");
  w.add_u32("llama.context_length", uint32_t(s.context_length));
  w.add_u32("llama.embedding_length", uint32_t(s.dim));
  w.add_u32("llama.block_count", uint32_t(s.n_layers));
  w.add_u32("llama.feed_forward_length", uint32_t(s.hidden_dim));
  w.add_u32("llama.attention.head_count", uint32_t(s.n_heads));
  w.add_u32("llama.attention.head_count_kv", uint32_t(s.n_kv_heads));
  w.add_f32("llama.rope.freq_base", s.rope_theta);
  w.add_f32("llama.attention.layer_norm_rms_epsilon", s.norm_eps);
  w.add_u32("llama.rope.dimension_count", uint32_t(s.dim / s.n_heads));
  w.add_u32("llama.vocab_size", uint32_t(s.vocab_size));

  // A toy byte-level vocabulary: three control tokens, then single characters.
  const std::string chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,";
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  for (int i = 0; i < s.vocab_size; ++i) {
    if (i < 3) {
      tokens.push_back(i == 0 ? "<|endoftext|>" : i == 1 ? "<|im_start|>" : "<|im_end|>");
      types.push_back(3);
    } else {
      const size_t c = size_t(i - 3);
      tokens.push_back(c < chars.size() ? std::string(1, chars[c]) : "<tok" + std::to_string(i) + ">");
      types.push_back(1);
    }
  }
  w.add_string("tokenizer.ggml.model", "gpt2");
  w.add_string("tokenizer.ggml.pre", "smollm");
  w.add_string_array("tokenizer.ggml.tokens", tokens);
  w.add_i32_array("tokenizer.ggml.token_type", types);
  w.add_string_array("tokenizer.ggml.merges", {});
  w.add_u32("tokenizer.ggml.bos_token_id", 1);
  w.add_u32("tokenizer.ggml.eos_token_id", 2);

  const int64_t dim = s.dim, hidden = s.hidden_dim, vocab = s.vocab_size;
  const int64_t head_dim = s.dim / s.n_heads, kv_dim = int64_t(s.n_kv_heads) * head_dim;
  TensorMaker m{std::mt19937(s.seed), &w, values};
  m.q8_0("token_embd.weight", {dim, vocab});
  m.f32("output_norm.weight", {dim}, 0.5f, 1.5f);
  if (!s.tied) m.f32("output.weight", {dim, vocab}, -0.2f, 0.2f);
  for (int l = 0; l < s.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    m.f32(p + "attn_norm.weight", {dim}, 0.5f, 1.5f);
    m.q4_1(p + "attn_q.weight", {dim, dim});
    m.f16(p + "attn_k.weight", {dim, kv_dim});
    m.f32(p + "attn_v.weight", {dim, kv_dim}, -0.2f, 0.2f);
    m.f32(p + "attn_output.weight", {dim, dim}, -0.2f, 0.2f);
    m.f32(p + "ffn_norm.weight", {dim}, 0.5f, 1.5f);
    m.f32(p + "ffn_gate.weight", {dim, hidden}, -0.2f, 0.2f);
    m.f32(p + "ffn_up.weight", {dim, hidden}, -0.2f, 0.2f);
    m.f32(p + "ffn_down.weight", {hidden, dim}, -0.2f, 0.2f);
  }
  return w;
}

TinyLlamaGguf make_tiny_llama_gguf(const TinyLlamaSpec& spec) {
  TinyLlamaGguf out;
  const GgufWriter w = tiny_llama_writer(spec, &out.values);
  out.bytes = w.bytes(&out.layout);
  return out;
}

}  // namespace kvlab::testing
