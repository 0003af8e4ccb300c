// y[t, o] = sum_i x[t, i] * w[o, i]: the scalar reference, and the AVX2 and AVX-512 register tiles
// written once over the vector width (matmul_simd.h); blocking and threads here (see matmul.h).
//
// Batch invariance comes from one rule: every ISA has exactly one way to compute a single dot
// product of length k, and everything else (register tiles, streams, cache blocks, threads)
// only decides which independent dots run side by side. The per-ISA dot:
//
//   scalar   one float accumulator, s += x[i] * w[i] for i = 0 .. k-1 (product rounded, then sum).
//   avx2     one 8-lane accumulator, acc = fma(w[i:i+8], x[i:i+8], acc) for i = 0, 8, 16, ...;
//            the last k % 8 elements as one more fma on masked loads (zeros beyond k); then the
//            8 lanes summed by the fixed tree: lane i + lane i+4, then i + i+2, then 0 + 1.
//   avx512   one 16-lane accumulator stepping by 16, masked tail the same way; the 16 lanes
//            summed by the fixed tree: lane i + lane i+8, then i + i+4, then i + i+2, then 0 + 1.
//
// Several dots run at once, each with its own accumulator, so the FMA latency is hidden and
// every vector loaded serves several dots. Their horizontal sums are done together by
// transposing networks (Vec8::reduce8, Vec16::reduce16 in simd_vec.h) that perform, lane for
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
//
// Block-format weights (BlockMatrix, matmul.h) go through the same dots. Prefill: a thread
// dequantizes its whole row block once into its scratch (L2) and runs the f32 tiles on it.
// Decode: the streams read the codes and dequantize each vector in registers as the dots need
// it (BlockRows, matmul_simd.h), since writing the rows out and reading them back cost more than
// the dots themselves: 576 -> 1536 from L2, 2 threads, 1 token 42 -> 28 us, 4 tokens 62 -> 46 us
// (AVX-512 on Zen 4; AVX2 1 token 34 -> 23 us, 4 tokens unchanged, its 16 accumulators fill the
// register file). A dot therefore sees the very floats it would see in the dequantized matrix,
// in the same order: bit-identical results, with 6 or 9 bits per weight read from memory instead
// of 32.
//
// Alignment changes no bit (above) but does change speed: a 64-byte load that straddles two cache
// lines costs two. On 2 cores of an Intel Xeon (family 6 model 167, AVX-512), with x and w 16
// bytes off a line (where malloc puts large arrays) against on a line, 16 tokens: 576 -> 1536
// from L2 200 -> 144 us, from DRAM 316 -> 295 us; 1536 -> 576 from DRAM 342 -> 288 us;
// 576 -> 49152 9.1 -> 8.3 ms. So the decoder keeps its matrices and activations in
// AlignedVector (base/aligned_vector.h).
#include "kernels/cpu/matmul.h"

#include <omp.h>

#include <algorithm>

#include "base/aligned_vector.h"
#include "base/check.h"

#include "kernels/cpu/block_dequant.h"
#include "kernels/cpu/kv_kernels_internal.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/simd_vec.h"

