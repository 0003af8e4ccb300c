// Fused scores / value accumulation over packed K/V blocks (see kv_attention.h).
// Stage 1: the scalar reader serves every ISA.
#include "kernels/cpu/kv_attention.h"

#include <array>
#include <cstring>
#include <limits>

#include "base/check.h"
#include "base/half.h"
#include "kernels/cpu/simd.h"

namespace kvlab {
namespace {

// e4m3 (kv_format.h) -> f32, exact: 1 sign, 4 exponent bits (bias 7), 3 mantissa bits, no
// infinities, 0x7f / 0xff NaN.
constexpr float e4m3_value(int b) {
  const int e = (b >> 3) & 15, mant = b & 7;
  if (e == 15 && mant == 7) return std::numeric_limits<float>::quiet_NaN();
  float v = e == 0 ? float(mant) / 8.0f : 1.0f + float(mant) / 8.0f;
  int p = e == 0 ? -6 : e - 7;
  for (; p > 0; --p) v *= 2.0f;
  for (; p < 0; ++p) v *= 0.5f;
  return (b & 0x80) ? -v : v;
}

constexpr std::array<float, 256> make_e4m3_table() {
  std::array<float, 256> t{};
  for (int b = 0; b < 256; ++b) t[b] = e4m3_value(b);
  return t;
}
constexpr std::array<float, 256> kE4m3 = make_e4m3_table();

// Code i of a little-endian bit stream of `bits`-bit codes.
inline uint32_t code_at(const uint8_t* p, int64_t i, int bits) {
  const int64_t bit = i * bits;
  const int64_t byte = bit >> 3;
  const int sh = int(bit & 7);
  uint32_t v = uint32_t(p[byte]) >> sh;
  if (sh + bits > 8) v |= uint32_t(p[byte + 1]) << (8 - sh);
  return v & ((1u << bits) - 1);
}

// Element (j, c) of a token-major dense block, as f32 (kFp8 without its token scale).
inline float dense_at(const KvBlock& b, int j, int c) {
  const uint8_t* row = b.data + j * b.stride;
  switch (b.format) {
    case KvFormat::kF32: {
      float v;
      std::memcpy(&v, row + 4 * c, 4);
      return v;
    }
    case KvFormat::kF16: {
      uint16_t h;
      std::memcpy(&h, row + 2 * c, 2);
      return f16_to_f32(h);
    }
    case KvFormat::kBF16: {
      uint16_t h;
      std::memcpy(&h, row + 2 * c, 2);
      return bf16_to_f32(h);
    }
    default:
      return kE4m3[row[c]];
  }
}

// ---------------------------------------------------------------------------------------------
// Scalar

void scores_scalar(const KvBlock& k, const float* q, int rows, float* s) {
  const int n = k.n, d = k.d;
  for (int r = 0; r < rows; ++r) {
    const float* qr = q + int64_t(r) * d;
    float* sr = s + int64_t(r) * n;
    switch (k.format) {
      case KvFormat::kIntToken: {
        const int groups = d / k.group;
        for (int j = 0; j < n; ++j) {
          const uint8_t* codes = k.data + j * k.stride;
          float sum = 0.0f;
          for (int g = 0; g < groups; ++g) {
            float dot = 0.0f, qsum = 0.0f;
            for (int c = g * k.group; c < (g + 1) * k.group; ++c) {
              dot += qr[c] * float(code_at(codes, c, k.bits));
              qsum += qr[c];
            }
            sum += dot * f16_to_f32(k.scale[j * groups + g]) + qsum * f16_to_f32(k.zero[j * groups + g]);
          }
          sr[j] = sum;
        }
        break;
      }
      case KvFormat::kIntChannel: {
        float zterm = 0.0f;
        for (int c = 0; c < d; ++c) zterm += qr[c] * f16_to_f32(k.zero[c]);
        for (int j = 0; j < n; ++j) {
          float sum = 0.0f;
          for (int c = 0; c < d; ++c) {
            sum += (qr[c] * f16_to_f32(k.scale[c])) * float(code_at(k.data + c * k.stride, j, k.bits));
          }
          sr[j] = sum + zterm;
        }
        break;
      }
      default: {
        for (int j = 0; j < n; ++j) {
          float sum = 0.0f;
          for (int c = 0; c < d; ++c) sum += qr[c] * dense_at(k, j, c);
          sr[j] = k.format == KvFormat::kFp8 ? sum * f16_to_f32(k.scale[j]) : sum;
        }
        break;
      }
    }
  }
}

void accumulate_scalar(const KvBlock& v, const float* p, int rows, float* acc) {
  const int n = v.n, d = v.d;
  for (int r = 0; r < rows; ++r) {
    const float* pr = p + int64_t(r) * n;
    float* a = acc + int64_t(r) * d;
    switch (v.format) {
      case KvFormat::kIntToken: {
        const int groups = d / v.group;
        for (int g = 0; g < groups; ++g) {
          float zsum = 0.0f;
          for (int j = 0; j < n; ++j) {
            const float pj = pr[j] * f16_to_f32(v.scale[j * groups + g]);
            const uint8_t* codes = v.data + j * v.stride;
            for (int c = g * v.group; c < (g + 1) * v.group; ++c) a[c] += pj * float(code_at(codes, c, v.bits));
            zsum += pr[j] * f16_to_f32(v.zero[j * groups + g]);
          }
          for (int c = g * v.group; c < (g + 1) * v.group; ++c) a[c] += zsum;
        }
        break;
      }
      case KvFormat::kIntChannel: {
        float psum = 0.0f;
        for (int j = 0; j < n; ++j) psum += pr[j];
        for (int c = 0; c < d; ++c) {
          float dot = 0.0f;
          for (int j = 0; j < n; ++j) dot += pr[j] * float(code_at(v.data + c * v.stride, j, v.bits));
          a[c] += dot * f16_to_f32(v.scale[c]) + psum * f16_to_f32(v.zero[c]);
        }
        break;
      }
      default: {
        for (int j = 0; j < n; ++j) {
          const float pj = v.format == KvFormat::kFp8 ? pr[j] * f16_to_f32(v.scale[j]) : pr[j];
          for (int c = 0; c < d; ++c) a[c] += pj * dense_at(v, j, c);
        }
        break;
      }
    }
  }
}

}  // namespace

void kv_scores_isa(Isa isa, const KvBlock& k, const float* q, int rows, float* s) {
  KVLAB_CHECK(int(isa) <= int(detected_isa()));
  scores_scalar(k, q, rows, s);
}

void kv_accumulate_isa(Isa isa, const KvBlock& v, const float* p, int rows, float* acc) {
  KVLAB_CHECK(int(isa) <= int(detected_isa()));
  accumulate_scalar(v, p, rows, acc);
}

void kv_scores(const KvBlock& k, const float* q, int rows, float* s) {
  kv_scores_isa(active_isa(), k, q, rows, s);
}

void kv_accumulate(const KvBlock& v, const float* p, int rows, float* acc) {
  kv_accumulate_isa(active_isa(), v, p, rows, acc);
}

}  // namespace kvlab
