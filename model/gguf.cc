#include "model/gguf.h"

#include <algorithm>
#include <bit>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <limits>
#include <unordered_set>

#include "base/check.h"
#include "base/file.h"

namespace kvlab {

// GGUF is little-endian and the reader copies scalars and f32 tensor data byte for byte.
static_assert(std::endian::native == std::endian::little, "the GGUF reader assumes a little-endian host");

namespace {

constexpr uint32_t kMagic = 0x46554747u;  // "GGUF" read as a little-endian u32
constexpr uint64_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;          // GGML_MAX_DIMS
// Model files use flat arrays; the cap keeps a crafted file from recursing deep enough to
// exhaust the stack (each level costs only 12 bytes of file).
constexpr int kMaxArrayDepth = 8;

// Smallest encodings, used to bound counts before anything is reserved: a key/value pair is a
// u64 key length + u32 type + at least one value byte; a tensor info is a u64 name length + u32
// n_dims + u32 type + u64 offset; an array element that is itself an array is u32 type + u64 count.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;
constexpr uint64_t kMinArrayBytes = 4 + 8;

bool is_known_value_type(uint32_t id) { return id <= uint32_t(GgufValueType::kF64); }

// Bytes of one scalar; 0 for strings and arrays (variable length).
uint64_t scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8: case GgufValueType::kI8: case GgufValueType::kBool: return 1;
    case GgufValueType::kU16: case GgufValueType::kI16: return 2;
    case GgufValueType::kU32: case GgufValueType::kI32: case GgufValueType::kF32: return 4;
    case GgufValueType::kU64: case GgufValueType::kI64: case GgufValueType::kF64: return 8;
    case GgufValueType::kString: case GgufValueType::kArray: return 0;
  }
  return 0;
}

bool is_integer(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8: case GgufValueType::kI8: case GgufValueType::kU16:
    case GgufValueType::kI16: case GgufValueType::kU32: case GgufValueType::kI32:
    case GgufValueType::kU64: case GgufValueType::kI64:
      return true;
    default:
      return false;
  }
}

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// REQUIRES: is_integer(t). Sets *overflow for a u64 above INT64_MAX.
int64_t load_integer(GgufValueType t, const uint8_t* p, bool* overflow) {
  *overflow = false;
  switch (t) {
    case GgufValueType::kU8: return load<uint8_t>(p);
    case GgufValueType::kI8: return load<int8_t>(p);
    case GgufValueType::kU16: return load<uint16_t>(p);
    case GgufValueType::kI16: return load<int16_t>(p);
    case GgufValueType::kU32: return load<uint32_t>(p);
    case GgufValueType::kI32: return load<int32_t>(p);
    case GgufValueType::kI64: return load<int64_t>(p);
    case GgufValueType::kU64: {
      const uint64_t u = load<uint64_t>(p);
      *overflow = u > uint64_t(std::numeric_limits<int64_t>::max());
      return int64_t(u);
    }
    default: KVLAB_CHECK(false); return 0;
  }
}

std::string quoted(std::string_view s) {
  // Built by appending: GCC 12 warns (-Wrestrict, a false positive) on "'" + std::string(s).
  std::string q;
  q.reserve(s.size() + 2);
  q += '\'';
  q += s;
  q += '\'';
  return q;
}

std::string format_double(double v) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

}  // namespace

const char* gguf_value_type_name(GgufValueType type) {
  switch (type) {
    case GgufValueType::kU8: return "u8";
    case GgufValueType::kI8: return "i8";
    case GgufValueType::kU16: return "u16";
    case GgufValueType::kI16: return "i16";
    case GgufValueType::kU32: return "u32";
    case GgufValueType::kI32: return "i32";
    case GgufValueType::kF32: return "f32";
    case GgufValueType::kBool: return "bool";
    case GgufValueType::kString: return "string";
    case GgufValueType::kArray: return "array";
    case GgufValueType::kU64: return "u64";
    case GgufValueType::kI64: return "i64";
    case GgufValueType::kF64: return "f64";
  }
  return "unknown";
}

