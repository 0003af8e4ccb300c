// y[t, o] = sum_i x[t, i] * w[o, i]: scalar reference, AVX2 and AVX-512 variants (see matmul.h).
//
// Batch invariance comes from one rule: every ISA has exactly one way to compute a single dot
// product of length k, and everything else (register tiles, streams, cache blocks, threads)
// only decides which independent dots run side by side. The per-ISA dot:
//
//   scalar   one float accumulator, s += x[i] * w[i] for i = 0 .. k-1 (product rounded, then sum).
//   avx2     one 8-lane accumulator, acc = fma(w[i:i+8], x[i:i+8], acc) for i = 0, 8, 16, ...;
//            the last k % 8 elements as one more fma on masked loads (zeros beyond k); then the
//            8 lanes summed by the fixed tree ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)).
//   avx512   one 16-lane accumulator stepping by 16, masked tail the same way; the 16 lanes
//            summed by the fixed tree: lane i + lane i+8, then i + i+4, then i + i+2, then 0 + 1.
//
// Several dots run at once, each with its own accumulator, so the FMA latency is hidden and
// every vector loaded serves several dots. Their horizontal sums are done together by
// transposing networks (reduce16_avx512, reduce4_avx512, reduce4_avx2) that perform, lane for
// lane, exactly the additions of the fixed tree; unused inputs are zeros (or copies), which
// changes nothing in the used ones. Addition is commutative bit for bit, so only the pairing of
// the tree matters, never the operand order. Loads are unaligned: chunks start at the row start,
// never at an alignment boundary, so pointer alignment cannot move them. The tests check all of
// this bit for bit (tests/matmul_test.cc).
//
// Two shapes of work:
//
//   prefill (n_tokens > T)  register tiles of R rows x T tokens: avx512 4 x 4 zmm accumulators,
//            avx2 4 x 3 ymm (12 accumulators + 3 x + 1 w = all 16 registers), scalar 1 x 1.
//            Threads split the output rows into blocks of about 256 KiB of w; a block meets the
//            tokens in blocks of about 128 KiB of x, so both stay in L2 while, for each R-row
//            tile of w (in L1), every T-token tile of the token block streams past.
//   decode (n_tokens <= T)  memory-bound: each thread takes one contiguous range of rows and
//            reads it as 4 sequential streams (rows [0, n/4), [n/4, n/2), ... of its range side
//            by side), n_tokens x 4 dots at a time. Long sequential streams are what the
//            hardware prefetchers follow best: 8 interleaved rows per tile (each row a 2.3 KiB
//            stream that ends before the prefetcher ramps up) read 17 GB/s on one thread, 27
//            GB/s with software prefetch of the next tile, 33 GB/s as 4 streams.
//
// Measured with bench/matmul_bench.cc on 2 cores of an AMD EPYC Zen 4 (a VM shared with other
// jobs; fastest calls). AVX-512 and AVX2 run at the same speed: Zen 4 executes both as 2 x 256-bit
// FMA per cycle.
//   decode, w from DRAM (576 -> 1536, 1536 -> 576, 576 -> 49152): 31-38 GB/s on 1 thread (STREAM-
//     style read 28-34 GB/s); on 2 threads 62-68 GB/s in some runs (STREAM 57-69 GB/s) and
//     38-44 GB/s in others (STREAM 34-37 GB/s), apparently as the host places the two vCPUs.
//   prefill 576 -> 1536, 512-4096 tokens: 98-108 GFLOP/s per thread, 200-214 GFLOP/s on 2.
//   scalar reference: 2.7 GFLOP/s per thread.
#include "kernels/cpu/matmul.h"

#include <omp.h>

#include <algorithm>

#include "base/check.h"

#include "kernels/cpu/simd.h"