namespace kvlab {
namespace {

// Below this many multiply-adds one thread does the whole product: forking and joining an
// OpenMP team costs ~2 us here, as much as a 64K-MAC product from cache (k = 576, n_out = 113).
constexpr int64_t kMinParallelMacs = int64_t(1) << 16;
// Cache-block budgets in bytes, for L2s of 512 KiB to 2 MiB.
constexpr int64_t kRowBlockBytes = 256 << 10;
constexpr int64_t kTokenBlockBytes = 128 << 10;

using DequantizeFn = void (*)(BlockFormat, const uint8_t*, const float*, int64_t, float*);

// Rows [r0, ...) of w, as a BlockMatrix of their own.
BlockMatrix rows_from(const BlockMatrix& w, int64_t r0) {
  return {w.format, w.codes + r0 * block_code_bytes(w.format, w.k), w.scales + r0 * block_scale_floats(w.format, w.k),
          w.k};
}

// Rows [r0, r1) of w through `dequantize` (one ISA's block_dequant.h), into out[(r1 - r0) * k].
void dequantize_range(const BlockMatrix& w, int64_t r0, int64_t r1, float* out, DequantizeFn dequantize) {
  const BlockMatrix from = rows_from(w, r0);
  dequantize(w.format, from.codes, from.scales, (r1 - r0) * (w.k / kWeightBlock), out);
}

// x: [n_tokens, k]   w: [n_out, k]   y: [n_tokens, n_out]
struct Problem {
  const float* x;
  int64_t n_tokens;
  int64_t k;
  const float* w;              // f32 weights, or nullptr when `blocks` holds them
  const BlockMatrix* blocks;
  int64_t n_out;
  float* y;
};

// A thread's dequantized rows [first, first + count) of the product under way (count 0: none),
// for the prefill tiles. Kept between products so that a step allocates nothing; run() forgets
// the rows.
struct Scratch {
  AlignedVector<float> rows;
  int64_t first = 0, count = 0;
};
Scratch& thread_scratch() {
  static thread_local Scratch s;
  return s;
}

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
//   template <int T> stream_block_rows(x, w, y, n_out, n_rows)
//       stream_rows with the rows of a BlockMatrix (row r of w, from its first row), dequantized
//       in registers as the dots need them: the same bits as stream_rows on the f32 rows.
//   dequantize(format, codes, scales, n_blocks, out)
//       block_dequant.h for the ISA.

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
  static void dequantize(BlockFormat f, const uint8_t* codes, const float* scales, int64_t n_blocks, float* out) {
    dequantize_blocks_scalar(f, codes, scales, n_blocks, out);
  }
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
  template <int T>
  static void stream_block_rows(const float* x, const BlockMatrix& w, float* y, int64_t n_out, int64_t n_rows) {
    static thread_local std::vector<float> row;
    row.resize(size_t(w.k));
    for (int64_t r = 0; r < n_rows; ++r) {
      dequantize_range(w, r, r + 1, row.data(), dequantize_blocks_scalar);
      stream_rows<T>(x, row.data(), y + r, w.k, n_out, 1);
    }
  }
};

#ifdef KVLAB_X86
// The SIMD ISAs: their register tiles (matmul_simd.h, compiled in isa_avx2.cc / isa_avx512.cc).
template <class V, auto kTile, auto kStreamRows, auto kStreamBlockRows, auto kDequantize>
struct SimdKernel {
  static constexpr int kTileRows = 4;
  static constexpr int kTileTokens = V::kMatmulTokens;
  static void dequantize(BlockFormat f, const uint8_t* codes, const float* scales, int64_t n_blocks, float* out) {
    kDequantize(f, codes, scales, n_blocks, out);
  }
  template <int R, int T>
  static void tile(const float* x, const float* w, float* y, int64_t k, int64_t n_out, uintptr_t prefetch) {
    kTile(R, T, x, w, y, k, n_out, prefetch);
  }
  template <int T>
  static void stream_rows(const float* x, const float* w, float* y, int64_t k, int64_t n_out, int64_t n_rows) {
    kStreamRows(T, x, w, y, k, n_out, n_rows);
  }
  template <int T>
  static void stream_block_rows(const float* x, const BlockMatrix& w, float* y, int64_t n_out, int64_t n_rows) {
    kStreamBlockRows(T, x, w, y, n_out, n_rows);
  }
};
using Avx2Kernel = SimdKernel<Vec8, avx2::matmul_tile, avx2::matmul_stream_rows, avx2::matmul_stream_block_rows,
                              avx2::dequantize_blocks>;
using Avx512Kernel = SimdKernel<Vec16, avx512::matmul_tile, avx512::matmul_stream_rows,
                                avx512::matmul_stream_block_rows, avx512::dequantize_blocks>;
#endif  // KVLAB_X86

// ---------------------------------------------------------------------------------------------
// Blocking and threads (shared by every ISA; none of it changes what a dot computes)

// Rows [r0, r1) of w as f32: the matrix itself, or the rows dequantized into the thread's scratch
// (once: the next call for the same rows finds them there).
template <class K>
const float* weight_rows(const Problem& p, int64_t r0, int64_t r1, Scratch& s) {
  if (!p.blocks) return p.w + r0 * p.k;
  if (s.first != r0 || s.count != r1 - r0) {  // r1 > r0, so count 0 never matches
    const size_t n = size_t((r1 - r0) * p.k);
    if (s.rows.size() < n) s.rows.resize(n);
    dequantize_range(*p.blocks, r0, r1, s.rows.data(), K::dequantize);
    s.first = r0;
    s.count = r1 - r0;
  }
  return s.rows.data();
}

// Rows [o, o + R) (f32, starting at w) against tokens [t0, t1): full T-token tiles, then one
// narrower tile. The first tile reads these rows from memory (the others find them in L1) and
// prefetches the next R rows, which this loop reads next: 4 interleaved rows are short streams
// that the hardware prefetchers miss (10 GB/s instead of 30 from DRAM on one thread at
// n_tokens = 4, k = 576).
template <class K, int R>
void run_row_tile(const Problem& p, const float* w, int64_t o, int64_t t0, int64_t t1) {
  constexpr int T = K::kTileTokens;
  static_assert(T <= 4, "add the narrower tiles below");
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
void run_block(const Problem& p, int64_t r0, int64_t r1, int64_t t0, int64_t t1, Scratch& s) {
  constexpr int T = K::kTileTokens;
  const int64_t n = t1 - t0;
  if (n <= T) {  // each row of w is used once: read the rows as streams
    const float* x = p.x + t0 * p.k;
    float* y = p.y + t0 * p.n_out + r0;
    with_rows(int(n), [&]<int Tn>() {
      if constexpr (Tn <= T) {
        if (p.blocks) {
          K::template stream_block_rows<Tn>(x, rows_from(*p.blocks, r0), y, p.n_out, r1 - r0);
        } else {
          K::template stream_rows<Tn>(x, p.w + r0 * p.k, y, p.k, p.n_out, r1 - r0);
        }
      }
    });
    return;
  }
  const float* w = weight_rows<K>(p, r0, r1, s);
  constexpr int R = K::kTileRows;
  int64_t o = r0;
  for (; o + R <= r1; o += R) run_row_tile<K, R>(p, w + (o - r0) * p.k, o, t0, t1);
  for (; o < r1; ++o) run_row_tile<K, 1>(p, w + (o - r0) * p.k, o, t0, t1);
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
  // w block comes from memory once (and is dequantized once) and then stays in L2.
  auto block = [&](int64_t it, Scratch& s) {
    const int64_t r0 = it / b.n_token_blocks * b.rows;
    const int64_t t0 = it % b.n_token_blocks * b.tokens;
    run_block<K>(p, r0, std::min(r0 + b.rows, p.n_out), t0, std::min(t0 + b.tokens, p.n_tokens), s);
  };
  if (n_threads <= 1 || n_blocks <= 1) {
    Scratch& s = thread_scratch();
    s.count = 0;
    for (int64_t it = 0; it < n_blocks; ++it) block(it, s);
    return;
  }
#pragma omp parallel num_threads(n_threads)
  {
    Scratch& s = thread_scratch();
    s.count = 0;
#pragma omp for schedule(static)
    for (int64_t it = 0; it < n_blocks; ++it) block(it, s);
  }
}

void dispatch(Isa isa, const Problem& p) {
  KVLAB_CHECK(int(isa) <= int(detected_isa()));
  if (p.n_tokens == 0 || p.n_out == 0) return;
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

}  // namespace

void matmul_isa(Isa isa, const float* x, int64_t n_tokens, int64_t k, const float* w, int64_t n_out,
                float* y) {
  KVLAB_CHECK(n_tokens >= 0 && k >= 0 && n_out >= 0);
  dispatch(isa, Problem{x, n_tokens, k, w, nullptr, n_out, y});
}

void matmul(const float* x, int64_t n_tokens, int64_t k, const float* w, int64_t n_out, float* y) {
  matmul_isa(active_isa(), x, n_tokens, k, w, n_out, y);
}

int64_t block_code_bytes(BlockFormat f, int64_t k) { return f == BlockFormat::kQ4_1 ? k / 2 : k; }
int64_t block_scale_floats(BlockFormat f, int64_t k) {
  return (f == BlockFormat::kQ4_1 ? 2 : 1) * (k / kWeightBlock);
}

void dequantize_rows(const BlockMatrix& w, int64_t r0, int64_t r1, float* out) {
  KVLAB_CHECK(w.k % kWeightBlock == 0 && 0 <= r0 && r0 <= r1);
  dequantize_range(w, r0, r1, out, dequantize_blocks_scalar);
}

void matmul_isa(Isa isa, const float* x, int64_t n_tokens, const BlockMatrix& w, int64_t n_out, float* y) {
  KVLAB_CHECK(n_tokens >= 0 && w.k > 0 && w.k % kWeightBlock == 0 && n_out >= 0);
  dispatch(isa, Problem{x, n_tokens, w.k, nullptr, &w, n_out, y});
}

void matmul(const float* x, int64_t n_tokens, const BlockMatrix& w, int64_t n_out, float* y) {
  matmul_isa(active_isa(), x, n_tokens, w, n_out, y);
}

}  // namespace kvlab
