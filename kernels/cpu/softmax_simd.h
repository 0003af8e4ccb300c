// exp and the online-softmax step (softmax.h) written once over the vector width V
// (simd_vec.h): the algorithm and its constants are stated in softmax.cc, whose scalar code is
// the reference. Included by softmax.cc for the constants and by isa_avx2.cc / isa_avx512.cc,
// under their #pragma GCC target, for the kernels.
#pragma once

#include <cstdint>
#include <limits>

#include "kernels/cpu/kv_kernels_internal.h"
#include "kernels/cpu/simd_vec.h"

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
// Arguments from here up to 0 have normal results whose 2^k scaling can go straight into the
// exponent field (k >= -125), with no clamp needed: exp_vecs<kInRange>.
constexpr float kInRangeLo = -86.5f;

#ifdef KVLAB_X86
// exp of K independent vectors, each step taken for all K before the next: the ~20-deep
// dependent chain of one vector leaves the FMA pipes idle unless several chains sit side by side
// in the instruction stream (the scheduler does not look far enough ahead to overlap them across
// loop iterations: one vector at a time ran at ~16 cycles per 8 lanes on Zen 4). Every lane gets
// the same operations for any K. kInRange: every x is NaN or in [kInRangeLo, 0], where the clamps
// change nothing and mul_pow2_normal gives mul_pow2's bits in fewer steps (AVX2: 3 instead of
// 9): the same results.
template <class V, int K, bool kInRange = false>
void exp_vecs(typename V::F (&x)[K]) {
  using F = typename V::F;
  const F magic = V::set1(kRoundMagic);
  F kf[K], r[K], p[K];
  KVLAB_UNROLL
  for (int i = 0; i < K; ++i) {
    // max/min return their second operand when either is NaN: x in second place keeps NaN.
    if (!kInRange) x[i] = V::min(V::set1(kClampHi), V::max(V::set1(kClampLo), x[i]));
    kf[i] = V::sub(V::fma(x[i], V::set1(kLog2e), magic), magic);
  }
  KVLAB_UNROLL
  for (int i = 0; i < K; ++i) r[i] = V::fnma(kf[i], V::set1(kLn2Lo), V::fnma(kf[i], V::set1(kLn2Hi), x[i]));
  KVLAB_UNROLL
  for (int i = 0; i < K; ++i) p[i] = V::fma(V::set1(kC6), r[i], V::set1(kC5));
  KVLAB_UNROLL
  for (int i = 0; i < K; ++i) p[i] = V::fma(p[i], r[i], V::set1(kC4));
  KVLAB_UNROLL
  for (int i = 0; i < K; ++i) p[i] = V::fma(p[i], r[i], V::set1(kC3));
  KVLAB_UNROLL
  for (int i = 0; i < K; ++i) p[i] = V::fma(p[i], r[i], V::set1(kC2));
  KVLAB_UNROLL
  for (int i = 0; i < K; ++i) p[i] = V::fma(p[i], r[i], V::set1(1.0f));
  KVLAB_UNROLL
  for (int i = 0; i < K; ++i) {
    p[i] = V::fma(p[i], r[i], V::set1(1.0f));
    x[i] = kInRange ? V::mul_pow2_normal(p[i], kf[i]) : V::mul_pow2(p[i], kf[i]);
  }
}

template <class V>
typename V::F exp_vec(typename V::F x) {
  typename V::F v[1] = {x};
  exp_vecs<V, 1>(v);
  return v[0];
}

template <class V>
void exp_n(float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += V::kLanes) {
    const typename V::Tail m = V::tail(int(std::min<int64_t>(n - i, V::kLanes)));
    V::store(x + i, m, exp_vec<V>(V::load(x + i, m)));
  }
}

template <class V>
float exp1(float x) {
  alignas(64) float out[V::kLanes];
  V::store(out, exp_vec<V>(V::set1(x)));
  return out[0];
}