namespace kvlab {
namespace {

// Below this many multiply-adds one thread does the whole product: forking and joining an
// OpenMP team costs ~2 us here, as much as a 64K-MAC product from cache (k = 576, n_out = 113).
constexpr int64_t kMinParallelMacs = int64_t(1) << 16;
// Cache-block budgets in bytes, for L2s of 512 KiB to 2 MiB.
constexpr int64_t kRowBlockBytes = 256 << 10;
constexpr int64_t kTokenBlockBytes = 128 << 10;

// x: [n_tokens, k]   w: [n_out, k]   y: [n_tokens, n_out]
struct Problem {
  const float* x;
  int64_t n_tokens;
  int64_t k;
  const float* w;
  int64_t n_out;
  float* y;
};

// Every ISA provides, as static members of its *Kernel struct:
//
//   kTileRows, kTileTokens                        R and T of the prefill register tile
//   template <int R, int T> tile(x, w, y, k, n_out, prefetch)
//       y[j * n_out + r] = dot(x + j * k, w + r * k)  for j < T <= kTileTokens, r < R <= kTileRows
//       (a nonzero `prefetch`, an address, also pulls the R*k floats there into L2)
//   template <int T> stream_rows(x, w, y, k, n_out, n_rows)
//       the same for j < T <= kTileTokens and r < n_rows, the rows read as 4 streams: stream s
//       holds rows [s*len, (s+1)*len), len = n_rows / 4, step j computes row j of each; the
//       last n_rows % 4 rows come one at a time.

// ---------------------------------------------------------------------------------------------
// Scalar reference

float dot_scalar(const float* x, const float* w, int64_t k) {
  float s = 0.0f;
  for (int64_t i = 0; i < k; ++i) s += x[i] * w[i];
  return s;
}

struct ScalarKernel {
  static constexpr int kTileRows = 1;
  static constexpr int kTileTokens = 1;
  template <int R, int T>
  static void tile(const float* x, const float* w, float* y, int64_t k, int64_t n_out,
                   uintptr_t /*prefetch*/) {
    for (int j = 0; j < T; ++j) {
      for (int r = 0; r < R; ++r) y[j * n_out + r] = dot_scalar(x + j * k, w + r * k, k);
    }
  }
  template <int T>
  static void stream_rows(const float* x, const float* w, float* y, int64_t k, int64_t n_out,
                          int64_t n_rows) {
    for (int j = 0; j < T; ++j) {
      for (int64_t r = 0; r < n_rows; ++r) y[j * n_out + r] = dot_scalar(x + j * k, w + r * k, k);
    }
  }
};

#ifdef KVLAB_X86
// Prefetches `bytes` bytes at byte offset `offset` from `base` into L2. Integer arithmetic: the
// address may lie past the end of w (prefetches never fault; pointer arithmetic would be UB).
inline void prefetch_l2(uintptr_t base, int64_t offset, int bytes) {
  for (int b = 0; b < bytes; b += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(base + uintptr_t(offset + b)), _MM_HINT_T1);
  }
}

// ---------------------------------------------------------------------------------------------
// AVX-512

// Sums the lanes of each of 16 vectors: lane 4m+n of the result is the sum of v[4n+m]. Four
// rounds of (shuffle, shuffle, add) halve the vector count, adding lane i to lane i+8, then i to
// i+4, i to i+2 and i to i+1 of every input: the fixed tree. 15 adds and 30 shuffles for 16
// sums, where reducing the vectors one by one takes 8 operations per sum.
KVLAB_TARGET_AVX512 inline __m512 reduce16_avx512(const __m512 (&v)[16]) {
  __m512 c[8];  // c[p] = [v[2p] lanes 0..7 + 8..15 | v[2p+1] lanes 0..7 + 8..15]
  for (int p = 0; p < 8; ++p) {
    c[p] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0xee));
  }
  __m512 e[4];  // 128-bit quarter m of e[q]: the four partial sums of v[4q+m]
  for (int q = 0; q < 4; ++q) {
    e[q] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * q], c[2 * q + 1], 0x88),
                         _mm512_shuffle_f32x4(c[2 * q], c[2 * q + 1], 0xdd));
  }
  __m512 g[2];  // quarter m of g[s]: two partial sums of v[8s+m], two of v[8s+4+m]
  for (int s = 0; s < 2; ++s) {
    g[s] = _mm512_add_ps(_mm512_shuffle_ps(e[2 * s], e[2 * s + 1], 0x44),
                         _mm512_shuffle_ps(e[2 * s], e[2 * s + 1], 0xee));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(g[0], g[1], 0x88), _mm512_shuffle_ps(g[0], g[1], 0xdd));
}

