#include "kernels/cpu/kv_quantize.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "base/check.h"
#include "base/half.h"
#include "kernels/cpu/kv_codec.h"

namespace kvlab {
namespace {

inline void check_bits(int bits) { KVLAB_CHECK(bits == 2 || bits == 3 || bits == 4 || bits == 8); }

}  // namespace

uint8_t f32_to_e4m3(float x) { return e4m3_code(x); }

float e4m3_to_f32(uint8_t b) { return e4m3_value(b); }

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
  KVLAB_CHECK(format != KvFormat::kIntChannel && "quantize_token: kIntChannel is written per block by quantize_channels");
  if (format == KvFormat::kIntToken) {
    check_bits(bits);
    KVLAB_CHECK(group > 0 && d % group == 0);
  }
  write_token(format, bits, group, x, d, data, scale, zero);
}

void quantize_channels(int bits, const float* x, int n, int64_t ldx, int d, uint8_t* data, int64_t stride,
                       uint16_t* scale, uint16_t* zero) {
  check_bits(bits);
  KVLAB_CHECK(stride >= packed_bytes(n, bits));
  for (int c = 0; c < d; ++c) write_channel(bits, x + c, n, ldx, data + int64_t(c) * stride, scale + c, zero + c);
}

void quantize_block(const KvBlock& b, const float* x, int64_t ldx, uint8_t* data, uint16_t* scale, uint16_t* zero) {
  if (b.format == KvFormat::kIntChannel) {
    const int g = channel_group_tokens(b);
    for (int t = 0; t < channel_groups(b); ++t) {
      quantize_channels(b.bits, x + int64_t(t) * g * ldx, std::min(g, b.n - t * g), ldx, b.d,
                        data + packed_bytes(int64_t(t) * g, b.bits), b.stride, scale + int64_t(t) * b.d,
                        zero + int64_t(t) * b.d);
    }
    return;
  }
  const int64_t per_token = b.n > 0 ? block_scales(b) / b.n : 0;
  for (int j = 0; j < b.n; ++j) {
    quantize_token(b.format, b.bits, b.group, x + j * ldx, b.d, data + j * b.stride,
                   per_token ? scale + j * per_token : nullptr, zero ? zero + j * per_token : nullptr);
  }
}

void dequantize_block(const KvBlock& b, float* out, int64_t ld) {
  const int n = b.n, d = b.d;
  KVLAB_CHECK(ld >= d);
  switch (b.format) {
    case KvFormat::kF32:
      for (int j = 0; j < n; ++j) std::memcpy(out + j * ld, b.data + j * b.stride, size_t(d) * 4);
      return;
    case KvFormat::kF16:
    case KvFormat::kBF16:
      for (int j = 0; j < n; ++j) {
        const uint8_t* row = b.data + j * b.stride;
        for (int c = 0; c < d; ++c) {
          uint16_t h;
          std::memcpy(&h, row + 2 * c, 2);
          out[j * ld + c] = b.format == KvFormat::kF16 ? f16_to_f32(h) : bf16_to_f32(h);
        }
      }
      return;
    case KvFormat::kFp8:
      for (int j = 0; j < n; ++j) {
        const uint8_t* row = b.data + j * b.stride;
        const float s = f16_to_f32(b.scale[j]);
        for (int c = 0; c < d; ++c) out[j * ld + c] = e4m3_to_f32(row[c]) * s;  // exact product
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
            out[j * ld + c] = float(code_at(row, c, b.bits)) * s + z;
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
          out[j * ld + c] = float(code_at(stream, j, b.bits)) * f16_to_f32(b.scale[e]) + f16_to_f32(b.zero[e]);
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
