// Fused decode-attention kernels: the two products of attention over one packed block of one
// kv head (kernels/cpu/kv_format.h), read straight from the packed bytes, for all the query rows
// that share that kv head at once (GQA: each K/V element is loaded once for all its heads).
//
//   kv_scores:      s[r * n + j]    = sum_c q[r * d + c] * K(j, c)        r < rows, j < n
//   kv_accumulate:  acc[r * d + c] += sum_j p[r * n + j] * V(j, c)
//
// q is already multiplied by the softmax scale; p are the (unnormalized) probabilities of the
// online softmax (kernels/cpu/softmax.h). SIMD with runtime dispatch (AVX-512, AVX2, scalar).
//
// Batch invariance: each output element depends only on its own row of q (or p) and the block;
// how many rows are passed together never changes a result.
#pragma once

#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/kv_format.h"

namespace kvlab {

void kv_scores(const KvBlock& k, const float* q, int rows, float* s);
void kv_accumulate(const KvBlock& v, const float* p, int rows, float* acc);

// The same on an explicit ISA (tests, benchmarks). REQUIRES: the CPU supports `isa`.
void kv_scores_isa(Isa isa, const KvBlock& k, const float* q, int rows, float* s);
void kv_accumulate_isa(Isa isa, const KvBlock& v, const float* p, int rows, float* acc);

// Whether kv_scores_isa / kv_accumulate_isa on `isa` take an integer path for this block, which
// quantizes the scale-folded query (keys) or probabilities (values) to 8 bits (error bounds above).
bool kv_scores_quantize_query(Isa isa, const KvBlock& k);
bool kv_accumulate_quantize_probs(Isa isa, const KvBlock& v);

}  // namespace kvlab