// The same tree for four vectors: lane s of the result is the sum of the 16 lanes of v[s].
KVLAB_TARGET_AVX512 inline __m128 reduce4_avx512(const __m512 (&v)[4]) {
  // [v0 lanes i + i+8 | v1 lanes i + i+8], the same for v2, v3.
  const __m512 c01 =
      _mm512_add_ps(_mm512_shuffle_f32x4(v[0], v[1], 0x44), _mm512_shuffle_f32x4(v[0], v[1], 0xee));
  const __m512 c23 =
      _mm512_add_ps(_mm512_shuffle_f32x4(v[2], v[3], 0x44), _mm512_shuffle_f32x4(v[2], v[3], 0xee));
  // Quarter s: lanes j + j+4 of the partial sums of v[s].
  const __m512 e =
      _mm512_add_ps(_mm512_shuffle_f32x4(c01, c23, 0x88), _mm512_shuffle_f32x4(c01, c23, 0xdd));
  const __m512 g = _mm512_add_ps(e, _mm512_shuffle_ps(e, e, 0x4e));  // lanes m + m+2
  const __m512 h = _mm512_add_ps(g, _mm512_shuffle_ps(g, g, 0xb1));  // lanes 0 + 1: sum v[s] at 4s
  const __m512i gather = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_castps512_ps128(_mm512_permutexvar_ps(gather, h));
}

// Stores the first R (1..4) lanes of v at y.
template <int R>
KVLAB_TARGET_AVX512 inline void store_rows_avx512(float* y, __m128 v) {
  if constexpr (R == 4) {
    _mm_storeu_ps(y, v);
  } else {
    _mm_mask_storeu_ps(y, __mmask8((1u << R) - 1), v);
  }
}

// acc[r][j] = the dots of rows w[r] and tokens x + j*k (R, T <= 4), the fixed per-dot scheme.
// A nonzero `prefetch` is the address of the next R*k floats of w (contiguous), pulled into L2
// as fast as this call reads its own rows.
template <int R, int T>
KVLAB_TARGET_AVX512 inline void dots_avx512(const float* x, const float* const (&w)[R], int64_t k,
                                            __m512 (&acc)[R][T], uintptr_t prefetch = 0) {
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < T; ++j) acc[r][j] = _mm512_setzero_ps();
  }
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    if (prefetch) prefetch_l2(prefetch, i / 16 * (R * 64), R * 64);
    __m512 xv[T];
#pragma GCC unroll 4
    for (int j = 0; j < T; ++j) xv[j] = _mm512_loadu_ps(x + j * k + i);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m512 wv = _mm512_loadu_ps(w[r] + i);
#pragma GCC unroll 4
      for (int j = 0; j < T; ++j) acc[r][j] = _mm512_fmadd_ps(wv, xv[j], acc[r][j]);
    }
  }
  if (i < k) {  // the last k % 16 elements; masked-off lanes load 0 and touch no memory
    const __mmask16 m = __mmask16((1u << (k - i)) - 1);
    __m512 xv[T];
#pragma GCC unroll 4
    for (int j = 0; j < T; ++j) xv[j] = _mm512_maskz_loadu_ps(m, x + j * k + i);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m512 wv = _mm512_maskz_loadu_ps(m, w[r] + i);
#pragma GCC unroll 4
      for (int j = 0; j < T; ++j) acc[r][j] = _mm512_fmadd_ps(wv, xv[j], acc[r][j]);
    }
  }
}

// The horizontal sums of acc[r][j] (r < R, j < T), through reduce16_avx512 with accumulator
// (r, j) as input 4r+j: quarter j of the result holds the R rows of token j.
template <int R, int T>
KVLAB_TARGET_AVX512 inline __m512 reduce_tile_avx512(const __m512 (&acc)[R][T]) {
  __m512 v[16];
#pragma GCC unroll 16
  for (int n = 0; n < 16; ++n) v[n] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < T; ++j) v[4 * r + j] = acc[r][j];
  }
  return reduce16_avx512(v);
}