// Walks the file once, front to back. Every read is preceded by a check that the bytes are
// there; all arithmetic on sizes read from the file is done so that it cannot wrap (compare a
// count with `remaining / size`, never `count * size` with `remaining`).
class GgufParser {
 public:
  explicit GgufParser(GgufFile& f) : f_(f), p_(f.bytes_.data()), size_(f.bytes_.size()) {}

  Status parse() {
    uint32_t magic = 0;
    KVLAB_RETURN_IF_ERROR(read_u32(&magic, "magic"));
    if (magic != kMagic) return not_gguf(magic);
    KVLAB_RETURN_IF_ERROR(read_u32(&f_.version_, "version"));
    KVLAB_RETURN_IF_ERROR(check_version(f_.version_));

    uint64_t n_tensors = 0, n_kv = 0;
    KVLAB_RETURN_IF_ERROR(read_u64(&n_tensors, "tensor count"));
    KVLAB_RETURN_IF_ERROR(read_u64(&n_kv, "metadata key/value count"));
    if (n_kv > remaining() / kMinKvBytes) {
      return truncated_count("metadata", n_kv, "key/value pairs", kMinKvBytes);
    }
    if (n_tensors > remaining() / kMinTensorInfoBytes) {
      return truncated_count("tensor table", n_tensors, "tensor infos", kMinTensorInfoBytes);
    }

    // entries_ is reserved up front so that the string_views in `seen` stay valid.
    f_.entries_.reserve(n_kv);
    std::unordered_set<std::string_view> seen;
    for (uint64_t i = 0; i < n_kv; ++i) {
      const uint64_t at = pos_;
      GgufFile::Entry e;
      KVLAB_RETURN_IF_ERROR(read_string(&e.key, "metadata key " + std::to_string(i)));
      uint32_t type = 0;
      KVLAB_RETURN_IF_ERROR(read_u32(&type, "value type of metadata key " + quoted(e.key)));
      if (!is_known_value_type(type)) {
        return corrupt("metadata key " + quoted(e.key) + " has unknown value type id " + std::to_string(type),
                       pos_ - 4);
      }
      KVLAB_RETURN_IF_ERROR(parse_value(GgufValueType(type), 0, e.key, &e.value));
      f_.entries_.push_back(std::move(e));
      if (!seen.insert(f_.entries_.back().key).second) {
        return corrupt("duplicate metadata key " + quoted(f_.entries_.back().key), at);
      }
    }

    uint64_t alignment = kDefaultAlignment;
    if (f_.has("general.alignment")) {
      auto a = f_.get_int("general.alignment");
      if (!a.ok()) return data_loss(f_.path_ + ": " + a.status().message());
      if (*a <= 0 || *a > int64_t(std::numeric_limits<uint32_t>::max()) || !std::has_single_bit(uint64_t(*a))) {
        return data_loss(f_.path_ + ": general.alignment = " + std::to_string(*a) + " is not a power of two");
      }
      alignment = uint64_t(*a);
    }

    f_.tensors_.reserve(n_tensors);
    std::unordered_set<std::string> names;
    for (uint64_t i = 0; i < n_tensors; ++i) {
      KVLAB_RETURN_IF_ERROR(parse_tensor_info(i, alignment, &names));
    }

    // The data section starts at the next multiple of the alignment. A file without tensors may
    // end before it (there is nothing to pad for).
    const uint64_t pad = (alignment - pos_ % alignment) % alignment;
    f_.data_offset_ = pos_ + pad;
    if (f_.tensors_.empty()) return Status::Ok();
    if (f_.data_offset_ > size_) {
      return truncated("padding before the tensor data section", pad);
    }
    const uint64_t data_size = size_ - f_.data_offset_;
    for (const auto& t : f_.tensors_) {
      if (t.offset > data_size || t.n_bytes > data_size - t.offset) {
        return data_loss(f_.path_ + ": truncated: tensor " + quoted(t.name) + " data (" + std::to_string(t.n_bytes) +
                         " bytes at offset " + std::to_string(t.offset) + " of the data section, which starts at byte " +
                         std::to_string(f_.data_offset_) + ") ends past the end of the file (" +
                         std::to_string(size_) + " bytes)");
      }
    }
    return Status::Ok();
  }

