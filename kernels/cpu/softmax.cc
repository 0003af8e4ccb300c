// exp and the online-softmax step (see softmax.h): scalar, AVX2 and AVX-512, one algorithm.
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
#include "kernels/cpu/simd.h"

namespace kvlab {
namespace {

constexpr float kLog2e = 0x1.715476p+0f;
constexpr float kLn2Hi = 0x1.63p-1f;        // 0.693359375
constexpr float kLn2Lo = -0x1.bd0106p-13f;  // ln 2 - kLn2Hi, rounded
constexpr float kRoundMagic = 0x1.8p+23f;   // 1.5 * 2^23
constexpr float kClampLo = -104.0f;
constexpr float kClampHi = 89.0f;
constexpr float kC2 = 0x1.fffffcp-2f, kC3 = 0x1.555492p-3f, kC4 = 0x1.5558b0p-5f,
                kC5 = 0x1.123988p-7f, kC6 = 0x1.6a4cb2p-10f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

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

#ifdef KVLAB_X86
// ---------------------------------------------------------------------------------------------
// AVX-512

KVLAB_TARGET_AVX512 inline __m512 exp_avx512(__m512 x) {
  // max/min return their second operand when either is NaN: x in second place keeps NaN.
  x = _mm512_max_ps(_mm512_set1_ps(kClampLo), x);
  x = _mm512_min_ps(_mm512_set1_ps(kClampHi), x);
  const __m512 magic = _mm512_set1_ps(kRoundMagic);
  const __m512 kf = _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(kLog2e), magic), magic);
  __m512 r = _mm512_fnmadd_ps(kf, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(kf, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kC6);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kC5));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kC4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kC3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kC2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  // p * 2^k with one rounding (vscalefps): the same result as the two exact-then-rounding
  // products of step 5.
  return _mm512_scalef_ps(p, kf);
}

KVLAB_TARGET_AVX512 void exp_avx512_n(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, exp_avx512(_mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(x + i, m, exp_avx512(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

KVLAB_TARGET_AVX512 float exp1_avx512(float x) {
  return _mm_cvtss_f32(_mm512_castps512_ps128(exp_avx512(_mm512_set1_ps(x))));
}

// Lanes of keys j0 .. j0+15 visible to row position `rp` (tail lanes beyond n off).
KVLAB_TARGET_AVX512 inline __mmask16 visible_avx512(const int32_t* key_pos, int32_t first_pos, int j0,
                                                    __mmask16 in_range, const int32_t* row_pos, int r) {
  if (row_pos == nullptr) return in_range;
  const __m512i kp =
      key_pos ? _mm512_maskz_loadu_epi32(in_range, key_pos + j0)
              : _mm512_add_epi32(_mm512_set1_epi32(first_pos + j0),
                                 _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  return _mm512_mask_cmple_epi32_mask(in_range, kp, _mm512_set1_epi32(row_pos[r]));
}

// Sum of the 16 lanes by the fixed tree: i + i+8, i + i+4, i + i+2, i + i+1.
KVLAB_TARGET_AVX512 inline float hsum_avx512(__m512 v) {
  __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
}

// Rows are taken four at a time with their passes interleaved (independent work for the
// out-of-order core); each row's own sequence of operations is that of a row alone.
template <int R>
KVLAB_TARGET_AVX512 void online_softmax_rows_avx512(float* s, int n, const int32_t* key_pos, int32_t first_pos,
                                                    const int32_t* row_pos, float* m, float* l, float* acc, int d) {
  __m512 mv[R];
  for (int r = 0; r < R; ++r) mv[r] = _mm512_set1_ps(kNegInf);
  for (int j = 0; j < n; j += 16) {
    const __mmask16 in = n - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - j)) - 1);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __mmask16 vis = visible_avx512(key_pos, first_pos, j, in, row_pos, r);
      mv[r] = _mm512_mask_max_ps(mv[r], vis, _mm512_maskz_loadu_ps(vis, s + int64_t(r) * n + j), mv[r]);  // NaN ignored
    }
  }
  bool live[R];
  __m512 mn[R], sum[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    const float mb = _mm512_reduce_max_ps(mv[r]);
    const float m_new = mb > m[r] ? mb : m[r];
    live[r] = m_new != kNegInf;
    if (!live[r]) {
      for (int j = 0; j < n; ++j) s[int64_t(r) * n + j] = 0.0f;
      continue;
    }
    if (m_new > m[r]) {
      const float f = exp1_avx512(m[r] - m_new);
      l[r] *= f;
      float* a = acc + int64_t(r) * d;
      const __m512 fv = _mm512_set1_ps(f);
      for (int c = 0; c < d; c += 16) {
        const __mmask16 cm = d - c >= 16 ? __mmask16(0xffff) : __mmask16((1u << (d - c)) - 1);
        _mm512_mask_storeu_ps(a + c, cm, _mm512_mul_ps(_mm512_maskz_loadu_ps(cm, a + c), fv));
      }
      m[r] = m_new;
    }
    mn[r] = _mm512_set1_ps(m[r]);
    sum[r] = _mm512_setzero_ps();
  }
  for (int j = 0; j < n; j += 16) {
    const __mmask16 in = n - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - j)) - 1);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      if (!live[r]) continue;
      float* sr = s + int64_t(r) * n;
      const __mmask16 vis = visible_avx512(key_pos, first_pos, j, in, row_pos, r);
      const __m512 e = _mm512_maskz_mov_ps(vis, exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(in, sr + j), mn[r])));
      _mm512_mask_storeu_ps(sr + j, in, e);
      sum[r] = _mm512_add_ps(sum[r], e);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    if (live[r]) l[r] += hsum_avx512(sum[r]);
  }
}