// Rows are taken four at a time with their passes interleaved (independent work for the
// out-of-order core); each row's own sequence of operations is that of a row alone.
template <class V, int R>
void online_softmax_rows(float* s, int n, const int32_t* key_pos, int32_t first_pos, const int32_t* row_pos, float* m,
                         float* l, float* acc, int d) {
  using F = typename V::F;
  using Tail = typename V::Tail;
  constexpr int L = V::kLanes;
  // The keys of lanes j .. j + L - 1 that row r sees.
  auto visible = [&](Tail in, int j, int r) {
    return row_pos ? V::at_or_before(in, key_pos, first_pos, j, row_pos[r]) : V::lanes(in);
  };
  F mv[R], lo[R];  // max and min of the visible scores, NaN ignored
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) mv[r] = V::set1(kNegInf), lo[r] = V::set1(-kNegInf);
  for (int j = 0; j < n; j += L) {
    const Tail in = V::tail(n - j);
    const bool all = row_pos == nullptr && n - j >= L;  // every lane a visible key
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const F x = V::load(s + int64_t(r) * n + j, in);
      mv[r] = all ? V::max(x, mv[r]) : V::max_in(mv[r], visible(in, j, r), x);
      lo[r] = all ? V::min(x, lo[r]) : V::min_in(lo[r], visible(in, j, r), x);
    }
  }
  bool live[R], in_range = true;
  F mn[R], sum[R];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    const float mb = V::hmax(mv[r]);
    const float m_new = mb > m[r] ? mb : m[r];
    live[r] = m_new != kNegInf;
    mn[r] = sum[r] = V::zero();
    if (!live[r]) {
      for (int j = 0; j < n; ++j) s[int64_t(r) * n + j] = 0.0f;
      continue;
    }
    if (m_new > m[r]) {
      const float f = exp1<V>(m[r] - m_new);
      l[r] *= f;
      float* a = acc + int64_t(r) * d;
      for (int c = 0; c < d; c += L) {
        const Tail cm = V::tail(d - c);
        V::store(a + c, cm, V::mul(V::load(a + c, cm), V::set1(f)));
      }
      m[r] = m_new;
    }
    mn[r] = V::set1(m[r]);
    in_range = in_range && V::hmin(lo[r]) - m[r] >= kInRangeLo;  // the visible s - m, rounded alike
  }
  // U vectors of every row per step, their exps side by side (exp_vecs), stored and summed in
  // order of j: the operations of each lane and each row's sum are those of one vector at a time.
  // When every live row's visible s - m lies in [kInRangeLo, 0] (the usual block), all take the
  // shorter exp; a lane a row does not see may hold anything there, and is zeroed after.
  auto exp_step = [&]<int U, bool kInRange>(int j) {
    F x[R * U];
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      KVLAB_UNROLL
      for (int u = 0; u < U; ++u) x[r * U + u] = V::sub(V::load(s + int64_t(r) * n + j + u * L, V::tail(n - j - u * L)), mn[r]);
    }
    exp_vecs<V, R * U, kInRange>(x);
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      if (!live[r]) continue;
      KVLAB_UNROLL
      for (int u = 0; u < U; ++u) {
        const int ju = j + u * L;
        const Tail in = V::tail(n - ju);
        F e = x[r * U + u];
        if (row_pos != nullptr || n - ju < L) e = V::zero_outside(visible(in, ju, r), e);
        V::store(s + int64_t(r) * n + ju, in, e);
        sum[r] = V::add(sum[r], e);
      }
    }
  };
  constexpr int kU = R >= 3 ? 2 : 8 / R;  // 6 or 8 vectors in flight
  auto exp_pass = [&]<bool kInRange>() {
    int j = 0;
    for (; j + kU * L <= n; j += kU * L) exp_step.template operator()<kU, kInRange>(j);
    for (; j < n; j += L) exp_step.template operator()<1, kInRange>(j);
  };
  if (in_range) {
    exp_pass.template operator()<true>();
  } else {
    exp_pass.template operator()<false>();
  }
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    if (live[r]) l[r] += V::hsum(sum[r]);
  }
}

template <class V>
void online_softmax(float* s, int rows, int n, const int32_t* key_pos, int32_t first_pos, const int32_t* row_pos,
                    float* m, float* l, float* acc, int d) {
  for (int r0 = 0; r0 < rows; r0 += 4) {
    float* sr = s + int64_t(r0) * n;
    float* ar = acc + int64_t(r0) * d;
    const int32_t* rp = row_pos ? row_pos + r0 : nullptr;
    with_rows(rows - r0, [&]<int R>() { online_softmax_rows<V, R>(sr, n, key_pos, first_pos, rp, m + r0, l + r0, ar, d); });
  }
}
#endif  // KVLAB_X86

}  // namespace
}  // namespace kvlab