 private:
  uint64_t remaining() const { return size_ - pos_; }

  Status truncated(const std::string& what, uint64_t need) const {
    return data_loss(f_.path_ + ": truncated: " + what + " at byte " + std::to_string(pos_) + " needs " +
                     std::to_string(need) + " bytes, only " + std::to_string(remaining()) + " left");
  }
  // `count` items of at least `each` bytes cannot fit in what is left (the product may not fit
  // in 64 bits, so it is not computed).
  Status truncated_count(const std::string& what, uint64_t count, const char* items, uint64_t each) const {
    return data_loss(f_.path_ + ": truncated: " + what + " at byte " + std::to_string(pos_) + " declares " +
                     std::to_string(count) + " " + items + " of at least " + std::to_string(each) +
                     " bytes each, only " + std::to_string(remaining()) + " bytes left");
  }
  Status corrupt(const std::string& what, uint64_t at) const {
    return data_loss(f_.path_ + ": corrupt: " + what + " (at byte " + std::to_string(at) + ")");
  }

  Status not_gguf(uint32_t magic) const {
    std::string shown;
    for (int i = 0; i < 4; ++i) {
      const char c = char((magic >> (8 * i)) & 0xff);
      shown += (c >= 0x20 && c < 0x7f) ? std::string(1, c) : std::string(".");
    }
    char hex[16];
    std::snprintf(hex, sizeof(hex), "0x%08" PRIx32, magic);
    return data_loss(f_.path_ + ": not a GGUF file (magic '" + shown + "' = " + hex + ", expected 'GGUF')");
  }

  Status check_version(uint32_t v) const {
    if (v == 2 || v == 3) return Status::Ok();
    if (v == 1) {
      return unsupported(f_.path_ + ": GGUF version 1 is not supported (it used 32-bit counts and " +
                         "lengths); convert the model again with a current llama.cpp");
    }
    const uint32_t swapped = __builtin_bswap32(v);
    if (swapped == 2 || swapped == 3) {
      return unsupported(f_.path_ + ": big-endian GGUF (version " + std::to_string(swapped) + ") is not supported");
    }
    return unsupported(f_.path_ + ": GGUF version " + std::to_string(v) + " is not supported (2 and 3 are)");
  }

  Status need(uint64_t n, const std::string& what) const {
    return n <= remaining() ? Status::Ok() : truncated(what, n);
  }
  Status read_u32(uint32_t* v, const std::string& what) {
    KVLAB_RETURN_IF_ERROR(need(4, what));
    *v = load<uint32_t>(p_ + pos_);
    pos_ += 4;
    return Status::Ok();
  }
  Status read_u64(uint64_t* v, const std::string& what) {
    KVLAB_RETURN_IF_ERROR(need(8, what));
    *v = load<uint64_t>(p_ + pos_);
    pos_ += 8;
    return Status::Ok();
  }
  // A string in place: *offset / *len describe its bytes inside the file.
  Status skip_string(uint64_t* offset, uint64_t* len, const std::string& what) {
    KVLAB_RETURN_IF_ERROR(read_u64(len, what + " length"));
    KVLAB_RETURN_IF_ERROR(need(*len, what));
    *offset = pos_;
    pos_ += *len;
    return Status::Ok();
  }
  Status read_string(std::string* s, const std::string& what) {
    uint64_t offset = 0, len = 0;
    KVLAB_RETURN_IF_ERROR(skip_string(&offset, &len, what));
    s->assign(reinterpret_cast<const char*>(p_ + offset), len);
    return Status::Ok();
  }

