// The scalar codecs of the packed layouts (kv_format.h): e4m3 both ways, writing bit streams, the
// integer grid (scale and zero of a group) and the writers of one token and of one channel.
// One source for the CPU (kv_quantize.cc wraps these with its argument checks) and the GPU
// (kernels/cuda/kv_write.cu runs them a thread per token or channel): every function is KVLAB_HD
// (base/hd.h), so the host tests of the CPU writers check the GPU's arithmetic too. The rounding
// rules and error bounds are documented in kv_quantize.h and derived in kv_quantize.cc.
#pragma once

#include <cmath>
#include <cstdint>

#include "base/half.h"
#include "base/hd.h"
#include "kernels/cpu/kv_format.h"

#if defined(__CUDACC__)
#include <cuda_fp8.h>
#endif

namespace kvlab {

constexpr float kE4m3Max = 448.0f;                    // S.1111.110 = 1.75 * 2^8
constexpr uint32_t kE4m3MaxBits = 0x43e00000u;        // f32 bits of 448
constexpr uint32_t kE4m3MinNormalBits = 0x3c800000u;  // f32 bits of 2^-6
constexpr float kF16Max = 65504.0f;

KVLAB_HD bool is_nan(float x) { return (f32_bits(x) & 0x7fffffffu) > 0x7f800000u; }
KVLAB_HD bool is_finite(float x) { return (f32_bits(x) & 0x7f800000u) != 0x7f800000u; }

// e4m3 -> f32, exact: 1 sign, 4 exponent bits (bias 7), 3 mantissa bits, no infinities,
// 0x7f / 0xff NaN. constexpr: the CPU kernels' lookup table is built from it.
KVLAB_HD constexpr bool e4m3_is_nan(int b) { return (b & 0x7f) == 0x7f; }
KVLAB_HD constexpr float e4m3_value(int b) {
  const int e = (b >> 3) & 15, mant = b & 7;
  if (e4m3_is_nan(b)) return __builtin_nanf("");
  float v = e == 0 ? float(mant) / 8.0f : 1.0f + float(mant) / 8.0f;
  int p = e == 0 ? -6 : e - 7;
  for (; p > 0; --p) v *= 2.0f;
  for (; p < 0; ++p) v *= 0.5f;
  return (b & 0x80) ? -v : v;
}

// e4m3_value at run time: the GPU's conversion instruction on the device (the same exact values,
// NaN for 0x7f / 0xff), e4m3_value on the host.
KVLAB_HD float e4m3_to_float(uint8_t b) {
#if defined(__CUDA_ARCH__)
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t(b), __NV_E4M3)));
#else
  return e4m3_value(b);
#endif
}

// f32 -> e4m3, round to nearest even; beyond +-448 (infinity included) saturates to +-448, NaN
// becomes 0x7f, -0 keeps its sign.
KVLAB_HD uint8_t e4m3_code(float x) {
  uint32_t a = f32_bits(x);
  const uint8_t sign = uint8_t((a >> 24) & 0x80u);
  a &= 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7f;                      // NaN
  if (a > kE4m3MaxBits) return uint8_t(sign | 0x7e);     // saturate, infinity included
  if (a < kE4m3MinNormalBits) {
    // Subnormal range: the code is round_half_even(|x| * 2^9) in 0..8 (the scaling is exact);
    // 8 is 2^-6 = code 0x08, the smallest normal, so the subnormal codes run into the normals.
    const float t = f32_from_bits(a) * 512.0f;
    uint32_t k = uint32_t(t);
    const float rem = t - float(k);  // exact: t < 8
    if (rem > 0.5f || (rem == 0.5f && (k & 1u))) ++k;
    return uint8_t(sign | k);
  }
  // Normal: round the 23-bit mantissa to 3 bits, nearest even (a carry may bump the exponent,
  // which is right; it cannot pass 448 since |x| <= 448), then rebias 127 -> 7.
  a += 0x7ffffu + ((a >> 20) & 1u);
  return uint8_t(sign | ((a >> 20) - (120u << 3)));
}

