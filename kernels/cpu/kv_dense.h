// Scores and value accumulation over the dense formats (kF32, kF16, kBF16, kFp8), written once
// over the vector width V (simd_vec.h). Included only by isa_avx2.cc and isa_avx512.cc, each
// under its ISA's #pragma GCC target; everything here is local to the including file.
//
// Order of operations (batch invariance: one fixed sequence per output and ISA; the row chunk or
// tile an output lands in only decides which independent outputs run side by side):
//   scores      one kLanes-wide fma accumulator per (row, token) over the channels (tail lanes
//               0), then V::hsums' fixed lane tree; fp8: times (scale * 256) at the end.
//   accumulate  acc[r, c] = fma(p[r, j] (fp8: * (scale[j] * 256)), V(j, c), acc[r, c]) for j
//               ascending, in registers over tiles of 4 rows x kTile vectors of channels.
#pragma once

#include "kernels/cpu/kv_kernels_internal.h"
#include "kernels/cpu/simd_vec.h"

namespace kvlab {
namespace {

// ---- scores: tiles of R rows x T consecutive tokens, one accumulator per (row, token) ---------
// `ahead` (or null): the block after this one; the tile asks for the same rows of it.

template <class V, KvFormat Fmt, int R, int T, bool kNan = false>
void dense_scores_tile(const uint8_t* data, int64_t stride, const uint16_t* scale, int j0, const float* q, int d,
                       float* s, int n, const uint8_t* ahead) {
  using F = typename V::F;
  if (ahead) {
    KVLAB_UNROLL
    for (int t = 0; t < T; ++t) {
      for (int64_t o = 0; o < int64_t(d) * element_bytes(Fmt); o += 64) {
        __builtin_prefetch(ahead + (j0 + t) * stride + o, 0, 2);
      }
    }
  }
  F acc[R * T];
  KVLAB_UNROLL
  for (int i = 0; i < R * T; ++i) acc[i] = V::zero();
  const uint8_t* rows[T];
  KVLAB_UNROLL
  for (int t = 0; t < T; ++t) rows[t] = data + (j0 + t) * stride;
  for (int c = 0; c < d; c += V::kLanes) {
    const typename V::Tail m = V::tail(d - c);
    F kv[T];
    KVLAB_UNROLL
    for (int t = 0; t < T; ++t) kv[t] = V::template load_dense<Fmt, kNan>(rows[t], c, m);
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      F qv = V::load(q + r * d + c, m);
      if constexpr (T > 1) V::keep(qv);
      KVLAB_UNROLL
      for (int t = 0; t < T; ++t) acc[r * T + t] = V::fma(qv, kv[t], acc[r * T + t]);
    }
  }
  float out[R * T];
  V::hsums(acc, out);
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int t = 0; t < T; ++t) {
      float v = out[r * T + t];
      if constexpr (Fmt == KvFormat::kFp8) v *= V::h2f(scale[j0 + t]) * kE4m3Unscale;
      s[r * n + j0 + t] = v;
    }
  }
}

template <class V, KvFormat Fmt, int R, bool kNan>
void dense_scores_rows(const uint8_t* data, int64_t stride, const uint16_t* scale, int n, const float* q, int d,
                       float* s, const uint8_t* ahead) {
  constexpr int T = V::kTile;
  int j = 0;
  for (; j + T <= n; j += T) dense_scores_tile<V, Fmt, R, T, kNan>(data, stride, scale, j, q, d, s, n, ahead);
  if (j < n) {
    with_rows(n - j, [&]<int N>() {
      if constexpr (N < T) dense_scores_tile<V, Fmt, R, N, kNan>(data, stride, scale, j, q, d, s, n, ahead);
    });
  }
}

