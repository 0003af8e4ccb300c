// Packed layouts of one block of keys or values of ONE kv head, as the fused attention kernels
// (kernels/cpu/kv_attention.h) read them and the quantizers (kernels/cpu/kv_quantize.h) write
// them. A block holds n tokens of head size d. Policies own the memory; a KvBlock only points
// into it. Every layout is defined here, once.
//
//   kF32, kF16, kBF16   token-major elements: element (j, c) at data + j * stride + c * esize.
//   kFp8                token-major e4m3 bytes (1 sign, 4 exponent bits with bias 7, 3 mantissa
//                       bits; no infinities, 0x7f / 0xff are NaN, largest finite 448), one f16
//                       scale per token: value(j, c) = e4m3(data[j * stride + c]) * f16(scale[j]).
//                       The quantizer picks scale = f16(max|x| / 448) (round to nearest even;
//                       for tiny tokens stepped up so that no code saturates by more than an
//                       e4m3 step, and never 0 for a nonzero token: kv_quantize.cc).
//   kIntToken           asymmetric uniform integers, groups of `group` consecutive channels of one
//                       token (per-token quantization; KIVI's values). Token j's codes are the
//                       bit stream at data + j * stride; scale and zero of group g of token j are
//                       f16 at scale[j * (d / group) + g], zero[...]:
//                         value(j, c) = code(j, c) * scale + zero.
//   kIntChannel         asymmetric uniform integers per channel over groups of `group` tokens
//                       (per-channel quantization; KIVI's keys). Channel c's codes are the bit
//                       stream at data + c * stride, code j for token j; token group t = j / group
//                       has its own f16 scale and zero per channel, at scale[t * d + c]:
//                         value(j, c) = code(j, c) * scale[t * d + c] + zero[t * d + c].
//                       group 0 (or >= n) makes the whole block one group; otherwise group * bits
//                       is a multiple of 8, so that each token group starts on a byte and is a
//                       block of its own (channel_sub_block): pages of several KIVI groups.
//
// Bit streams: code i occupies bits [i * bits, (i + 1) * bits) of the little-endian byte string,
// lowest bits first (for 4 bits: low nibble = even code). bits is 2, 3, 4 or 8. Zero is the
// group minimum rounded down to f16, scale the smallest f16 with zero + (2^bits - 1) * scale >=
// max (KIVI's fp16 scale and zero-point, rounded outward so every value lies inside the grid);
// codes are chosen against these stored values, so code * scale + zero is what the reader
// computes and the error is at most half a step.
#pragma once

#include <cstddef>
#include <cstdint>

#include "base/hd.h"

