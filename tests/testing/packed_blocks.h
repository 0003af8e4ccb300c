// Packed K/V blocks for the kernel tests (CPU and GPU): a deterministic generator, blocks packed
// by the library's writers with padded strides, and an independent double-precision reader of
// kernels/cpu/kv_format.h with the f32 rounding budget the fused readers are held to.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "base/half.h"
#include "kernels/cpu/kv_format.h"
#include "kernels/cpu/kv_quantize.h"
#include "tests/testing/rng.h"

namespace kvlab::testing {

inline constexpr double kU = 1.0 / 16777216.0;  // unit roundoff of f32, 2^-24

// ---------------------------------------------------------------------------------------------
// A writer and a reference reader of kv_format.h, independent of the library's.

inline double e4m3_ref(uint8_t b) {
  const int e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7) return std::numeric_limits<double>::quiet_NaN();
  const double v = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return (b & 0x80) ? -v : v;
}

inline uint32_t read_code(const uint8_t* p, int64_t i, int bits) {
  uint32_t v = 0;
  for (int b = 0; b < bits; ++b) {
    const int64_t bit = i * bits + b;
    v |= uint32_t((p[bit / 8] >> (bit % 8)) & 1) << b;
  }
  return v;
}

struct Format {
  KvFormat format;
  int bits = 0;
  int group = 0;  // kIntToken: channels per group, 0 means d; kIntChannel: tokens per group, 0 means n
};

inline std::string format_name(const Format& f) {
  static const char* names[] = {"f32", "f16", "bf16", "fp8", "int_token", "int_channel"};
  std::string s = names[int(f.format)];
  if (f.bits) s += "_b" + std::to_string(f.bits);
  if (f.group) s += "_g" + std::to_string(f.group);
  return s;
}

// A packed block that owns its bytes; rows are `pad` bytes longer than needed so that the kernels
// must honour the stride.
struct Packed {
  KvBlock block;
  std::vector<uint8_t> data;
  std::vector<uint16_t> scale, zero;
};

inline Packed pack(const Format& f, const float* x, int n, int d, int pad = 3) {
  Packed p;
  KvBlock& b = p.block;
  b.format = f.format;
  b.n = n;
  b.d = d;
  b.bits = f.bits;
  b.group = f.format == KvFormat::kIntToken ? (f.group ? f.group : d) : f.group;
  const bool channels = f.format == KvFormat::kIntChannel;
  b.stride = (channels ? packed_bytes(n, f.bits)
                       : f.format == KvFormat::kIntToken ? packed_bytes(d, f.bits) : element_bytes(f.format) * d) + pad;
  p.data.assign(size_t(b.stride) * (channels ? d : n), 0xa5);
  p.scale.resize(size_t(block_scales(b)));
  p.zero.resize(f.format == KvFormat::kIntToken || channels ? p.scale.size() : 0);
  quantize_block(b, x, d, p.data.data(), p.scale.data(), p.zero.empty() ? nullptr : p.zero.data());
  b.data = p.data.data();
  b.scale = p.scale.empty() ? nullptr : p.scale.data();
  b.zero = p.zero.empty() ? nullptr : p.zero.data();
  return p;
}

// Element (j, c) as the spec defines it, split into the two terms the kernels may sum separately
// (code * scale and zero; dense formats have zero = 0). Exact in double.
struct Terms {
  double main, zero;
};
inline Terms ref_terms(const KvBlock& b, int j, int c) {
  switch (b.format) {
    case KvFormat::kF32: {
      float v;
      std::memcpy(&v, b.data + j * b.stride + 4 * c, 4);
      return {v, 0};
    }
    case KvFormat::kF16:
    case KvFormat::kBF16: {
      uint16_t h;
      std::memcpy(&h, b.data + j * b.stride + 2 * c, 2);
      return {b.format == KvFormat::kF16 ? f16_to_f32(h) : bf16_to_f32(h), 0};
    }
    case KvFormat::kFp8:
      return {e4m3_ref(b.data[j * b.stride + c]) * f16_to_f32(b.scale[j]), 0};
    case KvFormat::kIntToken: {
      const int g = j * (b.d / b.group) + c / b.group;
      return {read_code(b.data + j * b.stride, c, b.bits) * double(f16_to_f32(b.scale[g])),
              f16_to_f32(b.zero[g])};
    }
    case KvFormat::kIntChannel: {
      const int e = j / channel_group_tokens(b) * b.d + c;
      return {read_code(b.data + c * b.stride, j, b.bits) * double(f16_to_f32(b.scale[e])), f16_to_f32(b.zero[e])};
    }
  }
  return {0, 0};
}

inline double value(const KvBlock& b, int j, int c) {
  const Terms t = ref_terms(b, j, c);
  return t.main + t.zero;
}

// The f32 rounding budget of a fused sum of `len` products of up to three factors, read in any
// order: each product is rounded at most twice and each addition once, so the error is at most
// gamma(len + 4) * (sum of |terms|), gamma(k) = k u / (1 - k u) (Higham, Accuracy and Stability of
// Numerical Algorithms, 2nd ed., section 3.1). The folded kernels sum code * scale and zero
// separately, so the |terms| count both.
inline double f32_budget(int len, double abs_terms) {
  const double k = len + 4;
  return k * kU / (1 - k * kU) * abs_terms;
}

inline std::vector<Format> all_formats() {
  std::vector<Format> f = {{KvFormat::kF32}, {KvFormat::kF16}, {KvFormat::kBF16}, {KvFormat::kFp8}};
  for (int bits : {2, 3, 4, 8}) f.push_back({KvFormat::kIntChannel, bits});
  for (int bits : {2, 3, 4, 8}) f.push_back({KvFormat::kIntToken, bits, 0});
  return f;
}

// Groups dividing d for kIntToken (0 = d), a few per head size; token groups for kIntChannel
// (0 = the whole block; 8 and 32: several groups in the longer blocks).
inline std::vector<int> groups_for(const Format& f, int d) {
  if (f.format == KvFormat::kIntChannel) return {0, 8, 32};
  if (f.format != KvFormat::kIntToken) return {0};
  std::vector<int> g = {0};
  for (int cand : {8, 32}) {
    if (cand < d && d % cand == 0) g.push_back(cand);
  }
  return g;
}

inline std::vector<float> random_matrix(Rng& rng, int rows, int cols, float amp = 1.0f) {
  std::vector<float> m(size_t(rows) * cols);
  for (float& v : m) v = amp * rng.uniform();
  return m;
}

// Keys and values with a per-channel offset and spread, as real K caches have (outlier channels).
inline std::vector<float> kv_like(Rng& rng, int n, int d) {
  std::vector<float> off(d), amp(d);
  for (int c = 0; c < d; ++c) off[c] = 0.5f * rng.uniform(), amp[c] = 0.2f + std::fabs(rng.uniform());
  if (d > 3) amp[d / 3] = 4.0f;
  std::vector<float> x(size_t(n) * d);
  for (int j = 0; j < n; ++j) {
    for (int c = 0; c < d; ++c) x[j * d + c] = off[c] + amp[c] * rng.uniform();
  }
  return x;
}

}  // namespace kvlab::testing