// Scores of `rows` rows against n token-major rows at data (stride bytes apart). The block after
// it is read ahead once, with the first chunk of rows. fp8 blocks with NaN codes (rare: only a
// NaN input makes one) take the decoding that keeps them NaN.
template <class V, KvFormat Fmt, bool kNan = false>
void dense_scores(const uint8_t* data, int64_t stride, const uint16_t* scale, int n, int d, const float* q,
                  int rows, float* s) {
  if constexpr (Fmt == KvFormat::kFp8 && !kNan) {
    if (V::any_e4m3_nan(data, stride, n, d)) return dense_scores<V, Fmt, true>(data, stride, scale, n, d, q, rows, s);
  }
  const ReadAhead ah = read_ahead(data, int64_t(n) * stride);
  if (Fmt == KvFormat::kFp8) read_ahead_meta(scale, nullptr, 2 * int64_t(n));
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const float* qr = q + int64_t(r0) * d;
    float* sr = s + int64_t(r0) * n;
    const uint8_t* next = r0 == 0 ? ah.p : nullptr;
    with_rows(rows - r0, [&]<int R>() { dense_scores_rows<V, Fmt, R, kNan>(data, stride, scale, n, qr, d, sr, next); });
  }
}

// ---- accumulate: tiles of R rows x C vectors of channels, the tokens streaming past ------------

// Channels c0 .. c0 + C * kLanes - 1 (clipped to d) of R accumulator rows (d apart): their tails
// and values.
template <class V, int R, int C>
inline void load_acc_tile(const float* acc, int d, int c0, typename V::Tail (&m)[C], typename V::F (&a)[R][C]) {
  KVLAB_UNROLL
  for (int c = 0; c < C; ++c) m[c] = V::tail(d - c0 - V::kLanes * c);
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int c = 0; c < C; ++c) a[r][c] = V::load(acc + r * d + c0 + V::kLanes * c, m[c]);
  }
}

template <class V, KvFormat Fmt, int R, int C, bool kNan>
void dense_acc_tile(const KvBlock& v, const float* p, int c0, float* acc, const uint8_t* ahead) {
  using F = typename V::F;
  constexpr int L = V::kLanes;
  const int n = v.n, d = v.d;
  typename V::Tail m[C];
  F a[R][C];
  load_acc_tile<V, R, C>(acc, d, c0, m, a);
  for (int j = 0; j < n; ++j) {
    const uint8_t* row = v.data + j * v.stride;
    if (ahead) {
      for (int64_t o = 0; o < L * C * element_bytes(Fmt); o += 64) {
        __builtin_prefetch(ahead + j * v.stride + c0 * element_bytes(Fmt) + o, 0, 2);
      }
    }
    F vv[C];
    KVLAB_UNROLL
    for (int c = 0; c < C; ++c) vv[c] = V::template load_dense<Fmt, kNan>(row, c0 + L * c, m[c]);
    const float sc = Fmt == KvFormat::kFp8 ? V::h2f(v.scale[j]) * kE4m3Unscale : 1.0f;
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const float pj = Fmt == KvFormat::kFp8 ? p[r * n + j] * sc : p[r * n + j];
      const F pb = V::set1(pj);
      KVLAB_UNROLL
      for (int c = 0; c < C; ++c) a[r][c] = V::fma(pb, vv[c], a[r][c]);
    }
  }
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int c = 0; c < C; ++c) V::store(acc + r * d + c0 + L * c, m[c], a[r][c]);
  }
}

template <class V, KvFormat Fmt, bool kNan = false>
void dense_acc(const KvBlock& v, const float* p, int rows, float* acc) {
  if constexpr (Fmt == KvFormat::kFp8 && !kNan) {
    if (V::any_e4m3_nan(v.data, v.stride, v.n, v.d)) return dense_acc<V, Fmt, true>(v, p, rows, acc);
  }
  constexpr int W = V::kLanes * V::kTile;  // channels per tile
  const ReadAhead ah = read_ahead(v.data, int64_t(v.n) * v.stride);
  if (Fmt == KvFormat::kFp8) read_ahead_meta(v.scale, nullptr, 2 * int64_t(v.n));
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const float* pr = p + int64_t(r0) * v.n;
    float* ar = acc + int64_t(r0) * v.d;
    const uint8_t* ahead = r0 == 0 ? ah.p : nullptr;
    with_rows(rows - r0, [&]<int R>() {
      for (int c0 = 0; c0 < v.d; c0 += W) {
        with_rows((std::min(W, v.d - c0) + V::kLanes - 1) / V::kLanes, [&]<int C>() {
          if constexpr (C <= V::kTile) dense_acc_tile<V, Fmt, R, C, kNan>(v, pr, c0, ar, ahead);
        });
      }
    });
  }
}

}  // namespace
}  // namespace kvlab