  // Validates one value of `type` at pos_ and records where it is in *out (may be null for the
  // elements of nested arrays, which are re-walked on access).
  Status parse_value(GgufValueType type, int depth, const std::string& key, GgufFile::Value* out) {
    GgufFile::Value v;
    v.type = type;
    if (type == GgufValueType::kString) {
      KVLAB_RETURN_IF_ERROR(skip_string(&v.offset, &v.count, "string value of " + quoted(key)));
    } else if (type != GgufValueType::kArray) {
      const uint64_t n = scalar_size(type);
      KVLAB_RETURN_IF_ERROR(need(n, std::string(gguf_value_type_name(type)) + " value of " + quoted(key)));
      if (type == GgufValueType::kBool && p_[pos_] > 1) {
        return corrupt("bool value of " + quoted(key) + " is " + std::to_string(p_[pos_]), pos_);
      }
      v.offset = pos_;
      pos_ += n;
    } else {
      if (depth >= kMaxArrayDepth) {
        return corrupt("arrays in " + quoted(key) + " nested deeper than " + std::to_string(kMaxArrayDepth), pos_);
      }
      uint32_t elem = 0;
      KVLAB_RETURN_IF_ERROR(read_u32(&elem, "array element type of " + quoted(key)));
      if (!is_known_value_type(elem)) {
        return corrupt("array " + quoted(key) + " has unknown element type id " + std::to_string(elem), pos_ - 4);
      }
      v.elem_type = GgufValueType(elem);
      KVLAB_RETURN_IF_ERROR(read_u64(&v.count, "array length of " + quoted(key)));
      v.offset = pos_;
      KVLAB_RETURN_IF_ERROR(parse_array_elements(v, depth, key));
    }
    if (out) *out = v;
    return Status::Ok();
  }

  Status parse_array_elements(const GgufFile::Value& v, int depth, const std::string& key) {
    const std::string what = "array " + quoted(key) + " of " + std::to_string(v.count) + " " +
                             gguf_value_type_name(v.elem_type);
    if (v.elem_type == GgufValueType::kString) {
      if (v.count > remaining() / 8) return truncated_count(what, v.count, "strings", 8);
      for (uint64_t i = 0; i < v.count; ++i) {
        // Inline checks: a 49k-token vocabulary must not build an error text per element.
        if (remaining() < 8) return truncated(what + ": length of element " + std::to_string(i), 8);
        const uint64_t len = load<uint64_t>(p_ + pos_);
        pos_ += 8;
        if (len > remaining()) return truncated(what + ": element " + std::to_string(i), len);
        pos_ += len;
      }
      return Status::Ok();
    }
    if (v.elem_type == GgufValueType::kArray) {
      if (v.count > remaining() / kMinArrayBytes) return truncated_count(what, v.count, "arrays", kMinArrayBytes);
      for (uint64_t i = 0; i < v.count; ++i) {
        KVLAB_RETURN_IF_ERROR(parse_value(GgufValueType::kArray, depth + 1, key + "[" + std::to_string(i) + "]", nullptr));
      }
      return Status::Ok();
    }
    const uint64_t s = scalar_size(v.elem_type);
    if (v.count > remaining() / s) return truncated_count(what, v.count, "elements", s);
    if (v.elem_type == GgufValueType::kBool) {
      for (uint64_t i = 0; i < v.count; ++i) {
        if (p_[pos_ + i] > 1) {
          return corrupt(what + ": element " + std::to_string(i) + " is " + std::to_string(p_[pos_ + i]), pos_ + i);
        }
      }
    }
    pos_ += v.count * s;
    return Status::Ok();
  }

