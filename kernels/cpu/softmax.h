// The online-softmax step of attention over one block of scores (flash-attention style), SIMD
// with runtime dispatch (AVX-512, AVX2, scalar; one algorithm, see softmax.cc).
#pragma once

#include <cstdint>

#include "kernels/cpu/cpu_features.h"

namespace kvlab {

// s: [rows, n] scores of one block. Key j is hidden from row r when its position
// (key_pos ? key_pos[j] : first_pos + j) is greater than row_pos[r]; row_pos null hides nothing.
// For each row: m[r] (running max) and l[r] (running sum of exp) are updated, acc[r * d .. +d)
// is multiplied by exp(m_old - m_new) when the max grows (and only then), and s[r, :] becomes
// exp(s - m_new) (0 where hidden). A row whose keys are all hidden (or whose visible scores are
// all -inf) is left unchanged (its s zeroed). m starts at -infinity and l at 0: the first block
// that shows a row anything multiplies its acc by exp(-inf) = 0. NaN scores are ignored by the
// max and give NaN probabilities (visible in l and acc).
//
// Each row is computed alone, in an order fixed per ISA: results never depend on `rows`.
// The probabilities are within 1 ulp (vector ISAs) / 1.2 ulp (scalar) of exp(s - m_new) of the
// f32 difference; l is their sum (16 / 8 / 1 partial sums, then a fixed tree).
void online_softmax_block(float* s, int rows, int n, const int32_t* key_pos, int32_t first_pos,
                          const int32_t* row_pos, float* m, float* l, float* acc, int d);
void online_softmax_block_isa(Isa isa, float* s, int rows, int n, const int32_t* key_pos, int32_t first_pos,
                              const int32_t* row_pos, float* m, float* l, float* acc, int d);

// x[i] = exp(x[i]) for i < n: max error 0.90 ulp (AVX-512, AVX2) / 1.14 ulp (scalar) over a
// dense sweep of the f32 range, subnormal results kept (0 below about -103.97), +inf above
// 88.72, NaN stays NaN; the same bits for any n and alignment on one ISA.
void exp_inplace(float* x, int64_t n);
void exp_inplace_isa(Isa isa, float* x, int64_t n);

}  // namespace kvlab
