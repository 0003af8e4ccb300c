// exp and the online-softmax step (see softmax.h): the scalar reference here, AVX2 and AVX-512
// from one source over the vector width (softmax_simd.h), one algorithm.
//
// exp(x), the same steps on every ISA (the vector paths fuse the multiply-adds, the scalar one
// rounds products and sums separately, so results differ by about an ulp between ISAs):
//
//   1. NaN stays NaN; x is clamped to [-104, 89] (exp is 0 below -103.97 and overflows above
//      88.73 either way, and the clamp keeps k below in range).
//   2. k = round-to-nearest-even(x * log2(e)), by adding and subtracting 1.5 * 2^23.
//   3. r = (x - k * ln2_hi) - k * ln2_lo, |r| <= ln2 / 2 + 2^-14: ln2_hi has 9 significant bits,
//      so k * ln2_hi and x - k * ln2_hi are exact (Cody-Waite reduction).
//   4. p = 1 + r + c2 r^2 + ... + c6 r^6 by Horner: a degree-6 polynomial fitted for minimax
//      relative error on [-0.3468, 0.3468] (3.1e-9 = 0.03 ulp with the f32 coefficients below,
//      far under the rounding of the Horner steps themselves).
//   5. exp(x) = p * 2^k1 * 2^k2 with k1 = floor(k / 2), k2 = k - k1: both powers are normal
//      floats built from exponent bits, the first product is exact, and the second rounds once,
//      straight into the subnormal range or to infinity as IEEE says (k spans [-150, 129]).
//
// Measured over every 61st float in [-104, 89] (tests/softmax_test.cc): max error 0.90 ulp with
// AVX-512 and AVX2, 1.14 ulp scalar (no fused multiply-adds); exp(0) = 1 exactly; results below
// -87.34 are subnormals (one rounding, like any other result).
//
// online_softmax_block per row: max over the visible scores (exact in any order), then one pass
// writing exp(s - m_new) (0 where hidden) and summing them: 16 (AVX-512), 8 (AVX2) or 1 (scalar)
// partial sums stepping through the row, then a fixed tree over the lanes (i + i/2-offset, ...),
// then l = l * f + sum. Every row is computed alone, so results never depend on `rows`.
#include "kernels/cpu/softmax.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "base/check.h"
#include "base/half.h"
#include "kernels/cpu/kv_kernels_internal.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/softmax_simd.h"

namespace kvlab {
namespace {

// ---------------------------------------------------------------------------------------------
// Scalar

inline float pow2i(int e) { return f32_from_bits(uint32_t(e + 127) << 23); }

float exp_scalar_one(float x) {
  if (x != x) return x;
  x = x < kClampLo ? kClampLo : (x > kClampHi ? kClampHi : x);
  const float kf = (x * kLog2e + kRoundMagic) - kRoundMagic;
  float r = x - kf * kLn2Hi;
  r = r - kf * kLn2Lo;
  float p = kC6;
  p = p * r + kC5;
  p = p * r + kC4;
  p = p * r + kC3;
  p = p * r + kC2;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int k = int(kf);
  const int k1 = k >> 1;  // floor(k / 2): arithmetic shift
  return p * pow2i(k1) * pow2i(k - k1);
}

void exp_scalar(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = exp_scalar_one(x[i]);
}

// Key j is visible to a row at position `row_pos` (row_pos_null: all visible).
inline bool visible(const int32_t* key_pos, int32_t first_pos, int j, const int32_t* row_pos, int r) {
  if (row_pos == nullptr) return true;
  return (key_pos ? key_pos[j] : first_pos + j) <= row_pos[r];
}

void online_softmax_scalar(float* s, int rows, int n, const int32_t* key_pos, int32_t first_pos,
                           const int32_t* row_pos, float* m, float* l, float* acc, int d) {
  for (int r = 0; r < rows; ++r) {
    float* sr = s + int64_t(r) * n;
    float mb = kNegInf;
    for (int j = 0; j < n; ++j) {
      if (visible(key_pos, first_pos, j, row_pos, r) && sr[j] > mb) mb = sr[j];
    }
    const float m_new = mb > m[r] ? mb : m[r];
    if (m_new == kNegInf) {  // nothing visible (or only -inf scores): the row is unchanged
      for (int j = 0; j < n; ++j) sr[j] = 0.0f;
      continue;
    }
    if (m_new > m[r]) {
      const float f = exp_scalar_one(m[r] - m_new);  // 0 when m was -inf
      l[r] *= f;
      float* a = acc + int64_t(r) * d;
      for (int c = 0; c < d; ++c) a[c] *= f;
      m[r] = m_new;
    }
    float sum = 0.0f;
    for (int j = 0; j < n; ++j) {
      sr[j] = visible(key_pos, first_pos, j, row_pos, r) ? exp_scalar_one(sr[j] - m[r]) : 0.0f;
      sum += sr[j];
    }
    l[r] += sum;
  }
}


}  // namespace

void exp_inplace_isa(Isa isa, float* x, int64_t n) {
  KVLAB_CHECK(int(isa) <= int(detected_isa()));
#ifdef KVLAB_X86
  if (isa == Isa::kAvx512) return avx512::exp_n(x, n);
  if (isa == Isa::kAvx2) return avx2::exp_n(x, n);
#endif
  exp_scalar(x, n);
}

void exp_inplace(float* x, int64_t n) { exp_inplace_isa(active_isa(), x, n); }

void online_softmax_block_isa(Isa isa, float* s, int rows, int n, const int32_t* key_pos,
                              int32_t first_pos, const int32_t* row_pos, float* m, float* l,
                              float* acc, int d) {
  KVLAB_CHECK(int(isa) <= int(detected_isa()));
#ifdef KVLAB_X86
  if (isa == Isa::kAvx512) return avx512::online_softmax(s, rows, n, key_pos, first_pos, row_pos, m, l, acc, d);
  if (isa == Isa::kAvx2) return avx2::online_softmax(s, rows, n, key_pos, first_pos, row_pos, m, l, acc, d);
#endif
  online_softmax_scalar(s, rows, n, key_pos, first_pos, row_pos, m, l, acc, d);
}

void online_softmax_block(float* s, int rows, int n, const int32_t* key_pos, int32_t first_pos,
                          const int32_t* row_pos, float* m, float* l, float* acc, int d) {
  online_softmax_block_isa(active_isa(), s, rows, n, key_pos, first_pos, row_pos, m, l, acc, d);
}

}  // namespace kvlab