namespace kvlab {

enum class KvFormat : uint8_t { kF32, kF16, kBF16, kFp8, kIntToken, kIntChannel };

struct KvBlock {
  KvFormat format = KvFormat::kF32;
  int n = 0;      // tokens
  int d = 0;      // head size (channels)
  int bits = 0;   // kIntToken / kIntChannel: 2, 3, 4 or 8
  int group = 0;  // kIntToken: channels per group (divides d); kIntChannel: tokens per group
  const uint8_t* data = nullptr;
  int64_t stride = 0;               // bytes between tokens (token-major) or channels (kIntChannel)
  const uint16_t* scale = nullptr;  // f16; kFp8, kIntToken, kIntChannel
  const uint16_t* zero = nullptr;   // f16; kIntToken, kIntChannel
  // The block the caller reads after this one (its codes and f16 scales / zeros), which the CPU
  // kernels read ahead while they work on this one (kv_kernels_internal.h); null: the bytes that
  // follow this block's own arrays. Only a hint: results never depend on it.
  const KvBlock* next = nullptr;
  // kFp8: the writer vouches that no code is an e4m3 NaN (0x7f / 0xff), so the CPU kernels skip
  // their scan for one before taking the cheaper conversion (kv_dense.h); false: they scan.
  bool fp8_nan_free = false;
};

// Bytes of one packed bit stream of `count` codes.
KVLAB_HD constexpr int64_t packed_bytes(int64_t count, int bits) { return (count * bits + 7) / 8; }

// Code i of a bit stream of `bits`-bit codes; a 3-bit code may span two bytes (bit offset 6 or
// 7), and the second byte is read only then.
KVLAB_HD uint32_t code_at(const uint8_t* stream, int64_t i, int bits) {
  const int64_t bit = i * bits;
  const int64_t byte = bit >> 3;
  const int shift = int(bit & 7);
  uint32_t v = uint32_t(stream[byte]) >> shift;
  if (shift + bits > 8) v |= uint32_t(stream[byte + 1]) << (8 - shift);
  return v & ((1u << bits) - 1);
}

// An f32 block of n tokens of d channels at x, token rows `row_floats` floats apart.
inline KvBlock f32_block(const float* x, int n, int d, int64_t row_floats) {
  KvBlock b;
  b.format = KvFormat::kF32;
  b.n = n;
  b.d = d;
  b.data = reinterpret_cast<const uint8_t*>(x);
  b.stride = row_floats * int64_t(sizeof(float));
  return b;
}

// kIntChannel: tokens per group (group 0 or >= n: the whole block), groups in the block, and
// group t as a block of its own (its codes, scales and zeros; the same stride).
KVLAB_HD int channel_group_tokens(const KvBlock& b) { return b.group > 0 && b.group < b.n ? b.group : b.n; }
KVLAB_HD int channel_groups(const KvBlock& b) {
  const int g = channel_group_tokens(b);
  return g > 0 ? (b.n + g - 1) / g : 0;
}
KVLAB_HD KvBlock channel_sub_block(const KvBlock& b, int t) {
  const int g = channel_group_tokens(b);
  KvBlock s = b;
  s.n = (t + 1) * g <= b.n ? g : b.n - t * g;
  s.group = 0;
  s.data = b.data + packed_bytes(int64_t(t) * g, b.bits);  // t * g * bits is a multiple of 8
  s.scale = b.scale + int64_t(t) * b.d;
  s.zero = b.zero + int64_t(t) * b.d;
  s.next = t + 1 == channel_groups(b) ? b.next : nullptr;  // before the last group: the one after
  return s;
}

// Bytes of one element of the token-major dense formats.
KVLAB_HD constexpr int64_t element_bytes(KvFormat f) {
  return f == KvFormat::kF32 ? 4 : (f == KvFormat::kFp8 ? 1 : 2);
}

// Rows of a block's data (channels for kIntChannel, tokens otherwise), the bytes of one row (a
// token's elements or codes, or a channel's codes), and the bytes from its first row's start to
// its last row's end.
KVLAB_HD int block_rows(const KvBlock& b) { return b.format == KvFormat::kIntChannel ? b.d : b.n; }
KVLAB_HD int64_t block_row_bytes(const KvBlock& b) {
  switch (b.format) {
    case KvFormat::kIntToken: return packed_bytes(b.d, b.bits);
    case KvFormat::kIntChannel: return packed_bytes(b.n, b.bits);
    default: return element_bytes(b.format) * b.d;
  }
}
KVLAB_HD int64_t block_data_bytes(const KvBlock& b) {
  return block_rows(b) > 0 ? (block_rows(b) - 1) * b.stride + block_row_bytes(b) : 0;
}

// The f16 scales of a block (and as many zeros, for the integer formats): kFp8 one per token,
// kIntToken d / group per token, kIntChannel d per token group; 0 for the others.
KVLAB_HD int64_t block_scales(const KvBlock& b) {
  switch (b.format) {
    case KvFormat::kFp8: return b.n;
    case KvFormat::kIntToken: return b.group > 0 ? int64_t(b.n) * (b.d / b.group) : 0;
    case KvFormat::kIntChannel: return int64_t(channel_groups(b)) * b.d;
    default: return 0;
  }
}

static_assert(packed_bytes(64, 3) == 24, "3-bit stream of a 64-wide head is 24 bytes");
static_assert(packed_bytes(128, 2) == 32, "2-bit stream of a 128-token group is 32 bytes");
static_assert(packed_bytes(32, 4) == 16, "4-bit stream of a 32-token group is 16 bytes");

}  // namespace kvlab