  Status parse_tensor_info(uint64_t index, uint64_t alignment, std::unordered_set<std::string>* names) {
    GgufFile::Tensor t;
    const uint64_t at = pos_;
    KVLAB_RETURN_IF_ERROR(read_string(&t.name, "name of tensor " + std::to_string(index)));
    const std::string what = "tensor " + quoted(t.name);
    uint32_t n_dims = 0;
    KVLAB_RETURN_IF_ERROR(read_u32(&n_dims, what + " n_dims"));
    if (n_dims > kMaxDims) {
      return corrupt(what + " has " + std::to_string(n_dims) + " dimensions (at most 4)", pos_ - 4);
    }
    int64_t n_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t ne = 0;
      KVLAB_RETURN_IF_ERROR(read_u64(&ne, what + " dimension " + std::to_string(d)));
      if (ne == 0 || ne > uint64_t(std::numeric_limits<int64_t>::max())) {
        return corrupt(what + " dimension " + std::to_string(d) + " is " + std::to_string(ne), pos_ - 8);
      }
      if (int64_t(ne) > std::numeric_limits<int64_t>::max() / n_elements) {
        return corrupt(what + " has more than 2^63 elements", pos_ - 8);
      }
      n_elements *= int64_t(ne);
      t.shape.push_back(int64_t(ne));
    }
    t.n_elements = n_elements;
    uint32_t type = 0;
    KVLAB_RETURN_IF_ERROR(read_u32(&type, what + " type"));
    const GgmlTypeInfo* info = ggml_type_info(type);
    if (info == nullptr) {
      return unsupported(f_.path_ + ": " + what + " has unknown ggml type id " + std::to_string(type) +
                         " (at byte " + std::to_string(pos_ - 4) + ")");
    }
    if (info->block_bytes == 0) {
      return unsupported(f_.path_ + ": " + what + " has ggml type " + info->name +
                         ", whose block size kvlab does not know");
    }
    t.type = GgmlType(type);
    // ggml quantizes along rows: every row (shape[0] elements) is a whole number of blocks.
    const int64_t row = t.shape.empty() ? 1 : t.shape[0];
    if (row % info->block_size != 0) {
      return corrupt(what + " of type " + info->name + " has rows of " + std::to_string(row) +
                         " elements, not a multiple of the block size " + std::to_string(info->block_size),
                     at);
    }
    const uint64_t n_blocks = uint64_t(n_elements / info->block_size);
    if (n_blocks > std::numeric_limits<uint64_t>::max() / uint64_t(info->block_bytes)) {
      return corrupt(what + " is larger than 2^64 bytes", at);
    }
    t.n_bytes = n_blocks * uint64_t(info->block_bytes);
    KVLAB_RETURN_IF_ERROR(read_u64(&t.offset, what + " data offset"));
    if (t.offset % alignment != 0) {
      return corrupt(what + " data offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
                         std::to_string(alignment),
                     pos_ - 8);
    }
    if (!names->insert(t.name).second) return corrupt("duplicate tensor name " + quoted(t.name), at);
    f_.tensors_.push_back(std::move(t));
    return Status::Ok();
  }

  GgufFile& f_;
  const uint8_t* p_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

StatusOr<GgufFile> GgufFile::open(const std::string& path) {
  KVLAB_ASSIGN_OR_RETURN(auto bytes, read_file_bytes(path));
  return from_bytes(std::move(bytes), path);
}

StatusOr<GgufFile> GgufFile::from_bytes(std::vector<uint8_t> bytes, std::string name) {
  GgufFile f;
  f.path_ = std::move(name);
  f.bytes_ = std::move(bytes);
  KVLAB_RETURN_IF_ERROR(GgufParser(f).parse());
  return f;
}

const GgufFile::Entry* GgufFile::find_entry(std::string_view key) const {
  for (const auto& e : entries_) {
    if (e.key == key) return &e;
  }
  return nullptr;
}

bool GgufFile::has(std::string_view key) const { return find_entry(key) != nullptr; }

std::vector<std::string> GgufFile::keys() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& e : entries_) out.push_back(e.key);
  return out;
}

namespace {

Status missing_key(std::string_view key) {
  return not_found("GGUF metadata key '" + std::string(key) + "' not found");
}

std::string type_text(const GgufFile::Value& v) {
  if (v.type != GgufValueType::kArray) return gguf_value_type_name(v.type);
  return std::string("array of ") + gguf_value_type_name(v.elem_type);
}

Status wrong_type(std::string_view key, const GgufFile::Value& v, const char* wanted) {
  return invalid_argument("GGUF metadata key '" + std::string(key) + "' is " + type_text(v) + ", not " + wanted);
}

}  // namespace

StatusOr<int64_t> GgufFile::get_int(std::string_view key) const {
  const Entry* e = find_entry(key);
  if (!e) return missing_key(key);
  if (!is_integer(e->value.type)) return wrong_type(key, e->value, "an integer");
  bool overflow = false;
  const int64_t v = load_integer(e->value.type, bytes_.data() + e->value.offset, &overflow);
  if (overflow) return out_of_range("GGUF metadata key '" + std::string(key) + "' does not fit in int64");
  return v;
}

