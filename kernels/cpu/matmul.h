// f32 matrix products for the decoder's linear layers:
//
//   y[t, o] = sum_i x[t, i] * w[o, i]      x: [n_tokens, k]   w: [n_out, k]   y: [n_tokens, n_out]
//
// all row-major and contiguous. Batch invariance is the contract: each y[t, o] is summed in an
// order that depends only on k and the ISA, never on n_tokens, on t, on the thread count or on
// the alignment of the pointers. A sequence decoded alone and the same sequence decoded inside
// a batch therefore get bit-identical logits.
//
// OpenMP threads split the output rows; each thread streams its rows of w once for all tokens.
#pragma once

#include <cstdint>

#include "kernels/cpu/cpu_features.h"

namespace kvlab {

void matmul(const float* x, int64_t n_tokens, int64_t k, const float* w, int64_t n_out, float* y);
// The same with an explicit ISA (tests compare every ISA with kScalar).
// REQUIRES: the CPU supports `isa`.
void matmul_isa(Isa isa, const float* x, int64_t n_tokens, int64_t k, const float* w, int64_t n_out,
                float* y);

}  // namespace kvlab
