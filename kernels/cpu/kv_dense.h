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

template <class V, KvFormat Fmt, int R, int T, bool kRaw>
void dense_scores_tile(const uint8_t* data, int64_t stride, const uint16_t* scale, int j0, const float* q, int d,
                       float* s, int n, const uint8_t* ahead) {
  using F = typename V::F;
  if (ahead) {
    KVLAB_UNROLL
    for (int t = 0; t < T; ++t) {
      for (int64_t o = 0; o < int64_t(d) * element_bytes(Fmt); o += 64) {
        read_line(ahead + (j0 + t) * stride + o);
      }
    }
  }
  F acc[R * T];
  KVLAB_UNROLL
  for (int i = 0; i < R * T; ++i) acc[i] = V::zero();
  const uint8_t* rows[T];
  KVLAB_UNROLL
  for (int t = 0; t < T; ++t) rows[t] = data + (j0 + t) * stride;
  // Whole vectors through a constant tail (plain loads, no mask built per step), then the rest.
  auto step = [&](int c, typename V::Tail m) __attribute__((always_inline)) {
    F kv[T];
    KVLAB_UNROLL
    for (int t = 0; t < T; ++t) kv[t] = V::template load_dense<Fmt, kRaw>(rows[t], c, m);
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      F qv = V::load(q + r * d + c, m);
      if constexpr (T > 1) V::keep(qv);
      KVLAB_UNROLL
      for (int t = 0; t < T; ++t) acc[r * T + t] = V::fma(qv, kv[t], acc[r * T + t]);
    }
  };
  int c = 0;
  for (; c + V::kLanes <= d; c += V::kLanes) step(c, V::tail(V::kLanes));
  if (c < d) step(c, V::tail(d - c));
  float out[R * T];
  V::hsums(acc, out);
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int t = 0; t < T; ++t) {
      float v = out[r * T + t];
      if constexpr (Fmt == KvFormat::kFp8) v *= kRaw ? V::h2f(scale[j0 + t]) : V::h2f(scale[j0 + t]) * kE4m3Unscale;
      s[r * n + j0 + t] = v;
    }
  }
}

template <class V, KvFormat Fmt, int R, bool kRaw>
void dense_scores_rows(const uint8_t* data, int64_t stride, const uint16_t* scale, int n, const float* q, int d,
                       float* s, const uint8_t* ahead) {
  constexpr int T = V::kTile;
  int j = 0;
  for (; j + T <= n; j += T) dense_scores_tile<V, Fmt, R, T, kRaw>(data, stride, scale, j, q, d, s, n, ahead);
  if (j < n) {
    with_rows(n - j, [&]<int N>() {
      if constexpr (N < T) dense_scores_tile<V, Fmt, R, N, kRaw>(data, stride, scale, j, q, d, s, n, ahead);
    });
  }
}

// fp8 blocks are read in the cheaper raw form (values times 2^-120, simd_vec.h) when no byte is
// a NaN code and the 2^120 can be folded into the other operand without overflow: the query
// (scores; |q| < 2^7) or p * scale (values; at most 2^7). Anything else (NaN codes: only a NaN
// input makes one; huge queries or scales) takes the form that is exact for every byte.
constexpr float kRawUnscale = 0x1p120f;
constexpr float kRawLimit = 128.0f;

// Whether an fp8 block holds no NaN code: its writer vouches for it (KvBlock::fp8_nan_free), or a
// scan of its bytes finds none.
template <class V>
bool fp8_nan_free(const KvBlock& b) {
  return b.fp8_nan_free || !V::any_e4m3_nan(b.data, b.stride, b.n, b.d);
}

template <class V>
float max_abs(const float* x, int64_t count) {
  typename V::F m = V::zero();
  for (int64_t i = 0; i < count; i += V::kLanes) {
    m = V::max(V::abs(V::load(x + i, V::tail(int(std::min<int64_t>(count - i, V::kLanes))))), m);
  }
  return V::hmax(m);
}

