#include "model/ggml_types.h"

#include <bit>
#include <cstring>

#include "base/check.h"
#include "base/half.h"

namespace kvlab {

// Block fields and F32/F16/BF16 data are copied byte for byte from little-endian files.
static_assert(std::endian::native == std::endian::little, "ggml dequantizers assume a little-endian host");

namespace {

// Block layouts of the types kvlab dequantizes, as ggml lays them out (ggml-common.h). They are
// pinned here so that a compiler that pads differently fails the build instead of misreading
// weights. Blocks are copied out of the file with memcpy: GGUF data is only 32-byte aligned per
// tensor, so a block inside a tensor can start at any byte and must not be dereferenced in place.

// Q4_0: x = d * (q - 8), q in [0, 15].
struct BlockQ4_0 {
  uint16_t d;       // f16 scale
  uint8_t qs[16];   // element j < 16: low nibble of qs[j]; element j + 16: high nibble
};
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block is 2 + 32/2 bytes");

// Q4_1: x = d * q + m, q in [0, 15].
struct BlockQ4_1 {
  uint16_t d;       // f16 scale
  uint16_t m;       // f16 minimum
  uint8_t qs[16];   // nibbles, ordered as in Q4_0
};
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block is 2 + 2 + 32/2 bytes");

// Q5_0: x = d * (q - 16), q in [0, 31]; the fifth bit of element j is bit j of qh.
struct BlockQ5_0 {
  uint16_t d;       // f16 scale
  uint8_t qh[4];    // little-endian u32 of high bits
  uint8_t qs[16];   // low four bits, ordered as in Q4_0
};
static_assert(sizeof(BlockQ5_0) == 22, "Q5_0 block is 2 + 4 + 32/2 bytes");

// Q5_1: x = d * q + m, q in [0, 31]; high bits as in Q5_0.
struct BlockQ5_1 {
  uint16_t d;       // f16 scale
  uint16_t m;       // f16 minimum
  uint8_t qh[4];
  uint8_t qs[16];
};
static_assert(sizeof(BlockQ5_1) == 24, "Q5_1 block is 2 + 2 + 4 + 32/2 bytes");

// Q8_0: x = d * q, q in [-128, 127].
struct BlockQ8_0 {
  uint16_t d;       // f16 scale
  int8_t qs[32];
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block is 2 + 32 bytes");

constexpr int64_t kQK = 32;  // elements per block of the *_0 / *_1 types
constexpr int64_t kQK_K = 256;  // elements per super-block of the K-quants, IQ and TQ types

// Indexed by type id; ids 4, 5 (the removed Q4_2 / Q4_3) and 31..33 (removed Q4_0_4_4 and
// friends) are holes. Sizes: the static_asserts on the block structs in ggml's ggml-common.h
// (QK_K = 256). The Python `gguf` package (GGML_QUANT_SIZES, version 0.19.0) lists Q8_1 as 40 bytes,
// the layout from before ggml stored its d and s as f16; the C header, which is what sizes the data
// llama.cpp writes, says 2*sizeof(ggml_half) + 32 = 36. Q8_1 / Q8_K are scratch types for dot
// products and do not appear in model files.
struct Entry {
  uint32_t id;
  GgmlTypeInfo info;
};
constexpr Entry kTypes[] = {
    {0, {"F32", 1, 4, true}},
    {1, {"F16", 1, 2, true}},
    {2, {"Q4_0", kQK, 18, true}},
    {3, {"Q4_1", kQK, 20, true}},
    {6, {"Q5_0", kQK, 22, true}},
    {7, {"Q5_1", kQK, 24, true}},
    {8, {"Q8_0", kQK, 34, true}},
    {9, {"Q8_1", kQK, 36, false}},
    {10, {"Q2_K", kQK_K, 84, false}},    // scales 16 + qs 64 + d, dmin 4
    {11, {"Q3_K", kQK_K, 110, false}},   // hmask 32 + qs 64 + scales 12 + d 2
    {12, {"Q4_K", kQK_K, 144, false}},   // d, dmin 4 + scales 12 + qs 128
    {13, {"Q5_K", kQK_K, 176, false}},   // d, dmin 4 + scales 12 + qh 32 + qs 128
    {14, {"Q6_K", kQK_K, 210, false}},   // ql 128 + qh 64 + scales 16 + d 2
    {15, {"Q8_K", kQK_K, 292, false}},   // f32 d 4 + qs 256 + bsums 32
    {16, {"IQ2_XXS", kQK_K, 66, false}},  // d 2 + qs 64
    {17, {"IQ2_XS", kQK_K, 74, false}},   // d 2 + qs 64 + scales 8
    {18, {"IQ3_XXS", kQK_K, 98, false}},  // d 2 + qs 96
    {19, {"IQ1_S", kQK_K, 50, false}},    // d 2 + qs 32 + qh 16
    {20, {"IQ4_NL", kQK, 18, false}},     // d 2 + qs 16
    {21, {"IQ3_S", kQK_K, 110, false}},   // d 2 + qs 64 + qh 8 + signs 32 + scales 4
    {22, {"IQ2_S", kQK_K, 82, false}},    // d 2 + qs 64 + qh 8 + scales 8
    {23, {"IQ4_XS", kQK_K, 136, false}},  // d 2 + scales_h 2 + scales_l 4 + qs 128
    {24, {"I8", 1, 1, false}},
    {25, {"I16", 1, 2, false}},
    {26, {"I32", 1, 4, false}},
    {27, {"I64", 1, 8, false}},
    {28, {"F64", 1, 8, false}},
    {29, {"IQ1_M", kQK_K, 56, false}},   // qs 32 + qh 16 + scales 8 (no separate d)
    {30, {"BF16", 1, 2, true}},
    {34, {"TQ1_0", kQK_K, 54, false}},   // qs 48 + qh 4 + d 2
    {35, {"TQ2_0", kQK_K, 66, false}},   // qs 64 + d 2
};

template <typename Block>
Block load_block(const uint8_t* src, int64_t i) {
  Block b;
  std::memcpy(&b, src + i * int64_t(sizeof(Block)), sizeof(Block));
  return b;
}

void dequantize_q4_0(const uint8_t* src, float* dst, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i) {
    const auto b = load_block<BlockQ4_0>(src, i);
    const float d = f16_to_f32(b.d);
    float* y = dst + i * kQK;
    for (int j = 0; j < 16; ++j) {
      y[j] = d * float(int(b.qs[j] & 0x0f) - 8);
      y[j + 16] = d * float(int(b.qs[j] >> 4) - 8);
    }
  }
}

void dequantize_q4_1(const uint8_t* src, float* dst, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i) {
    const auto b = load_block<BlockQ4_1>(src, i);
    const float d = f16_to_f32(b.d), m = f16_to_f32(b.m);
    float* y = dst + i * kQK;
    for (int j = 0; j < 16; ++j) {
      y[j] = d * float(b.qs[j] & 0x0f) + m;
      y[j + 16] = d * float(b.qs[j] >> 4) + m;
    }
  }
}

uint32_t high_bits(const uint8_t qh[4]) {
  return uint32_t(qh[0]) | uint32_t(qh[1]) << 8 | uint32_t(qh[2]) << 16 | uint32_t(qh[3]) << 24;
}

void dequantize_q5_0(const uint8_t* src, float* dst, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i) {
    const auto b = load_block<BlockQ5_0>(src, i);
    const float d = f16_to_f32(b.d);
    const uint32_t qh = high_bits(b.qh);
    float* y = dst + i * kQK;
    for (int j = 0; j < 16; ++j) {
      const int lo = int(b.qs[j] & 0x0f) | int((qh >> j) & 1u) << 4;
      const int hi = int(b.qs[j] >> 4) | int((qh >> (j + 16)) & 1u) << 4;
      y[j] = d * float(lo - 16);
      y[j + 16] = d * float(hi - 16);
    }
  }
}

