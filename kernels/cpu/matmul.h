// f32 matrix products for the decoder's linear layers:
//
//   y[t, o] = sum_i x[t, i] * w[o, i]      x: [n_tokens, k]   w: [n_out, k]   y: [n_tokens, n_out]
//
// all row-major and contiguous. Batch invariance is the contract: each y[t, o] is summed in an
// order that depends only on k and the ISA, never on n_tokens, on t, on the thread count or on
// the alignment of the pointers. A sequence decoded alone and the same sequence decoded inside
// a batch therefore get bit-identical logits.
//
// Results differ between ISAs, each of which has its own fixed summation order (see
// matmul.cc); all are within about k * 2^-24 * sum_i |x[t, i] * w[o, i]| of the exact sum.
// FTZ/DAZ settings of the calling thread are not copied to the OpenMP worker threads: leave
// them at their defaults if subnormal inputs must give the same bits with any thread count.
//
// OpenMP threads split the output rows (omp_get_max_threads() of them; one thread for products
// under 64K multiply-adds); each thread streams its rows of w once for all tokens. No heap
// allocation. REQUIRES: y overlaps neither x nor w.
#pragma once

#include <cstdint>

#include "kernels/cpu/cpu_features.h"

namespace kvlab {

void matmul(const float* x, int64_t n_tokens, int64_t k, const float* w, int64_t n_out, float* y);
// The same with an explicit ISA (tests and benchmarks run every ISA the CPU supports).
// REQUIRES: the CPU supports `isa`.
void matmul_isa(Isa isa, const float* x, int64_t n_tokens, int64_t k, const float* w, int64_t n_out,
                float* y);

// A weight matrix [n_out, k] kept in one of GGUF's block formats (32 consecutive elements of a row
// per block), as two planes, both row-major:
//
//   kQ4_1  codes [n_out, k / 2] bytes, 16 per block: element j < 16 of a block is the low nibble
//          of its byte j, element j + 16 the high nibble (ggml's order); scales [n_out, k / 32, 2]
//          f32 (d, m): w = d * q + m.
//   kQ8_0  codes [n_out, k] int8; scales [n_out, k / 32] f32 d: w = d * q.
//
// d and m are the file's f16 values widened, so d * q is exact in f32 (11 + 4 or 11 + 8
// significant bits) and w is, bit for bit, the float ggml's dequantizer gives (model/ggml_types.h)
// whether or not a compiler fuses the multiply and the add. The product below dequantizes rows
// as it goes (decode: in registers; prefill: into per-thread scratch) and runs the f32 dots on
// them: y is bit-identical to matmul() on the dequantized matrix (same ISA), while each step
// reads 6 (Q4_1) or 9 (Q8_0) bits per weight instead of 32.
enum class BlockFormat : uint8_t { kQ4_1, kQ8_0 };
inline constexpr int64_t kWeightBlock = 32;  // elements per block
struct BlockMatrix {
  BlockFormat format = BlockFormat::kQ4_1;
  const uint8_t* codes = nullptr;
  const float* scales = nullptr;
  int64_t k = 0;  // a multiple of kWeightBlock
};
// Bytes of codes and of scales per row.
int64_t block_code_bytes(BlockFormat f, int64_t k);
int64_t block_scale_floats(BlockFormat f, int64_t k);
// Rows [r0, r1) of w as f32, into out[(r1 - r0) * k] (the scalar code; the product uses the ISA's).
void dequantize_rows(const BlockMatrix& w, int64_t r0, int64_t r1, float* out);

void matmul(const float* x, int64_t n_tokens, const BlockMatrix& w, int64_t n_out, float* y);
void matmul_isa(Isa isa, const float* x, int64_t n_tokens, const BlockMatrix& w, int64_t n_out, float* y);

}  // namespace kvlab
