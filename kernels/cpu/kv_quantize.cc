#include "kernels/cpu/kv_quantize.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "base/check.h"
#include "base/half.h"

namespace kvlab {
namespace {

// ---------------------------------------------------------------------------------------------
// fp8 e4m3

constexpr float kE4m3Max = 448.0f;           // S.1111.110 = 1.75 * 2^8
constexpr uint32_t kE4m3MaxBits = 0x43e00000u;  // f32 bits of 448
constexpr uint32_t kE4m3MinNormalBits = 0x3c800000u;  // f32 bits of 2^-6

// f32 bits of every e4m3 pattern: sign | 4-bit exponent (bias 7) | 3-bit mantissa.
constexpr std::array<uint32_t, 256> make_e4m3_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t b = 0; b < 256; ++b) {
    const uint32_t sign = (b & 0x80u) << 24, exp = (b >> 3) & 0xfu, mant = b & 0x7u;
    if (exp == 0xf && mant == 0x7) {
      t[b] = sign | 0x7fc00000u;  // the only NaN encodings; no infinities
    } else if (exp != 0) {
      t[b] = sign | ((exp + 120u) << 23) | (mant << 20);  // rebias 7 -> 127
    } else if (mant == 0) {
      t[b] = sign;
    } else {
      // Subnormal mant * 2^-9: normalize so the leading 1 becomes implicit.
      uint32_t e = 127 - 9, m = mant;
      while (m < 8) m <<= 1, --e;  // after the loop the value is (m / 8) * 2^(e - 124)
      t[b] = sign | ((e + 3) << 23) | ((m & 7u) << 20);
    }
  }
  return t;
}
constexpr std::array<uint32_t, 256> kE4m3Bits = make_e4m3_table();
static_assert(kE4m3Bits[0x7e] == kE4m3MaxBits, "0x7e is 448");
static_assert(kE4m3Bits[0x08] == kE4m3MinNormalBits, "0x08 is 2^-6");
static_assert(kE4m3Bits[0x01] == 0x3b000000u, "0x01 is 2^-9");

// ---------------------------------------------------------------------------------------------
// Bit streams

// ORs code i into a stream whose bytes were zeroed first; touches the second byte only when the
// code really straddles, so nothing past packed_bytes(count, bits) is ever read or written.
inline void put_code(uint8_t* out, int64_t i, int bits, uint32_t code) {
  const int64_t bit = i * bits;
  const int64_t byte = bit >> 3;
  const int shift = int(bit & 7);
  out[byte] = uint8_t(out[byte] | (code << shift));
  if (shift + bits > 8) out[byte + 1] = uint8_t(out[byte + 1] | (code >> (8 - shift)));
}

inline void check_bits(int bits) { KVLAB_CHECK(bits == 2 || bits == 3 || bits == 4 || bits == 8); }

// ---------------------------------------------------------------------------------------------
// The integer (min-max asymmetric) quantizer shared by kIntToken and kIntChannel

constexpr float kF16Max = 65504.0f;

inline float clamp_to_f16_range(float x) { return std::min(std::max(x, -kF16Max), kF16Max); }