void dequantize_q5_1(const uint8_t* src, float* dst, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i) {
    const auto b = load_block<BlockQ5_1>(src, i);
    const float d = f16_to_f32(b.d), m = f16_to_f32(b.m);
    const uint32_t qh = high_bits(b.qh);
    float* y = dst + i * kQK;
    for (int j = 0; j < 16; ++j) {
      const int lo = int(b.qs[j] & 0x0f) | int((qh >> j) & 1u) << 4;
      const int hi = int(b.qs[j] >> 4) | int((qh >> (j + 16)) & 1u) << 4;
      y[j] = d * float(lo) + m;
      y[j + 16] = d * float(hi) + m;
    }
  }
}

void dequantize_q8_0(const uint8_t* src, float* dst, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i) {
    const auto b = load_block<BlockQ8_0>(src, i);
    const float d = f16_to_f32(b.d);
    float* y = dst + i * kQK;
    for (int j = 0; j < 32; ++j) y[j] = d * float(b.qs[j]);
  }
}

}  // namespace

const GgmlTypeInfo* ggml_type_info(uint32_t type_id) {
  for (const Entry& e : kTypes) {
    if (e.id == type_id) return &e.info;
  }
  return nullptr;
}

std::string ggml_supported_type_names() {
  std::string names;
  for (const Entry& e : kTypes) {
    if (!e.info.dequantizable) continue;
    if (!names.empty()) names += ", ";
    names += e.info.name;
  }
  return names;
}

void dequantize_row(GgmlType type, const uint8_t* src, float* dst, int64_t n) {
  const GgmlTypeInfo* info = ggml_type_info(uint32_t(type));
  KVLAB_CHECK(info != nullptr && info->dequantizable);
  KVLAB_CHECK(n >= 0 && n % info->block_size == 0);
  const int64_t n_blocks = n / info->block_size;
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, src, size_t(n) * sizeof(float));
      return;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = f16_to_f32(h);
      }
      return;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      return;
    case GgmlType::kQ4_0: return dequantize_q4_0(src, dst, n_blocks);
    case GgmlType::kQ4_1: return dequantize_q4_1(src, dst, n_blocks);
    case GgmlType::kQ5_0: return dequantize_q5_0(src, dst, n_blocks);
    case GgmlType::kQ5_1: return dequantize_q5_1(src, dst, n_blocks);
    case GgmlType::kQ8_0: return dequantize_q8_0(src, dst, n_blocks);
    default:
      break;
  }
  KVLAB_CHECK(false && "table marks a type dequantizable that has no dequantizer");
}

std::optional<BlockFormat> block_format_of(GgmlType type) {
  if (type == GgmlType::kQ4_1) return BlockFormat::kQ4_1;
  if (type == GgmlType::kQ8_0) return BlockFormat::kQ8_0;
  return std::nullopt;
}

void split_blocks(GgmlType type, const uint8_t* src, int64_t n_blocks, uint8_t* codes, float* scales) {
  KVLAB_CHECK(block_format_of(type).has_value());
  for (int64_t i = 0; i < n_blocks; ++i) {
    if (type == GgmlType::kQ4_1) {
      const auto b = load_block<BlockQ4_1>(src, i);
      std::memcpy(codes + 16 * i, b.qs, 16);
      scales[2 * i] = f16_to_f32(b.d);
      scales[2 * i + 1] = f16_to_f32(b.m);
    } else {
      const auto b = load_block<BlockQ8_0>(src, i);
      std::memcpy(codes + 32 * i, b.qs, 32);
      scales[i] = f16_to_f32(b.d);
    }
  }
}

}  // namespace kvlab
