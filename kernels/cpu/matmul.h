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

}  // namespace kvlab