// ORs code i into a stream whose bytes were zeroed first; touches the second byte only when the
// code really straddles, so nothing past packed_bytes(count, bits) is ever read or written.
KVLAB_HD void put_code(uint8_t* out, int64_t i, int bits, uint32_t code) {
  const int64_t bit = i * bits;
  const int64_t byte = bit >> 3;
  const int shift = int(bit & 7);
  out[byte] = uint8_t(out[byte] | (code << shift));
  if (shift + bits > 8) out[byte + 1] = uint8_t(out[byte + 1] | (code >> (8 - shift)));
}

KVLAB_HD float clamp_to_f16_range(float x) { return x < -kF16Max ? -kF16Max : (x > kF16Max ? kF16Max : x); }

// The largest f16 <= x, for x in [-65504, 65504]. f32_to_f16 rounds to nearest, so the answer
// is that f16 or its neighbour below.
KVLAB_HD uint16_t f16_floor(float x) {
  const uint16_t h = f32_to_f16(x);
  if (f16_to_f32(h) <= x) return h;
  // One f16 step towards -infinity. h is never +0 here (f32_to_f16 keeps the sign, and +0 > x
  // needs x < 0); -0 (x in (-2^-25, 0)) steps to 0x8001 = -2^-24 like any negative pattern.
  return (h & 0x8000) ? uint16_t(h + 1) : uint16_t(h - 1);
}

struct IntParams {
  uint16_t scale, zero;  // f16
};

// zero = the largest f16 <= lo; scale = the smallest non-negative f16 with
// zero + L * scale >= hi, L = 2^bits - 1. zero + L * scale is exact in double (both are
// multiples of 2^-24 below 2^24 in magnitude: < 50 significant bits), so the search is exact.
// Non-negative f16 patterns are ordered like their values: a binary search over [0, 0x7bff];
// 0x7bff (65504) always qualifies, since hi - zero <= 131008 <= 3 * 65504.
// REQUIRES -65504 <= lo <= hi <= 65504.
KVLAB_HD IntParams choose_int_params(float lo, float hi, int bits) {
  const uint16_t zero = f16_floor(lo);
  const double z = f16_to_f32(zero), top = hi, levels = double((1 << bits) - 1);
  uint32_t a = 0, b = 0x7bff;  // invariant: b qualifies; answer in [a, b]
  while (a < b) {
    const uint32_t mid = (a + b) / 2;
    if (z + levels * f16_to_f32(uint16_t(mid)) >= top) b = mid;
    else a = mid + 1;
  }
  return {uint16_t(b), zero};
}

// The code of x in a grid chosen by choose_int_params: the nearest grid point (ties up). The
// quotient is formed in double; its rounding error is below 2^-42 of a step (kv_quantize.cc).
KVLAB_HD uint32_t int_code(float x, double z, double s, uint32_t levels) {
  if (s == 0.0 || is_nan(x)) return 0;
  const double t = floor((double(clamp_to_f16_range(x)) - z) / s + 0.5);
  return uint32_t(t < 0.0 ? 0.0 : (t > double(levels) ? double(levels) : t));
}

// Quantizes `count` values (value i = at(i)) into one bit stream (codes first_code ..) plus one
// scale / zero. The range is that of the non-NaN values, clamped to the f16 range; a group of
// only NaN is [0, 0].
template <typename At>
KVLAB_HD void quantize_group(At at, int count, int bits, uint8_t* stream, int64_t first_code, uint16_t* scale,
                             uint16_t* zero) {
  float lo = INFINITY, hi = -INFINITY;
  for (int i = 0; i < count; ++i) {
    const float x = at(i);
    if (is_nan(x)) continue;
    lo = x < lo ? x : lo;
    hi = x > hi ? x : hi;
  }
  if (lo > hi) lo = hi = 0.0f;
  const IntParams p = choose_int_params(clamp_to_f16_range(lo), clamp_to_f16_range(hi), bits);
  const double z = f16_to_f32(p.zero), s = f16_to_f32(p.scale);
  const uint32_t levels = (1u << bits) - 1;
  for (int i = 0; i < count; ++i) put_code(stream, first_code + i, bits, int_code(at(i), z, s, levels));
  *scale = p.scale;
  *zero = p.zero;
}

