// Writers and the reference reader of the packed K/V layouts of kernels/cpu/kv_format.h.
// Scalar code: a token is written once and read thousands of times; the fused readers are in
// kernels/cpu/kv_attention.h and must agree with dequantize_block (the reference) bit for bit
// or within the tolerance their tests state.
//
// Rounding choices of the writers (the reader does not depend on them, the error bounds do):
//   kFp8        scale = f16(max|x| / 448), the f32 quotient rounded to nearest even, with three
//               guards: a token with max|x| > 0 never gets scale 0 (2^-24 instead); where
//               rounding down left max|x| / scale > 464 (only f16-subnormal scales, max|x| below
//               about 7.8e-4) the scale steps one f16 up; a scale above 65504 is clamped.
//               codes = f32_to_e4m3(x / scale), which saturates where rounding the scale down
//               pushed |x| / scale past 448, never by more than e4m3's top half step (16).
//   kIntToken,  zero = the largest f16 <= min (rounded DOWN), scale = the smallest f16 with
//   kIntChannel zero + (2^bits - 1) * scale >= max (rounded UP), so the grid
//               {zero + k * scale : 0 <= k < 2^bits} spans the whole group and every value is at
//               most half a step from a grid point: see int_quant_error_bound.
//               code = clamp(round_half_up((x - zero) / scale), 0, 2^bits - 1), in double.
//               scale 0 (the group is one f16-representable constant) gives all codes 0.
//
// Non-finite inputs (a NaN in K/V is an upstream bug; these rules only keep it contained):
//   kF32 / kF16 / kBF16  as base/half.h: NaN stays NaN, f16 overflow becomes infinity.
//   kFp8                 NaN -> 0x7f (reads back as NaN); +-inf and finite overflow saturate to
//                        +-448 * scale; the scale is taken over the finite values only.
//   kIntToken/Channel    values are clamped to the f16 range [-65504, 65504] first (the zero
//                        point is an f16), so +-inf reads back as about +-65504; NaN does not
//                        take part in min / max and gets code 0 (reads back as the group's zero).
//                        A group of only NaN is stored as the constant 0.
#pragma once

#include <cstdint>

#include "kernels/cpu/kv_format.h"

