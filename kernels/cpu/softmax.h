// The online-softmax step of attention over one block of scores (flash-attention style), SIMD
// with runtime dispatch.
#pragma once

#include <cstdint>

#include "kernels/cpu/cpu_features.h"

namespace kvlab {

// s: [rows, n] scores of one block. Key j is hidden from row r when its position
// (key_pos ? key_pos[j] : first_pos + j) is greater than row_pos[r]; row_pos null hides nothing.
// For each row: m[r] (running max) and l[r] (running sum of exp) are updated, acc[r * d .. +d)
// is multiplied by exp(m_old - m_new) when the max grows, and s[r, :] becomes
// exp(s - m_new) (0 where hidden). A row whose keys are all hidden is left unchanged (its s
// zeroed). m starts at -infinity and l at 0.
void online_softmax_block(float* s, int rows, int n, const int32_t* key_pos, int32_t first_pos,
                          const int32_t* row_pos, float* m, float* l, float* acc, int d);
void online_softmax_block_isa(Isa isa, float* s, int rows, int n, const int32_t* key_pos, int32_t first_pos,
                              const int32_t* row_pos, float* m, float* l, float* acc, int d);

// x[i] = exp(x[i]) for i < n: max relative error a few ulp over the whole f32 range (0 below
// about -87.3, +inf above 88.7), the same bits for any n and alignment on one ISA.
void exp_inplace(float* x, int64_t n);
void exp_inplace_isa(Isa isa, float* x, int64_t n);

}  // namespace kvlab