// Scores of `rows` rows against the n token-major rows of k. The block after it is read ahead
// once, with the first chunk of rows.
template <class V, KvFormat Fmt>
void dense_scores(const KvBlock& k, const float* q, int rows, float* s) {
  const uint8_t* data = k.data;
  const int64_t stride = k.stride;
  const uint16_t* scale = k.scale;
  const int n = k.n, d = k.d;
  const ReadAhead ah = read_ahead(k);
  if (Fmt == KvFormat::kFp8) read_ahead_meta(k);
  const bool raw = Fmt == KvFormat::kFp8 && fp8_nan_free<V>(k);
  alignas(64) float q_raw[Fmt == KvFormat::kFp8 ? 4 * kMaxSimdD : 1];  // a chunk's rows times 2^120
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const float* qr = q + int64_t(r0) * d;
    float* sr = s + int64_t(r0) * n;
    const uint8_t* next = r0 == 0 ? ah.p : nullptr;
    const int chunk = std::min(4, rows - r0);
    if constexpr (Fmt == KvFormat::kFp8) {
      if (raw && max_abs<V>(qr, int64_t(chunk) * d) < kRawLimit) {
        for (int i = 0; i < chunk * d; ++i) q_raw[i] = qr[i] * kRawUnscale;
        with_rows(chunk, [&]<int R>() { dense_scores_rows<V, Fmt, R, true>(data, stride, scale, n, q_raw, d, sr, next); });
        continue;
      }
    }
    with_rows(chunk, [&]<int R>() { dense_scores_rows<V, Fmt, R, false>(data, stride, scale, n, qr, d, sr, next); });
  }
}

// ---- accumulate: tiles of R rows x C vectors of channels, the tokens streaming past ------------

// Channels c0 .. c0 + C * kLanes - 1 (clipped to d) of R accumulator rows (d apart): their tails
// and values. kFull: the tile lies inside d, so the tails are constants (plain loads, no masks).
template <class V, int R, int C, bool kFull = false>
inline void load_acc_tile(const float* acc, int d, int c0, typename V::Tail (&m)[C], typename V::F (&a)[R][C]) {
  KVLAB_UNROLL
  for (int c = 0; c < C; ++c) m[c] = kFull ? V::tail(V::kLanes) : V::tail(d - c0 - V::kLanes * c);
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int c = 0; c < C; ++c) a[r][c] = V::load(acc + r * d + c0 + V::kLanes * c, m[c]);
  }
}