StatusOr<double> GgufFile::get_float(std::string_view key) const {
  const Entry* e = find_entry(key);
  if (!e) return missing_key(key);
  const uint8_t* p = bytes_.data() + e->value.offset;
  if (e->value.type == GgufValueType::kF32) return double(load<float>(p));
  if (e->value.type == GgufValueType::kF64) return load<double>(p);
  if (is_integer(e->value.type)) {
    if (e->value.type == GgufValueType::kU64) return double(load<uint64_t>(p));
    bool overflow = false;
    return double(load_integer(e->value.type, p, &overflow));
  }
  return wrong_type(key, e->value, "a number");
}

StatusOr<bool> GgufFile::get_bool(std::string_view key) const {
  const Entry* e = find_entry(key);
  if (!e) return missing_key(key);
  if (e->value.type != GgufValueType::kBool) return wrong_type(key, e->value, "bool");
  return bytes_[e->value.offset] != 0;
}

StatusOr<std::string> GgufFile::get_string(std::string_view key) const {
  const Entry* e = find_entry(key);
  if (!e) return missing_key(key);
  if (e->value.type != GgufValueType::kString) return wrong_type(key, e->value, "string");
  return std::string(reinterpret_cast<const char*>(bytes_.data() + e->value.offset), e->value.count);
}

StatusOr<std::vector<std::string>> GgufFile::get_string_array(std::string_view key) const {
  const Entry* e = find_entry(key);
  if (!e) return missing_key(key);
  if (e->value.type != GgufValueType::kArray || e->value.elem_type != GgufValueType::kString) {
    return wrong_type(key, e->value, "array of string");
  }
  std::vector<std::string> out;
  out.reserve(e->value.count);
  uint64_t pos = e->value.offset;  // validated by the parser: every length fits
  for (uint64_t i = 0; i < e->value.count; ++i) {
    const uint64_t len = load<uint64_t>(bytes_.data() + pos);
    out.emplace_back(reinterpret_cast<const char*>(bytes_.data() + pos + 8), len);
    pos += 8 + len;
  }
  return out;
}

StatusOr<std::vector<int64_t>> GgufFile::get_int_array(std::string_view key) const {
  const Entry* e = find_entry(key);
  if (!e) return missing_key(key);
  if (e->value.type != GgufValueType::kArray || !is_integer(e->value.elem_type)) {
    return wrong_type(key, e->value, "array of integers");
  }
  const uint64_t s = scalar_size(e->value.elem_type);
  std::vector<int64_t> out(e->value.count);
  for (uint64_t i = 0; i < e->value.count; ++i) {
    bool overflow = false;
    out[i] = load_integer(e->value.elem_type, bytes_.data() + e->value.offset + i * s, &overflow);
    if (overflow) {
      return out_of_range("GGUF metadata key '" + std::string(key) + "' element " + std::to_string(i) +
                          " does not fit in int64");
    }
  }
  return out;
}

StatusOr<std::vector<float>> GgufFile::get_float_array(std::string_view key) const {
  const Entry* e = find_entry(key);
  if (!e) return missing_key(key);
  const GgufValueType t = e->value.elem_type;
  const bool ok = e->value.type == GgufValueType::kArray &&
                  (t == GgufValueType::kF32 || t == GgufValueType::kF64 || is_integer(t));
  if (!ok) return wrong_type(key, e->value, "array of numbers");
  const uint64_t s = scalar_size(t);
  std::vector<float> out(e->value.count);
  for (uint64_t i = 0; i < e->value.count; ++i) {
    const uint8_t* p = bytes_.data() + e->value.offset + i * s;
    if (t == GgufValueType::kF32) {
      out[i] = load<float>(p);
    } else if (t == GgufValueType::kF64) {
      out[i] = float(load<double>(p));
    } else if (t == GgufValueType::kU64) {
      out[i] = float(load<uint64_t>(p));
    } else {
      bool overflow = false;
      out[i] = float(load_integer(t, p, &overflow));
    }
  }
  return out;
}