KVLAB_TARGET_AVX512 void online_softmax_avx512(float* s, int rows, int n, const int32_t* key_pos,
                                               int32_t first_pos, const int32_t* row_pos, float* m,
                                               float* l, float* acc, int d) {
  for (int r0 = 0; r0 < rows; r0 += 4) {
    float* sr = s + int64_t(r0) * n;
    float* ar = acc + int64_t(r0) * d;
    const int32_t* rp = row_pos ? row_pos + r0 : nullptr;
    switch (rows - r0) {
      case 1: online_softmax_rows_avx512<1>(sr, n, key_pos, first_pos, rp, m + r0, l + r0, ar, d); break;
      case 2: online_softmax_rows_avx512<2>(sr, n, key_pos, first_pos, rp, m + r0, l + r0, ar, d); break;
      case 3: online_softmax_rows_avx512<3>(sr, n, key_pos, first_pos, rp, m + r0, l + r0, ar, d); break;
      default: online_softmax_rows_avx512<4>(sr, n, key_pos, first_pos, rp, m + r0, l + r0, ar, d); break;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// AVX2

KVLAB_TARGET_AVX2 inline __m256 exp_avx2(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(kClampLo), x);
  x = _mm256_min_ps(_mm256_set1_ps(kClampHi), x);
  const __m256 magic = _mm256_set1_ps(kRoundMagic);
  const __m256 kf = _mm256_sub_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(kLog2e), magic), magic);
  __m256 r = _mm256_fnmadd_ps(kf, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(kf, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kC6);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC5));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i k = _mm256_cvttps_epi32(kf);
  const __m256i k1 = _mm256_srai_epi32(k, 1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, bias), 23));
  const __m256 s2 =
      _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(k, k1), bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

KVLAB_TARGET_AVX2 inline __m256i tail_mask_avx2(int count) {  // lanes < count on
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

KVLAB_TARGET_AVX2 void exp_avx2_n(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, exp_avx2(_mm256_loadu_ps(x + i)));
  if (i < n) {
    const __m256i m = tail_mask_avx2(int(n - i));
    _mm256_maskstore_ps(x + i, m, exp_avx2(_mm256_maskload_ps(x + i, m)));
  }
}

KVLAB_TARGET_AVX2 float exp1_avx2(float x) {
  return _mm_cvtss_f32(_mm256_castps256_ps128(exp_avx2(_mm256_set1_ps(x))));
}