template <int R, int T>
KVLAB_TARGET_AVX512 void tile_avx512(const float* __restrict x, const float* __restrict w,
                                     float* __restrict y, int64_t k, int64_t n_out,
                                     uintptr_t prefetch) {
  static_assert(R <= 4 && T <= 4, "unsupported tile");
  const float* wr[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) wr[r] = w + r * k;
  __m512 acc[R][T];
  dots_avx512<R, T>(x, wr, k, acc, prefetch);
  const __m512 z = reduce_tile_avx512<R, T>(acc);
  store_rows_avx512<R>(y, _mm512_castps512_ps128(z));
  if constexpr (T > 1) store_rows_avx512<R>(y + n_out, _mm512_extractf32x4_ps(z, 1));
  if constexpr (T > 2) store_rows_avx512<R>(y + 2 * n_out, _mm512_extractf32x4_ps(z, 2));
  if constexpr (T > 3) store_rows_avx512<R>(y + 3 * n_out, _mm512_extractf32x4_ps(z, 3));
}

// Sums of acc[s][j] for 4 streams s and T tokens, written to y[j * n_out + row[s]] for s < n
// (n = 4, or 1 for a lone row whose stream slots all repeat it).
template <int T>
KVLAB_TARGET_AVX512 inline void store_streams_avx512(const __m512 (&acc)[4][T], float* y,
                                                     int64_t n_out, const int64_t (&row)[4],
                                                     int n) {
  alignas(64) float out[16];
  if constexpr (T == 1) {
    const __m512 v[4] = {acc[0][0], acc[1][0], acc[2][0], acc[3][0]};
    _mm_store_ps(out, reduce4_avx512(v));  // lane s: stream s
  } else {
    _mm512_store_ps(out, reduce_tile_avx512<4, T>(acc));  // lane 4j+s: stream s, token j
  }
  for (int j = 0; j < T; ++j) {
    for (int s = 0; s < n; ++s) y[j * n_out + row[s]] = out[4 * j + s];
  }
}

template <int T>
KVLAB_TARGET_AVX512 void stream_rows_avx512(const float* __restrict x, const float* __restrict w,
                                            float* __restrict y, int64_t k, int64_t n_out,
                                            int64_t n_rows) {
  static_assert(T <= 4, "unsupported token count");
  const int64_t len = n_rows / 4;
  __m512 acc[4][T];
  for (int64_t j = 0; j < len; ++j) {
    const int64_t row[4] = {j, len + j, 2 * len + j, 3 * len + j};
    const float* wr[4] = {w + row[0] * k, w + row[1] * k, w + row[2] * k, w + row[3] * k};
    dots_avx512<4, T>(x, wr, k, acc);
    store_streams_avx512<T>(acc, y, n_out, row, 4);
  }
  for (int64_t r = 4 * len; r < n_rows; ++r) {
    const int64_t row[4] = {r, r, r, r};
    const float* wr[4] = {w + r * k, w + r * k, w + r * k, w + r * k};
    dots_avx512<4, T>(x, wr, k, acc);
    store_streams_avx512<T>(acc, y, n_out, row, 1);
  }
}

struct Avx512Kernel {
  static constexpr int kTileRows = 4;
  static constexpr int kTileTokens = 4;
  template <int R, int T>
  static void tile(const float* x, const float* w, float* y, int64_t k, int64_t n_out,
                   uintptr_t prefetch) {
    tile_avx512<R, T>(x, w, y, k, n_out, prefetch);
  }
  template <int T>
  static void stream_rows(const float* x, const float* w, float* y, int64_t k, int64_t n_out,
                          int64_t n_rows) {
    stream_rows_avx512<T>(x, w, y, k, n_out, n_rows);
  }
};

// ---------------------------------------------------------------------------------------------
// AVX2

