// The weighted-value half of attention over one block of keys (the scores half is a matmul,
// kernels/cpu/matmul.h, which has the same per-ISA fixed order):
//
//   acc[r, :] += sum_j p[r, j] * v[j, :]     p: [rows, n]   v: [n, d], rows ldv apart   acc: [rows, d]
//
// Every acc element is updated key by key in order j = 0 .. n-1 (one fused multiply-add per key
// on AVX2 / AVX-512, a multiply and an add in the scalar fallback), whatever the number of rows,
// so results do not depend on how a caller groups rows (batch invariance). SIMD with runtime
// dispatch.
#pragma once

#include <cstdint>

#include "kernels/cpu/cpu_features.h"

namespace kvlab {

void attn_accumulate(const float* p, int rows, int n, const float* v, int64_t ldv, int d, float* acc);
// REQUIRES: the CPU supports `isa`.
void attn_accumulate_isa(Isa isa, const float* p, int rows, int n, const float* v, int64_t ldv, int d,
                         float* acc);

}  // namespace kvlab
