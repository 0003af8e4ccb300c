// The register tiles of the f32 matmul (matmul.h, matmul.cc) written once over the vector width
// V (simd_vec.h). The per-dot scheme: one kLanes-wide accumulator stepping by kLanes, the last
// k % kLanes elements as one more fma on tail loads (zeros beyond k), then V::hsums' fixed lane
// tree. Included by isa_avx2.cc / isa_avx512.cc under their #pragma GCC target (isa_entry.inc).
#pragma once

#include <cstdint>

#include "kernels/cpu/block_dequant.h"
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

// The R rows of w that a register tile reads, as vectors of f32 (kStep: elements per step of the
// dot loop, kStep / kLanes vectors; load<U>(r, i): vector U of the step at element i of row r):
// rows of f32 weights...
template <class V, int R>
struct F32Rows {
  static constexpr int kStep = V::kLanes;
  static constexpr bool kWholeSteps = false;  // k may end inside a vector
  const float* w[R];
  template <int U>
  typename V::F load(int r, int64_t i) const { return V::load(w[r] + i + U * V::kLanes); }
  typename V::F load(int r, int64_t i, typename V::Tail m) const { return V::load(w[r] + i, m); }
};

// ...or rows of a BlockMatrix in format Fmt, each vector dequantized in registers as it is needed
// (block_dequant.h: the very floats of the f32 rows, so every dot gives the same bits).
template <class V, int R, BlockFormat Fmt>
struct BlockRows {
  static constexpr int kStep = kWeightBlock;  // a block per step
  static constexpr bool kWholeSteps = true;   // k is a multiple of 32
  const uint8_t* codes[R];
  const float* scales[R];
  template <int U>
  typename V::F load(int r, int64_t i) const { return block_vec<V, Fmt, U>(codes[r], scales[r], i / kWeightBlock); }
};

// acc[r * T + j] = the dot of row r of w and token x + j * k (R, T <= 4). A nonzero `prefetch` is
// the address of the next R * k floats of f32 w (contiguous), pulled into L2 as fast as this call
// reads its own rows.
template <class V, int R, int T, class Rows>
inline void matmul_dots(const float* x, const Rows& w, int64_t k, typename V::F (&acc)[R * T], uintptr_t prefetch) {
  using F = typename V::F;
  constexpr int L = V::kLanes;
  KVLAB_UNROLL
  for (int i = 0; i < R * T; ++i) acc[i] = V::zero();
  constexpr int S = Rows::kStep;
  int64_t i = 0;
  for (; i + S <= k; i += S) {
    if (prefetch) prefetch_l2(prefetch, i / L * (R * L * 4), R * S * 4);
    // The vectors of a step in element order: each dot still adds its products from element 0 up.
    for_each_index<S / L>([&]<int U>() {
      F xv[T];
      KVLAB_UNROLL
      for (int j = 0; j < T; ++j) xv[j] = V::load(x + j * k + i + U * L);
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) {
        const F wv = w.template load<U>(r, i);
        KVLAB_UNROLL
        for (int j = 0; j < T; ++j) acc[r * T + j] = V::fma(wv, xv[j], acc[r * T + j]);
      }
    });
  }
  if constexpr (!Rows::kWholeSteps) {
    if (i < k) {  // the last k % L elements; lanes beyond load 0 and touch no memory
      const typename V::Tail m = V::tail(int(k - i));
      F xv[T];
      KVLAB_UNROLL
      for (int j = 0; j < T; ++j) xv[j] = V::load(x + j * k + i, m);
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) {
        const F wv = w.load(r, i, m);
        KVLAB_UNROLL
        for (int j = 0; j < T; ++j) acc[r * T + j] = V::fma(wv, xv[j], acc[r * T + j]);
      }
    }
  }
}