// fp8's token scale: f16(max_abs / 448), nearest even, except:
//  - never 0 for a nonzero token (2^-24 instead): a zero scale would erase the token;
//  - never so far below max_abs / 448 that max_abs / scale > 464 (half an e4m3 top step past
//    448): then one f16 step up. Only f16-subnormal scales (max_abs below about 7.8e-4) can
//    lose that much (their steps are 2^-24 absolute); for normal ones the shortfall is at most
//    2^-11 relative, i.e. |x| / scale <= 448.3;
//  - at most 65504 (max_abs up to 448 * 65504 fits, larger saturates).
// So saturation never costs more than the 16 scales that rounding at the top of e4m3 may.
KVLAB_HD uint16_t fp8_scale(float max_abs) {
  if (!(max_abs > 0.0f)) return 0;
  uint16_t h = f32_to_f16(max_abs / kE4m3Max);
  if (h < 0x0001) h = 0x0001;
  if (h < 0x7bff && double(max_abs) > 464.0 * f16_to_f32(h)) ++h;  // exact comparison
  return h < 0x7bff ? h : uint16_t(0x7bff);
}

// One token's d values x in a token-major format (kF32, kF16, kBF16, kFp8, kIntToken) at data
// (element_bytes * d bytes, or packed_bytes(d, bits)), with its scale (kFp8: one; kIntToken: one
// per group of `group` channels) and zero (kIntToken). REQUIRES what quantize_token checks.
KVLAB_HD void write_token(KvFormat format, int bits, int group, const float* x, int d, uint8_t* data, uint16_t* scale,
                          uint16_t* zero) {
  switch (format) {
    case KvFormat::kF32:
      for (int c = 0; c < d; ++c) {
        const uint32_t u = f32_bits(x[c]);
        for (int i = 0; i < 4; ++i) data[4 * c + i] = uint8_t(u >> (8 * i));  // unaligned-safe
      }
      return;
    case KvFormat::kF16:
    case KvFormat::kBF16:
      for (int c = 0; c < d; ++c) {
        const uint16_t h = format == KvFormat::kF16 ? f32_to_f16(x[c]) : f32_to_bf16(x[c]);
        data[2 * c] = uint8_t(h), data[2 * c + 1] = uint8_t(h >> 8);
      }
      return;
    case KvFormat::kFp8: {
      float max_abs = 0.0f;
      for (int c = 0; c < d; ++c) {
        if (is_finite(x[c])) max_abs = fabsf(x[c]) > max_abs ? fabsf(x[c]) : max_abs;
      }
      *scale = fp8_scale(max_abs);
      const float s = f16_to_f32(*scale);
      if (s == 0.0f) {
        // All finite values are 0; NaN still reads back as NaN, +-inf as 0 like everything else.
        for (int c = 0; c < d; ++c) data[c] = is_nan(x[c]) ? 0x7f : 0x00;
        return;
      }
      // s is max_abs / 448 rounded to nearest, possibly down (by 2^-11 relative for a normal
      // f16, fp8_scale caps it for subnormal ones): x / s may then exceed 448 by up to 16 and
      // e4m3_code saturates it to 448, an error no larger than e4m3's own rounding at the top.
      for (int c = 0; c < d; ++c) data[c] = e4m3_code(x[c] / s);
      return;
    }
    case KvFormat::kIntToken:
      for (int64_t i = 0; i < packed_bytes(d, bits); ++i) data[i] = 0;
      for (int g = 0; g < d / group; ++g) {
        const float* xg = x + int64_t(g) * group;
        quantize_group([xg](int i) { return xg[i]; }, group, bits, data, int64_t(g) * group, scale + g, zero + g);
      }
      return;
    case KvFormat::kIntChannel:
      return;  // written per block: write_channel
  }
}

// One channel of a kIntChannel token group: the n values x[j * ldx] as one group, codes into
// stream (packed_bytes(n, bits) bytes, zeroed first), its scale and zero.
KVLAB_HD void write_channel(int bits, const float* x, int n, int64_t ldx, uint8_t* stream, uint16_t* scale,
                            uint16_t* zero) {
  for (int64_t i = 0; i < packed_bytes(n, bits); ++i) stream[i] = 0;
  quantize_group([x, ldx](int j) { return x[int64_t(j) * ldx]; }, n, bits, stream, 0, scale, zero);
}

}  // namespace kvlab