// p: R rows of n weights, row stride p_stride; for fp8 already multiplied by the tokens' scales
// (dense_acc).
template <class V, KvFormat Fmt, int R, int C, bool kRaw, bool kFull>
void dense_acc_tile(const KvBlock& v, const float* p, int64_t p_stride, int c0, float* acc, const uint8_t* ahead) {
  using F = typename V::F;
  constexpr int L = V::kLanes;
  const int n = v.n, d = v.d;
  typename V::Tail m[C];
  F a[R][C];
  load_acc_tile<V, R, C, kFull>(acc, d, c0, m, a);
  for (int j = 0; j < n; ++j) {
    const uint8_t* row = v.data + j * v.stride;
    if (ahead) {
      for (int64_t o = 0; o < L * C * element_bytes(Fmt); o += 64) {
        read_line(ahead + j * v.stride + c0 * element_bytes(Fmt) + o);
      }
    }
    F vv[C];
    KVLAB_UNROLL
    for (int c = 0; c < C; ++c) vv[c] = V::template load_dense<Fmt, kRaw>(row, c0 + L * c, m[c]);
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const F pb = V::set1(p[r * p_stride + j]);
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

// Every channel tile of rows [0, R) over the block's tokens.
template <class V, KvFormat Fmt, int R, bool kRaw>
void dense_acc_rows(const KvBlock& v, const float* p, int64_t p_stride, float* acc, const uint8_t* ahead) {
  constexpr int W = V::kLanes * V::kTile;  // channels per tile
  for (int c0 = 0; c0 < v.d; c0 += W) {
    if (c0 + W <= v.d) {
      dense_acc_tile<V, Fmt, R, V::kTile, kRaw, true>(v, p, p_stride, c0, acc, ahead);
      continue;
    }
    with_rows((v.d - c0 + V::kLanes - 1) / V::kLanes, [&]<int C>() {
      if constexpr (C <= V::kTile) dense_acc_tile<V, Fmt, R, C, kRaw, false>(v, p, p_stride, c0, acc, ahead);
    });
  }
}

// The largest f16 scale of a block's n tokens.
template <class V>
float max_scale(const uint16_t* scale, int n) {
  typename V::F m = V::zero();
  for (int j = 0; j < n; j += V::kLanes) m = V::max(V::abs(V::load_f16(scale + j, V::tail(n - j))), m);
  return V::hmax(m);
}

// fp8 weights of up to kFp8Span tokens at a time: pw[r, j] = p[r, j] * (scale[j] * 256), or, in
// the raw form, (p[r, j] * scale[j]) * 2^120: one rounding either way (the powers of 2 are
// exact), computed once for all the channel tiles.
constexpr int kFp8Span = 256;

template <class V, KvFormat Fmt>
void dense_acc(const KvBlock& v, const float* p, int rows, float* acc) {
  const ReadAhead ah = read_ahead(v);
  if constexpr (Fmt != KvFormat::kFp8) {
    for (int r0 = 0; r0 < rows; r0 += 4) {
      const uint8_t* ahead = r0 == 0 ? ah.p : nullptr;
      with_rows(rows - r0, [&]<int R>() {
        dense_acc_rows<V, Fmt, R, false>(v, p + int64_t(r0) * v.n, v.n, acc + int64_t(r0) * v.d, ahead);
      });
    }
  } else {
    read_ahead_meta(v);
    const bool raw = fp8_nan_free<V>(v);
    const float max_sc = raw ? max_scale<V>(v.scale, v.n) : 0.0f;
    alignas(64) float pw[4 * kFp8Span];
    for (int r0 = 0; r0 < rows; r0 += 4) {
      const float* pr = p + int64_t(r0) * v.n;
      float* ar = acc + int64_t(r0) * v.d;
      const int chunk = std::min(4, rows - r0);
      // A NaN p or scale is ignored by the max: it stays NaN through either form.
      const bool chunk_raw = raw && max_abs<V>(pr, int64_t(chunk) * v.n) * max_sc <= kRawLimit;
      for (int j0 = 0; j0 < v.n; j0 += kFp8Span) {
        KvBlock span = v;
        span.n = std::min(kFp8Span, v.n - j0);
        span.data = v.data + j0 * v.stride;
        for (int j = 0; j < span.n; j += V::kLanes) {
          const typename V::Tail t = V::tail(span.n - j);
          const typename V::F sc = V::load_f16(v.scale + j0 + j, t);
          for (int r = 0; r < chunk; ++r) {
            const typename V::F pj = V::load(pr + r * v.n + j0 + j, t);
            V::store(pw + r * kFp8Span + j, t,
                     chunk_raw ? V::mul(V::mul(pj, sc), V::set1(kRawUnscale)) : V::mul(pj, V::mul(sc, V::set1(kE4m3Unscale))));
          }
        }
        const uint8_t* ahead = r0 == 0 && ah.p ? ah.p + j0 * v.stride : nullptr;
        with_rows(chunk, [&]<int R>() {
          if (chunk_raw) {
            dense_acc_rows<V, Fmt, R, true>(span, pw, kFp8Span, ar, ahead);
          } else {
            dense_acc_rows<V, Fmt, R, false>(span, pw, kFp8Span, ar, ahead);
          }
        });
      }
    }
  }
}

}  // namespace
}  // namespace kvlab