// y[j * n_out + row[r]] = dot(x + j * k, row r of w) for r < R, j < T.
template <class V, int R, int T, class Rows>
inline void matmul_dots_to(const float* x, const Rows& w, const int64_t (&row)[R], float* y, int64_t k, int64_t n_out,
                           uintptr_t prefetch) {
  typename V::F acc[R * T];
  matmul_dots<V, R, T>(x, w, k, acc, prefetch);
  float out[R * T];
  V::hsums(acc, out);
  KVLAB_UNROLL
  for (int j = 0; j < T; ++j) {
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) y[j * n_out + row[r]] = out[r * T + j];
  }
}

// y[j * n_out + r] = dot(x + j * k, w + r * k) for r < R, j < T.
template <class V, int R, int T>
void matmul_tile(const float* __restrict x, const float* __restrict w, float* __restrict y, int64_t k, int64_t n_out,
                 uintptr_t prefetch) {
  F32Rows<V, R> rows;
  int64_t row[R];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    rows.w[r] = w + r * k;
    row[r] = r;
  }
  matmul_dots_to<V, R, T>(x, rows, row, y, k, n_out, prefetch);
}

// The same for rows [0, n_rows), read as 4 streams: stream s holds rows [s * len, (s + 1) * len),
// len = n_rows / 4, and step j computes row j of each; the last n_rows % 4 rows come one at a
// time. rows_at.operator()<R>(row) gives the Rows of those R row indices.
template <class V, int T, class RowsAt>
void stream_rows(const float* __restrict x, float* __restrict y, int64_t k, int64_t n_out, int64_t n_rows,
                 const RowsAt& rows_at) {
  const int64_t len = n_rows / 4;
  for (int64_t j = 0; j < len; ++j) {
    const int64_t row[4] = {j, len + j, 2 * len + j, 3 * len + j};
    matmul_dots_to<V, 4, T>(x, rows_at.template operator()<4>(row), row, y, k, n_out, 0);
  }
  for (int64_t r = 4 * len; r < n_rows; ++r) {
    const int64_t row[1] = {r};
    matmul_dots_to<V, 1, T>(x, rows_at.template operator()<1>(row), row, y, k, n_out, 0);
  }
}

template <class V, int T>
void matmul_stream_rows(const float* x, const float* w, float* y, int64_t k, int64_t n_out, int64_t n_rows) {
  stream_rows<V, T>(x, y, k, n_out, n_rows, [&]<int R>(const int64_t (&row)[R]) {
    F32Rows<V, R> rows;
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) rows.w[r] = w + row[r] * k;
    return rows;
  });
}

// The same with the rows of a BlockMatrix, never written out as f32.
template <class V, int T, BlockFormat Fmt>
void matmul_stream_block_rows(const float* x, const BlockMatrix& w, float* y, int64_t n_out, int64_t n_rows) {
  const int64_t code_bytes = block_code_bytes(Fmt, w.k), scale_floats = block_scale_floats(Fmt, w.k);
  stream_rows<V, T>(x, y, w.k, n_out, n_rows, [&]<int R>(const int64_t (&row)[R]) {
    BlockRows<V, R, Fmt> rows;
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      rows.codes[r] = w.codes + row[r] * code_bytes;
      rows.scales[r] = w.scales + row[r] * scale_floats;
    }
    return rows;
  });
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

template <class V>
void matmul_stream_block_rows_any(int tokens, const float* x, const BlockMatrix& w, float* y, int64_t n_out,
                                  int64_t n_rows) {
  with_rows(tokens, [&]<int T>() {
    if constexpr (T <= V::kMatmulTokens) {
      if (w.format == BlockFormat::kQ4_1) {
        matmul_stream_block_rows<V, T, BlockFormat::kQ4_1>(x, w, y, n_out, n_rows);
      } else {
        matmul_stream_block_rows<V, T, BlockFormat::kQ8_0>(x, w, y, n_out, n_rows);
      }
    }
  });
}
#endif  // KVLAB_X86

}  // namespace
}  // namespace kvlab