// Lane r of the result is the sum of the 8 lanes of v[r], by the fixed tree
// ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)): two rounds of hadd, then the two 128-bit halves.
KVLAB_TARGET_AVX2 inline __m128 reduce4_avx2(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(v0, v1), _mm256_hadd_ps(v2, v3));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// Stores the first R (1..4) lanes of v at y.
template <int R>
KVLAB_TARGET_AVX2 inline void store_rows_avx2(float* y, __m128 v) {
  if constexpr (R == 4) {
    _mm_storeu_ps(y, v);
  } else {
    _mm_maskstore_ps(y, _mm_cmpgt_epi32(_mm_set1_epi32(R), _mm_setr_epi32(0, 1, 2, 3)), v);
  }
}

// acc[r][j] = the dots of rows w[r] and tokens x + j*k (R <= 4), the fixed per-dot scheme.
// `prefetch` as for dots_avx512.
template <int R, int T>
KVLAB_TARGET_AVX2 inline void dots_avx2(const float* x, const float* const (&w)[R], int64_t k,
                                        __m256 (&acc)[R][T], uintptr_t prefetch = 0) {
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < T; ++j) acc[r][j] = _mm256_setzero_ps();
  }
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    if (prefetch) prefetch_l2(prefetch, i / 8 * (R * 32), R * 32);  // (R < 2: a line twice)
    __m256 xv[T];
#pragma GCC unroll 4
    for (int j = 0; j < T; ++j) xv[j] = _mm256_loadu_ps(x + j * k + i);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256 wv = _mm256_loadu_ps(w[r] + i);
#pragma GCC unroll 4
      for (int j = 0; j < T; ++j) acc[r][j] = _mm256_fmadd_ps(wv, xv[j], acc[r][j]);
    }
  }
  if (i < k) {  // the last k % 8 elements; masked-off lanes load 0 and touch no memory
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(k - i)),
                                         _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 xv[T];
#pragma GCC unroll 4
    for (int j = 0; j < T; ++j) xv[j] = _mm256_maskload_ps(x + j * k + i, m);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256 wv = _mm256_maskload_ps(w[r] + i, m);
#pragma GCC unroll 4
      for (int j = 0; j < T; ++j) acc[r][j] = _mm256_fmadd_ps(wv, xv[j], acc[r][j]);
    }
  }
}

// The sums of acc[r][j] for token j, rows r < R in lanes r (the others 0).
template <int R, int T>
KVLAB_TARGET_AVX2 inline __m128 reduce_token_avx2(const __m256 (&acc)[R][T], int j) {
  __m256 v[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                 _mm256_setzero_ps()};
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) v[r] = acc[r][j];
  return reduce4_avx2(v[0], v[1], v[2], v[3]);
}

template <int R, int T>
KVLAB_TARGET_AVX2 void tile_avx2(const float* __restrict x, const float* __restrict w,
                                 float* __restrict y, int64_t k, int64_t n_out,
                                 uintptr_t prefetch) {
  static_assert(R <= 4, "unsupported tile");
  const float* wr[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) wr[r] = w + r * k;
  __m256 acc[R][T];
  dots_avx2<R, T>(x, wr, k, acc, prefetch);
#pragma GCC unroll 4
  for (int j = 0; j < T; ++j) store_rows_avx2<R>(y + j * n_out, reduce_token_avx2<R, T>(acc, j));
}

template <int T>
KVLAB_TARGET_AVX2 void stream_rows_avx2(const float* __restrict x, const float* __restrict w,
                                        float* __restrict y, int64_t k, int64_t n_out,
                                        int64_t n_rows) {
  const int64_t len = n_rows / 4;
  __m256 acc[4][T];
  alignas(16) float out[4];
  for (int64_t j = 0; j < len; ++j) {
    const int64_t row[4] = {j, len + j, 2 * len + j, 3 * len + j};
    const float* wr[4] = {w + row[0] * k, w + row[1] * k, w + row[2] * k, w + row[3] * k};
    dots_avx2<4, T>(x, wr, k, acc);
    for (int t = 0; t < T; ++t) {
      _mm_store_ps(out, reduce_token_avx2<4, T>(acc, t));
      for (int s = 0; s < 4; ++s) y[t * n_out + row[s]] = out[s];
    }
  }
  for (int64_t r = 4 * len; r < n_rows; ++r) {
    const float* wr[1] = {w + r * k};
    __m256 acc1[1][T];
    dots_avx2<1, T>(x, wr, k, acc1);
    for (int t = 0; t < T; ++t) {
      _mm_store_ps(out, reduce_token_avx2<1, T>(acc1, t));
      y[t * n_out + r] = out[0];
    }
  }
}