// All-ones lanes for keys j0 .. j0+7 below n and visible to row r.
KVLAB_TARGET_AVX2 inline __m256i visible_avx2(const int32_t* key_pos, int32_t first_pos, int j0, int n,
                                              const int32_t* row_pos, int r) {
  const __m256i in = tail_mask_avx2(n - j0);
  if (row_pos == nullptr) return in;
  const __m256i kp =
      key_pos ? _mm256_maskload_epi32(key_pos + j0, in)
              : _mm256_add_epi32(_mm256_set1_epi32(first_pos + j0), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  return _mm256_andnot_si256(_mm256_cmpgt_epi32(kp, _mm256_set1_epi32(row_pos[r])), in);
}

// Sum of the 8 lanes by the fixed tree: i + i+4, i + i+2, i + i+1.
KVLAB_TARGET_AVX2 inline float hsum_avx2(__m256 v) {
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
}

KVLAB_TARGET_AVX2 inline float hmax_avx2(__m256 v) {
  __m128 q = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  q = _mm_max_ps(q, _mm_movehl_ps(q, q));
  q = _mm_max_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
}

KVLAB_TARGET_AVX2 void online_softmax_avx2(float* s, int rows, int n, const int32_t* key_pos,
                                           int32_t first_pos, const int32_t* row_pos, float* m,
                                           float* l, float* acc, int d) {
  const __m256 neg_inf = _mm256_set1_ps(kNegInf);
  for (int r = 0; r < rows; ++r) {
    float* sr = s + int64_t(r) * n;
    __m256 mv = neg_inf;
    for (int j = 0; j < n; j += 8) {
      const __m256i vis = visible_avx2(key_pos, first_pos, j, n, row_pos, r);
      const __m256 v = _mm256_blendv_ps(neg_inf, _mm256_maskload_ps(sr + j, vis), _mm256_castsi256_ps(vis));
      mv = _mm256_max_ps(v, mv);  // NaN scores ignored
    }
    const float mb = hmax_avx2(mv);
    const float m_new = mb > m[r] ? mb : m[r];
    if (m_new == kNegInf) {
      for (int j = 0; j < n; ++j) sr[j] = 0.0f;
      continue;
    }
    if (m_new > m[r]) {
      const float f = exp1_avx2(m[r] - m_new);
      l[r] *= f;
      float* a = acc + int64_t(r) * d;
      const __m256 fv = _mm256_set1_ps(f);
      for (int c = 0; c < d; c += 8) {
        const __m256i cm = tail_mask_avx2(d - c);
        _mm256_maskstore_ps(a + c, cm, _mm256_mul_ps(_mm256_maskload_ps(a + c, cm), fv));
      }
      m[r] = m_new;
    }
    const __m256 mn = _mm256_set1_ps(m[r]);
    __m256 sum = _mm256_setzero_ps();
    for (int j = 0; j < n; j += 8) {
      const __m256i in = tail_mask_avx2(n - j);
      const __m256i vis = visible_avx2(key_pos, first_pos, j, n, row_pos, r);
      const __m256 e = _mm256_and_ps(_mm256_castsi256_ps(vis),
                                     exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(sr + j, in), mn)));
      _mm256_maskstore_ps(sr + j, in, e);
      sum = _mm256_add_ps(sum, e);
    }
    l[r] += hsum_avx2(sum);
  }
}
#endif  // KVLAB_X86

}  // namespace

void exp_inplace_isa(Isa isa, float* x, int64_t n) {
  KVLAB_CHECK(int(isa) <= int(detected_isa()));
#ifdef KVLAB_X86
  if (isa == Isa::kAvx512) return exp_avx512_n(x, n);
  if (isa == Isa::kAvx2) return exp_avx2_n(x, n);
#endif
  exp_scalar(x, n);
}

void exp_inplace(float* x, int64_t n) { exp_inplace_isa(active_isa(), x, n); }

void online_softmax_block_isa(Isa isa, float* s, int rows, int n, const int32_t* key_pos,
                              int32_t first_pos, const int32_t* row_pos, float* m, float* l,
                              float* acc, int d) {
  KVLAB_CHECK(int(isa) <= int(detected_isa()));
#ifdef KVLAB_X86
  if (isa == Isa::kAvx512) return online_softmax_avx512(s, rows, n, key_pos, first_pos, row_pos, m, l, acc, d);
  if (isa == Isa::kAvx2) return online_softmax_avx2(s, rows, n, key_pos, first_pos, row_pos, m, l, acc, d);
#endif
  online_softmax_scalar(s, rows, n, key_pos, first_pos, row_pos, m, l, acc, d);
}

void online_softmax_block(float* s, int rows, int n, const int32_t* key_pos, int32_t first_pos,
                          const int32_t* row_pos, float* m, float* l, float* acc, int d) {
  online_softmax_block_isa(active_isa(), s, rows, n, key_pos, first_pos, row_pos, m, l, acc, d);
}

}  // namespace kvlab
