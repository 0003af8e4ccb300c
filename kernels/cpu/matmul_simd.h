// The register tiles of the f32 matmul (matmul.h, matmul.cc) written once over the vector width
// V (simd_vec.h). The per-dot scheme: one kLanes-wide accumulator stepping by kLanes, the last
// k % kLanes elements as one more fma on tail loads (zeros beyond k), then V::hsums' fixed lane
// tree. Included by isa_avx2.cc / isa_avx512.cc under their #pragma GCC target (isa_entry.inc).
#pragma once

#include <cstdint>

#include "kernels/cpu/kv_kernels_internal.h"
#include "kernels/cpu/simd_vec.h"

namespace kvlab {
namespace {

#ifdef KVLAB_X86
// Prefetches `bytes` bytes at byte offset `offset` from `base` into L2. Integer arithmetic: the
// address may lie past the end of w (prefetches never fault; pointer arithmetic would be UB).
inline void prefetch_l2(uintptr_t base, int64_t offset, int bytes) {
  for (int b = 0; b < bytes; b += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(base + uintptr_t(offset + b)), _MM_HINT_T1);
  }
}

// acc[r * T + j] = the dot of row w[r] and token x + j * k (R, T <= 4). A nonzero `prefetch` is
// the address of the next R * k floats of w (contiguous), pulled into L2 as fast as this call
// reads its own rows.
template <class V, int R, int T>
inline void matmul_dots(const float* x, const float* const (&w)[R], int64_t k, typename V::F (&acc)[R * T],
                        uintptr_t prefetch) {
  using F = typename V::F;
  constexpr int L = V::kLanes;
  KVLAB_UNROLL
  for (int i = 0; i < R * T; ++i) acc[i] = V::zero();
  int64_t i = 0;
  for (; i + L <= k; i += L) {
    if (prefetch) prefetch_l2(prefetch, i / L * (R * L * 4), R * L * 4);
    F xv[T];
    KVLAB_UNROLL
    for (int j = 0; j < T; ++j) xv[j] = V::load(x + j * k + i);
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const F wv = V::load(w[r] + i);
      KVLAB_UNROLL
      for (int j = 0; j < T; ++j) acc[r * T + j] = V::fma(wv, xv[j], acc[r * T + j]);
    }
  }
  if (i < k) {  // the last k % L elements; lanes beyond load 0 and touch no memory
    const typename V::Tail m = V::tail(int(k - i));
    F xv[T];
    KVLAB_UNROLL
    for (int j = 0; j < T; ++j) xv[j] = V::load(x + j * k + i, m);
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const F wv = V::load(w[r] + i, m);
      KVLAB_UNROLL
      for (int j = 0; j < T; ++j) acc[r * T + j] = V::fma(wv, xv[j], acc[r * T + j]);
    }
  }
}

// y[j * n_out + r] = dot(x + j * k, w + r * k) for r < R, j < T.
template <class V, int R, int T>
void matmul_tile(const float* __restrict x, const float* __restrict w, float* __restrict y, int64_t k, int64_t n_out,
                 uintptr_t prefetch) {
  const float* wr[R];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) wr[r] = w + r * k;
  typename V::F acc[R * T];
  matmul_dots<V, R, T>(x, wr, k, acc, prefetch);
  float out[R * T];
  V::hsums(acc, out);
  KVLAB_UNROLL
  for (int j = 0; j < T; ++j) {
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) y[j * n_out + r] = out[r * T + j];
  }
}

// The same for r < n_rows, the rows read as 4 streams: stream s holds rows [s * len, (s + 1) *
// len), len = n_rows / 4, and step j computes row j of each; the last n_rows % 4 rows come one
// at a time.
template <class V, int T>
void matmul_stream_rows(const float* __restrict x, const float* __restrict w, float* __restrict y, int64_t k,
                        int64_t n_out, int64_t n_rows) {
  const int64_t len = n_rows / 4;
  for (int64_t j = 0; j < len; ++j) {
    const int64_t row[4] = {j, len + j, 2 * len + j, 3 * len + j};
    const float* wr[4] = {w + row[0] * k, w + row[1] * k, w + row[2] * k, w + row[3] * k};
    typename V::F acc[4 * T];
    matmul_dots<V, 4, T>(x, wr, k, acc, 0);
    float out[4 * T];
    V::hsums(acc, out);
    for (int t = 0; t < T; ++t) {
      for (int s = 0; s < 4; ++s) y[t * n_out + row[s]] = out[s * T + t];
    }
  }
  for (int64_t r = 4 * len; r < n_rows; ++r) {
    matmul_tile<V, 1, T>(x, w + r * k, y + r, k, n_out, 0);
  }
}

// Runtime (rows, tokens) -> the tile template: rows 1 or 4, tokens 1 .. kMatmulTokens.
template <class V>
void matmul_tile_any(int rows, int tokens, const float* x, const float* w, float* y, int64_t k, int64_t n_out,
                     uintptr_t prefetch) {
  with_rows(tokens, [&]<int T>() {
    if constexpr (T <= V::kMatmulTokens) {
      if (rows == 1) {
        matmul_tile<V, 1, T>(x, w, y, k, n_out, prefetch);
      } else {
        matmul_tile<V, 4, T>(x, w, y, k, n_out, prefetch);
      }
    }
  });
}

template <class V>
void matmul_stream_rows_any(int tokens, const float* x, const float* w, float* y, int64_t k, int64_t n_out,
                            int64_t n_rows) {
  with_rows(tokens, [&]<int T>() {
    if constexpr (T <= V::kMatmulTokens) matmul_stream_rows<V, T>(x, w, y, k, n_out, n_rows);
  });
}
#endif  // KVLAB_X86

}  // namespace
}  // namespace kvlab