struct Avx2Kernel {
  static constexpr int kTileRows = 4;
  static constexpr int kTileTokens = 3;
  template <int R, int T>
  static void tile(const float* x, const float* w, float* y, int64_t k, int64_t n_out,
                   uintptr_t prefetch) {
    tile_avx2<R, T>(x, w, y, k, n_out, prefetch);
  }
  template <int T>
  static void stream_rows(const float* x, const float* w, float* y, int64_t k, int64_t n_out,
                          int64_t n_rows) {
    stream_rows_avx2<T>(x, w, y, k, n_out, n_rows);
  }
};
#endif  // KVLAB_X86

// ---------------------------------------------------------------------------------------------
// Blocking and threads (shared by every ISA; none of it changes what a dot computes)

// Rows [o, o + R) against tokens [t0, t1): full T-token tiles, then one narrower tile. The first
// tile reads these rows from memory (the others find them in L1) and prefetches the next R rows,
// which this loop reads next: 4 interleaved rows are short streams that the hardware
// prefetchers miss (10 GB/s instead of 30 from DRAM on one thread at n_tokens = 4, k = 576).
template <class K, int R>
void run_row_tile(const Problem& p, int64_t o, int64_t t0, int64_t t1) {
  constexpr int T = K::kTileTokens;
  static_assert(T <= 4, "add the narrower tiles below");
  const float* w = p.w + o * p.k;
  uintptr_t prefetch = reinterpret_cast<uintptr_t>(w) + uintptr_t(R * p.k) * sizeof(float);
  int64_t t = t0;
  for (; t + T <= t1; t += T, prefetch = 0) {
    K::template tile<R, T>(p.x + t * p.k, w, p.y + t * p.n_out + o, p.k, p.n_out, prefetch);
  }
  const int64_t rest = t1 - t;
  const float* x = p.x + t * p.k;
  float* y = p.y + t * p.n_out + o;
  if constexpr (T > 1) {
    if (rest == 1) K::template tile<R, 1>(x, w, y, p.k, p.n_out, prefetch);
  }
  if constexpr (T > 2) {
    if (rest == 2) K::template tile<R, 2>(x, w, y, p.k, p.n_out, prefetch);
  }
  if constexpr (T > 3) {
    if (rest == 3) K::template tile<R, 3>(x, w, y, p.k, p.n_out, prefetch);
  }
}