// The largest f16 <= x, for x in [-65504, 65504]. f32_to_f16 rounds to nearest, so the answer
// is that f16 or its neighbour below.
uint16_t f16_floor(float x) {
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
IntParams choose_int_params(float lo, float hi, int bits) {
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

// Min and max of the non-NaN values, clamped to the f16 range; a group of only NaN is [0, 0].
template <typename At>
void group_range(At at, int count, float* lo, float* hi) {
  float mn = INFINITY, mx = -INFINITY;
  for (int i = 0; i < count; ++i) {
    const float x = at(i);
    if (std::isnan(x)) continue;
    mn = std::min(mn, x);
    mx = std::max(mx, x);
  }
  if (mn > mx) mn = mx = 0.0f;
  *lo = clamp_to_f16_range(mn);
  *hi = clamp_to_f16_range(mx);
}

// The code of x in a grid chosen by choose_int_params: the nearest grid point (ties up). The
// quotient is formed in double; its rounding error is below 2^-42 of a step (see the bound).
inline uint32_t int_code(float x, double z, double s, uint32_t levels) {
  if (s == 0.0 || std::isnan(x)) return 0;
  const double t = std::floor((double(clamp_to_f16_range(x)) - z) / s + 0.5);
  return uint32_t(std::min(std::max(t, 0.0), double(levels)));
}

// Quantizes `count` values (value i = at(i)) into one bit stream plus one scale / zero.
template <typename At>
void quantize_group(At at, int count, int bits, uint8_t* stream, int64_t first_code, uint16_t* scale,
                    uint16_t* zero) {
  float lo, hi;
  group_range(at, count, &lo, &hi);
  const IntParams p = choose_int_params(lo, hi, bits);
  const double z = f16_to_f32(p.zero), s = f16_to_f32(p.scale);
  const uint32_t levels = (1u << bits) - 1;
  for (int i = 0; i < count; ++i) put_code(stream, first_code + i, bits, int_code(at(i), z, s, levels));
  *scale = p.scale;
  *zero = p.zero;
}

// ---------------------------------------------------------------------------------------------
// fp8 scale

// f16(max_abs / 448), nearest even, except:
//  - never 0 for a nonzero token (2^-24 instead): a zero scale would erase the token;
//  - never so far below max_abs / 448 that max_abs / scale > 464 (half an e4m3 top step past
//    448): then one f16 step up. Only f16-subnormal scales (max_abs below about 7.8e-4) can
//    lose that much (their steps are 2^-24 absolute); for normal ones the shortfall is at most
//    2^-11 relative, i.e. |x| / scale <= 448.3;
//  - at most 65504 (max_abs up to 448 * 65504 fits, larger saturates).
// So saturation never costs more than the 16 scales that rounding at the top of e4m3 may.
uint16_t fp8_scale(float max_abs) {
  if (!(max_abs > 0.0f)) return 0;
  uint16_t h = std::max(f32_to_f16(max_abs / kE4m3Max), uint16_t(0x0001));
  if (h < 0x7bff && double(max_abs) > 464.0 * f16_to_f32(h)) ++h;  // exact comparison
  return std::min(h, uint16_t(0x7bff));
}

}  // namespace

uint8_t f32_to_e4m3(float x) {
  uint32_t a = f32_bits(x);
  const uint8_t sign = uint8_t((a >> 24) & 0x80u);
  a &= 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7f;          // NaN
  if (a > kE4m3MaxBits) return sign | 0x7e;  // saturate, infinity included
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

float e4m3_to_f32(uint8_t b) { return f32_from_bits(kE4m3Bits[b]); }

void pack_codes(const uint8_t* codes, int64_t count, int bits, uint8_t* out) {
  check_bits(bits);
  std::memset(out, 0, size_t(packed_bytes(count, bits)));
  for (int64_t i = 0; i < count; ++i) {
    KVLAB_CHECK(codes[i] >> bits == 0);
    put_code(out, i, bits, codes[i]);
  }
}

void unpack_codes(const uint8_t* in, int64_t count, int bits, uint8_t* codes) {
  check_bits(bits);
  for (int64_t i = 0; i < count; ++i) codes[i] = uint8_t(code_at(in, i, bits));
}

void quantize_token(KvFormat format, int bits, int group, const float* x, int d, uint8_t* data,
                    uint16_t* scale, uint16_t* zero) {
  switch (format) {
    case KvFormat::kF32:
      std::memcpy(data, x, size_t(d) * 4);
      return;
    case KvFormat::kF16:
    case KvFormat::kBF16:
      for (int c = 0; c < d; ++c) {
        const uint16_t h = format == KvFormat::kF16 ? f32_to_f16(x[c]) : f32_to_bf16(x[c]);
        std::memcpy(data + 2 * c, &h, 2);  // unaligned-safe
      }
      return;
    case KvFormat::kFp8: {
      float max_abs = 0.0f;
      for (int c = 0; c < d; ++c) {
        if (std::isfinite(x[c])) max_abs = std::max(max_abs, std::fabs(x[c]));
      }
      *scale = fp8_scale(max_abs);
      const float s = f16_to_f32(*scale);
      if (s == 0.0f) {
        // All finite values are 0; NaN still reads back as NaN, +-inf as 0 like everything else.
        for (int c = 0; c < d; ++c) data[c] = std::isnan(x[c]) ? 0x7f : 0x00;
        return;
      }
      // s is max_abs / 448 rounded to nearest, possibly down (by 2^-11 relative for a normal
      // f16, fp8_scale caps it for subnormal ones): x / s may then exceed 448 by up to 16 and
      // f32_to_e4m3 saturates it to 448, an error no larger than e4m3's own rounding at the top.
      for (int c = 0; c < d; ++c) data[c] = f32_to_e4m3(x[c] / s);
      return;
    }
    case KvFormat::kIntToken: {
      check_bits(bits);
      KVLAB_CHECK(group > 0 && d % group == 0);
      std::memset(data, 0, size_t(packed_bytes(d, bits)));
      for (int g = 0; g < d / group; ++g) {
        const float* xg = x + int64_t(g) * group;
        quantize_group([xg](int i) { return xg[i]; }, group, bits, data, int64_t(g) * group, scale + g, zero + g);
      }
      return;
    }
    case KvFormat::kIntChannel:
      break;
  }
  KVLAB_CHECK(false && "quantize_token: kIntChannel is written per block by quantize_channels");
}

void quantize_channels(int bits, const float* x, int n, int64_t ldx, int d, uint8_t* data, int64_t stride,
                       uint16_t* scale, uint16_t* zero) {
  check_bits(bits);
  KVLAB_CHECK(stride >= packed_bytes(n, bits));
  for (int c = 0; c < d; ++c) {
    uint8_t* stream = data + int64_t(c) * stride;
    std::memset(stream, 0, size_t(packed_bytes(n, bits)));
    const float* xc = x + c;
    quantize_group([xc, ldx](int j) { return xc[int64_t(j) * ldx]; }, n, bits, stream, 0, scale + c, zero + c);
  }
}

void dequantize_block(const KvBlock& b, float* out) {
  const int n = b.n, d = b.d;
  switch (b.format) {
    case KvFormat::kF32:
      for (int j = 0; j < n; ++j) std::memcpy(out + int64_t(j) * d, b.data + j * b.stride, size_t(d) * 4);
      return;
    case KvFormat::kF16:
    case KvFormat::kBF16:
      for (int j = 0; j < n; ++j) {
        const uint8_t* row = b.data + j * b.stride;
        for (int c = 0; c < d; ++c) {
          uint16_t h;
          std::memcpy(&h, row + 2 * c, 2);
          out[int64_t(j) * d + c] = b.format == KvFormat::kF16 ? f16_to_f32(h) : bf16_to_f32(h);
        }
      }
      return;
    case KvFormat::kFp8:
      for (int j = 0; j < n; ++j) {
        const uint8_t* row = b.data + j * b.stride;
        const float s = f16_to_f32(b.scale[j]);
        for (int c = 0; c < d; ++c) out[int64_t(j) * d + c] = e4m3_to_f32(row[c]) * s;  // exact product
      }
      return;
    case KvFormat::kIntToken: {
      check_bits(b.bits);
      KVLAB_CHECK(b.group > 0 && d % b.group == 0);
      const int groups = d / b.group;
      for (int j = 0; j < n; ++j) {
        const uint8_t* row = b.data + j * b.stride;
        for (int g = 0; g < groups; ++g) {
          const float s = f16_to_f32(b.scale[int64_t(j) * groups + g]);
          const float z = f16_to_f32(b.zero[int64_t(j) * groups + g]);
          for (int c = g * b.group; c < (g + 1) * b.group; ++c) {
            out[int64_t(j) * d + c] = float(code_at(row, c, b.bits)) * s + z;
          }
        }
      }
      return;
    }
    case KvFormat::kIntChannel: {
      check_bits(b.bits);
      const int g = channel_group_tokens(b);
      for (int c = 0; c < d; ++c) {
        const uint8_t* stream = b.data + c * b.stride;
        for (int j = 0; j < n; ++j) {
          const int64_t e = int64_t(j / g) * d + c;
          out[int64_t(j) * d + c] = float(code_at(stream, j, b.bits)) * f16_to_f32(b.scale[e]) + f16_to_f32(b.zero[e]);
        }
      }
      return;
    }
  }
  KVLAB_CHECK(false && "dequantize_block: unknown format");
}

// Error bound of the integer quantizer. Let L = 2^bits - 1 and (z, s) = choose_int_params of the
// range, clamped to [-65504, 65504].
//  1. Coverage: z <= lo and z + L s >= hi by construction, so every x in [lo, hi] lies in
//     [z, z + L s] and the nearest grid point z + k s (0 <= k <= L) is within s / 2. The code
//     comes from t = (x - z) / s evaluated in double: two roundings of relative 2^-53 on a
//     t <= L < 2^8, plus the rounding of t + 0.5, move t by less than 2^-42, so the chosen k is
//     within s (1/2 + 2^-42) of x - z, and the clamp to [0, L] never moves it further.
//  2. Reader: f32(k) * s is exact (8 + 11 significant bits), z is an f16, and the one rounding
//     of the f32 addition adds at most 2^-24 |k s + z| <= 2^-24 (max(|lo|, |hi|) + s).
//  3. Groups inside [lo, hi]: their zero z' is >= z (clamp and f16_floor are monotone) and
//     their max hi' <= hi, so z' + L s >= z + L s >= hi >= hi': s qualifies for them and the
//     smallest scale they get is <= s (and their |values| <= max(|lo|, |hi|)).
//  4. Clamp: a finite x beyond +-65504 is first moved to +-65504, an extra |x| - 65504.
// There is no separate term for rounding the zero to f16: rounding it DOWN widens the range by
// less than one f16 step of lo (<= 2^-10 |lo|), which only adds that / L to s. Rounding the zero
// to nearest instead would leave values in [lo, z) up to half an f16 step of lo below the grid,
// an error that, unlike this, does not shrink with more bits.
// The bound is tight: s is within one f16 step of (hi - z) / L and uniform data come close to
// s / 2 (the tests require at least 40% of the bound).
double int_quant_error_bound(double lo, double hi, int bits) {
  check_bits(bits);
  KVLAB_CHECK(lo <= hi);
  const double clamp_excess = std::max({0.0, -double(kF16Max) - lo, hi - double(kF16Max)});
  // Rounding the ends to float is safe: a float >= lo is >= float(lo) when float(lo) rounded
  // up (it is then the smallest float >= lo), and trivially when it rounded down.
  const float lo_c = clamp_to_f16_range(float(lo)), hi_c = clamp_to_f16_range(float(hi));
  const double s = f16_to_f32(choose_int_params(lo_c, hi_c, bits).scale);
  const double mag = std::max(std::fabs(double(lo_c)), std::fabs(double(hi_c))) + s;
  return s * (0.5 + std::ldexp(1.0, -42)) + std::ldexp(mag, -24) + clamp_excess;
}

// Error bound of kFp8 for a token with max finite |x| = m and scale s = fp8_scale(m). The
// quotient t = fl(|x| / s) is within relative 2^-24 of |x| / s, i.e. within 464 * 2^-24 of it
// wherever it matters (t <= 464).
//  - t <= 448: e4m3 rounding moves t by at most half a step, 16 for t in [256, 448]; the product
//    e4m3 * s is exact (4 + 11 significant bits), so the error is <= (16 + 464 * 2^-24) s.
//  - t > 448: the code is 448 and the error is |x| - 448 s <= m - 448 s, which fp8_scale keeps
//    <= 16 s, plus the same 464 * 2^-24 s. Only a token beyond 448 * 65504 (scale clamped at
//    the largest f16) saturates further, by m - 448 s.
// m is taken as the float the writer sees. For m below the token's real max the bound does not
// apply; for a larger m (a budget) it still does: the token's own scale is <= s (every rounding
// and the step-up rule are monotone in m) and its error <= 16 times that scale.
double fp8_quant_error_bound(double max_abs) {
  const double s = f16_to_f32(fp8_scale(float(max_abs)));
  return std::max(16.0 * s, max_abs - 448.0 * s) + std::ldexp(464.0 * s, -24);
}

}  // namespace kvlab