namespace kvlab {

// fp8 e4m3 (kv_format.h): f32 -> e4m3 rounds to nearest even; finite values beyond +-448 and
// +-infinity saturate to +-448 (e4m3 has no infinity), NaN becomes 0x7f. -0 keeps its sign
// (0x80). e4m3 -> f32 is exact (0x7f / 0xff read as quiet NaN).
uint8_t f32_to_e4m3(float x);
float e4m3_to_f32(uint8_t b);

// The bit streams of kv_format.h: code i at bits [i * bits, (i + 1) * bits), little-endian,
// bits in {2, 3, 4, 8}; 3-bit codes straddle byte boundaries. pack_codes writes exactly
// packed_bytes(count, bits) bytes (unused high bits of the last byte are 0) and nothing beyond;
// REQUIRES codes[i] < 2^bits. unpack_codes reads the same bytes back.
void pack_codes(const uint8_t* codes, int64_t count, int bits, uint8_t* out);
void unpack_codes(const uint8_t* in, int64_t count, int bits, uint8_t* codes);

// Writes one token's d values in a token-major format (kF32, kF16, kBF16, kFp8, kIntToken):
// `data` receives the token's elements / codes (element_bytes * d, or packed_bytes(d, bits)),
// `scale` / `zero` its f16 scale (kFp8: one; kIntToken: d / group of each) where the format has
// them (else ignored, may be null). bits / group are only read for kIntToken (group divides d).
// Writes nothing outside those ranges.
void quantize_token(KvFormat format, int bits, int group, const float* x, int d, uint8_t* data,
                    uint16_t* scale, uint16_t* zero);

// Writes a block of n tokens per channel (kIntChannel). x: [n, d] f32 with rows ldx floats
// apart; channel c's codes go to data + c * stride (packed_bytes(n, bits) bytes written; the
// rest of the stride is left alone), its f16 scale and zero to scale[c], zero[c].
void quantize_channels(int bits, const float* x, int n, int64_t ldx, int d, uint8_t* data, int64_t stride,
                       uint16_t* scale, uint16_t* zero);

// Writes a whole block of the layout `b` describes (format, n, d, bits, group, stride; its
// pointers are ignored): x [n, d] with rows ldx floats apart, into data (token j at
// data + j * stride, or channel c at data + c * stride with each token group's codes from its
// first byte), scale and zero (block_scales(b) each; zero only for the integer formats) in the
// order the readers expect. quantize_token / quantize_channels per token or token group.
void quantize_block(const KvBlock& b, const float* x, int64_t ldx, uint8_t* data, uint16_t* scale, uint16_t* zero);

// The reference reader: the block as f32, out: [n, d] with rows `ld` floats apart (row j at
// out + j * ld; ld >= d, a head's columns of a token-major [n, n_kv_heads * d] array). Integer formats
// compute value = f32(code) * f16_to_f32(scale) + f16_to_f32(zero) in f32, in that order.
// The product is always exact in f32 (code < 2^8, an f16 has 11 significant bits: 19 <= 24
// bits), so only the addition rounds, and fmaf(code, scale, zero) gives the same bits; a reader
// that reassociates (e.g. scale * sum(p * code) + zero * sum(p)) does not, and must say so.
// kFp8's e4m3(code) * scale is exact in f32 as well (4 + 11 significant bits).
void dequantize_block(const KvBlock& block, float* out, int64_t ld);
inline void dequantize_block(const KvBlock& block, float* out) { dequantize_block(block, out, block.d); }

// The largest |dequantized - original| the integer writers (kIntToken, kIntChannel) can
// produce for any group whose finite values lie in [lo, hi] (REQUIRES lo <= hi) with `bits`
// bits: half of the step the writer picks for [lo, hi] (a group inside [lo, hi] never gets a
// larger step), plus the f32 rounding of the reader, plus the clamp to the f16 range for values
// beyond +-65504. Derived in kv_quantize.cc. Tests and policies use it as the error budget.
double int_quant_error_bound(double lo, double hi, int bits);

// The same for kFp8: the largest |dequantized - original| for any finite element of a token
// whose largest finite |x| is max_abs (or any larger budget): 16 * s, half the coarsest e4m3
// step (256..448) times the writer's scale s, plus relative 2^-24; beyond 448 * 65504 the
// saturation. Derived in kv_quantize.cc.
double fp8_quant_error_bound(double max_abs);

// Bytes of a densely packed block of n tokens of head size d (codes / elements, plus the f16
// scales and zeros), for byte accounting: kF32 4nd, kF16 / kBF16 2nd, kFp8 n(d + 2),
// kIntToken n(packed_bytes(d, bits) + 4 d / group), kIntChannel d(packed_bytes(n, bits) + 4 t)
// with t = ceil(n / group) token groups (1 for group 0).
// Real policies may pad strides; they add their padding themselves.
constexpr int64_t kv_block_bytes(KvFormat f, int64_t n, int64_t d, int bits = 0, int group = 0) {
  switch (f) {
    case KvFormat::kF32: return 4 * n * d;
    case KvFormat::kF16:
    case KvFormat::kBF16: return 2 * n * d;
    case KvFormat::kFp8: return n * (d + 2);
    case KvFormat::kIntToken: return n * (packed_bytes(d, bits) + 4 * (d / group));
    case KvFormat::kIntChannel: return d * (packed_bytes(n, bits) + 4 * (group > 0 ? (n + group - 1) / group : 1));
  }
  return 0;
}

static_assert(kv_block_bytes(KvFormat::kIntToken, 1, 128, 2, 32) == 32 + 16,
              "a 2-bit token of a 128-wide head in groups of 32: 32 code bytes + 4 scales + 4 zeros");
static_assert(kv_block_bytes(KvFormat::kIntChannel, 32, 64, 4, 0) == 64 * (16 + 4),
              "a 4-bit 32-token key group of a 64-wide head: 16 code bytes + scale + zero per channel");

}  // namespace kvlab