// Output rows [r0, r1) x tokens [t0, t1).
template <class K>
void run_block(const Problem& p, int64_t r0, int64_t r1, int64_t t0, int64_t t1) {
  constexpr int T = K::kTileTokens;
  const int64_t n = t1 - t0;
  if (n <= T) {  // each row of w is used once: read the rows as streams
    const float* x = p.x + t0 * p.k;
    const float* w = p.w + r0 * p.k;
    float* y = p.y + t0 * p.n_out + r0;
    if (n == 1) K::template stream_rows<1>(x, w, y, p.k, p.n_out, r1 - r0);
    if constexpr (T > 1) {
      if (n == 2) K::template stream_rows<2>(x, w, y, p.k, p.n_out, r1 - r0);
    }
    if constexpr (T > 2) {
      if (n == 3) K::template stream_rows<3>(x, w, y, p.k, p.n_out, r1 - r0);
    }
    if constexpr (T > 3) {
      if (n == 4) K::template stream_rows<4>(x, w, y, p.k, p.n_out, r1 - r0);
    }
    return;
  }
  constexpr int R = K::kTileRows;
  int64_t o = r0;
  for (; o + R <= r1; o += R) run_row_tile<K, R>(p, o, t0, t1);
  for (; o < r1; ++o) run_row_tile<K, 1>(p, o, t0, t1);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Blocking {
  int64_t rows;    // output rows per block
  int64_t tokens;  // tokens per block
  int64_t n_row_blocks;
  int64_t n_token_blocks;
};

// Block sizes for `n_threads` threads. Only speed depends on them.
Blocking plan_blocks(const Problem& p, int row_tile, int token_tile, int n_threads) {
  const int64_t row_bytes = std::max<int64_t>(p.k, 1) * int64_t(sizeof(float));
  Blocking b;
  if (p.n_tokens <= token_tile) {
    // Decode: one range of rows per thread, read as long streams.
    b.rows = ceil_div(p.n_out, n_threads);
    b.tokens = p.n_tokens;
  } else {
    b.tokens =
        std::max<int64_t>(token_tile, kTokenBlockBytes / row_bytes / token_tile * token_tile);
    b.rows = std::max<int64_t>(row_tile, kRowBlockBytes / row_bytes / row_tile * row_tile);
    // With few blocks in all, round the row-block count up to a multiple of the thread count so
    // that no thread idles while another finishes a whole block.
    const int64_t n_token_blocks = ceil_div(p.n_tokens, b.tokens);
    int64_t n_row_blocks = ceil_div(p.n_out, b.rows);
    if (n_token_blocks * n_row_blocks < 4 * n_threads && n_row_blocks % n_threads != 0) {
      n_row_blocks += n_threads - n_row_blocks % n_threads;
      b.rows = std::max<int64_t>(row_tile,
                                 ceil_div(ceil_div(p.n_out, n_row_blocks), row_tile) * row_tile);
    }
  }
  b.n_row_blocks = ceil_div(p.n_out, b.rows);
  b.n_token_blocks = ceil_div(p.n_tokens, b.tokens);
  return b;
}

template <class K>
void run(const Problem& p) {
  const int64_t macs = p.n_tokens * p.k * p.n_out;
  const int n_threads = macs < kMinParallelMacs ? 1 : omp_get_max_threads();
  const Blocking b = plan_blocks(p, K::kTileRows, K::kTileTokens, n_threads);
  const int64_t n_blocks = b.n_row_blocks * b.n_token_blocks;
  // Block `it` is row block it / n_token_blocks x token block it % n_token_blocks: a thread's
  // contiguous range of blocks walks all token blocks of one row block before the next, so each
  // w block comes from memory once and then stays in L2.
  auto block = [&](int64_t it) {
    const int64_t r0 = it / b.n_token_blocks * b.rows;
    const int64_t t0 = it % b.n_token_blocks * b.tokens;
    run_block<K>(p, r0, std::min(r0 + b.rows, p.n_out), t0, std::min(t0 + b.tokens, p.n_tokens));
  };
  if (n_threads <= 1 || n_blocks <= 1) {
    for (int64_t it = 0; it < n_blocks; ++it) block(it);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(n_threads)
  for (int64_t it = 0; it < n_blocks; ++it) block(it);
}

}  // namespace

void matmul_isa(Isa isa, const float* x, int64_t n_tokens, int64_t k, const float* w, int64_t n_out,
                float* y) {
  KVLAB_CHECK(n_tokens >= 0 && k >= 0 && n_out >= 0);
  KVLAB_CHECK(int(isa) <= int(detected_isa()));
  if (n_tokens == 0 || n_out == 0) return;
  const Problem p{x, n_tokens, k, w, n_out, y};
  switch (isa) {
    case Isa::kScalar:
      run<ScalarKernel>(p);
      return;
#ifdef KVLAB_X86
    case Isa::kAvx2:
      run<Avx2Kernel>(p);
      return;
    case Isa::kAvx512:
      run<Avx512Kernel>(p);
      return;
#else
    default:
      break;
#endif
  }
  KVLAB_CHECK(false && "ISA not compiled into this build");
}

void matmul(const float* x, int64_t n_tokens, int64_t k, const float* w, int64_t n_out, float* y) {
  matmul_isa(active_isa(), x, n_tokens, k, w, n_out, y);
}

}  // namespace kvlab