namespace {

// Appends the text of a value that starts at `pos` and returns the offset just past it. Trusts
// the parser's validation (every length and count was checked against the file).
uint64_t format_at(const uint8_t* p, GgufValueType type, uint64_t pos, size_t max_elements, std::string* out) {
  switch (type) {
    case GgufValueType::kString: {
      const uint64_t len = load<uint64_t>(p + pos);
      *out += '"';
      out->append(reinterpret_cast<const char*>(p + pos + 8), len);
      *out += '"';
      return pos + 8 + len;
    }
    case GgufValueType::kArray: {
      const auto elem = GgufValueType(load<uint32_t>(p + pos));
      const uint64_t count = load<uint64_t>(p + pos + 4);
      pos += 12;
      *out += '[';
      for (uint64_t i = 0; i < count; ++i) {
        if (i > 0) *out += ", ";
        if (i == max_elements) {
          *out += "... (" + std::to_string(count) + " elements)";
          break;  // elements after the cut are not printed, so their end is never needed
        }
        pos = format_at(p, elem, pos, max_elements, out);
      }
      *out += ']';
      return pos;
    }
    case GgufValueType::kF32: *out += format_double(load<float>(p + pos)); return pos + 4;
    case GgufValueType::kF64: *out += format_double(load<double>(p + pos)); return pos + 8;
    case GgufValueType::kBool: *out += p[pos] ? "true" : "false"; return pos + 1;
    case GgufValueType::kU64: *out += std::to_string(load<uint64_t>(p + pos)); return pos + 8;
    default: {
      bool overflow = false;
      *out += std::to_string(load_integer(type, p + pos, &overflow));
      return pos + scalar_size(type);
    }
  }
}

}  // namespace

StatusOr<std::string> GgufFile::format_value(std::string_view key, size_t max_elements) const {
  const Entry* e = find_entry(key);
  if (!e) return missing_key(key);
  // Value offsets point past the string length / array header; step back to where they start.
  uint64_t start = e->value.offset;
  if (e->value.type == GgufValueType::kString) start -= 8;
  if (e->value.type == GgufValueType::kArray) start -= 12;
  std::string out;
  format_at(bytes_.data(), e->value.type, start, max_elements, &out);
  return out;
}

const GgufFile::Tensor* GgufFile::find_tensor(std::string_view name) const {
  for (const auto& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

const uint8_t* GgufFile::tensor_data(const Tensor& t) const {
  // A Tensor from another file would point anywhere; the extent check catches that bug.
  KVLAB_CHECK(data_offset_ <= bytes_.size() && t.offset <= bytes_.size() - data_offset_ &&
              t.n_bytes <= bytes_.size() - data_offset_ - t.offset);
  return bytes_.data() + data_offset_ + t.offset;
}

StatusOr<std::vector<float>> GgufFile::dequantize(const Tensor& t) const {
  const GgmlTypeInfo* info = ggml_type_info(uint32_t(t.type));
  KVLAB_CHECK(info != nullptr);  // the parser refuses unknown types
  if (!info->dequantizable) {
    return unsupported("tensor '" + t.name + "' has type " + info->name +
                       ", which kvlab cannot dequantize (supported: " + ggml_supported_type_names() + ")");
  }
  const uint8_t* src = tensor_data(t);
  std::vector<float> out(size_t(t.n_elements));
  // Chunks of whole blocks, dequantized in parallel: the 49152 x 576 embedding of SmolLM2 alone
  // is 28M values.
  const int64_t n_blocks = t.n_elements / info->block_size;
  constexpr int64_t kChunkBlocks = 8192;
  const int64_t n_chunks = (n_blocks + kChunkBlocks - 1) / kChunkBlocks;
#pragma omp parallel for schedule(static) if (n_chunks > 1)
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t b0 = c * kChunkBlocks;
    const int64_t nb = std::min(kChunkBlocks, n_blocks - b0);
    dequantize_row(t.type, src + b0 * info->block_bytes, out.data() + b0 * info->block_size, nb * info->block_size);
  }
  return out;
}

}  // namespace kvlab
