// Fused decode-attention kernels: the two products of attention over one packed block of one
// kv head (kernels/cpu/kv_format.h), read straight from the packed bytes, for all the query rows
// that share that kv head at once (GQA: each K/V element is loaded once for all its heads).
//
//   kv_scores:      s[r * n + j]    = sum_c q[r * d + c] * K(j, c)        r < rows, j < n
//   kv_accumulate:  acc[r * d + c] += sum_j p[r * n + j] * V(j, c)
//
// q is already multiplied by the softmax scale; p are the (unnormalized) probabilities of the
// online softmax (kernels/cpu/softmax.h). Any n >= 1, any d >= 1 (d > 1024 runs the scalar code),
// any rows >= 1; rows are processed in chunks of 4, each chunk reading the block once. No heap
// allocation; a few KiB of stack. SIMD with runtime dispatch (AVX-512, AVX2, scalar).
//
// How each format is read (details and the fixed operation order of every ISA in
// kv_attention.cc):
//   kF32 / kF16 / kBF16 / kFp8   converted in registers (vcvtph2ps, a shift, e4m3 via the f16
//                                bits); fp8's token scale multiplies the finished dot (scores)
//                                or p (values).
//   kIntChannel keys             the channel scale is folded into the query once per token
//                                group, the zero term added once per row and group (KIVI keys;
//                                a block of several groups gives what each group gives alone).
//   kIntToken values             the token scale is folded into p, the zero term summed per
//                                (row, group) once (KIVI values).
//   kIntToken keys, kIntChannel values   dequantized in registers / on a small stack tile.
//
// Integer paths (AVX-512 with VNNI and VBMI, 2/3/4-bit codes): kIntChannel keys, kIntToken keys
// with d = 128 and group % 32 == 0, and kIntToken values with group % 16 == 0 (d / group a power
// of two <= 16) take vpdpbusd with the other operand quantized to 8 bits, which adds an error
// bounded, per output, by
//   keys (kIntChannel):  qs = max_c |q[c] * scale[c]| / 127,
//                        |s - exact| <= (qs / 2) * sum_c |code(j, c) - m|
//   keys (kIntToken):    qs = max_c |q[c]| / 127,
//                        |s - exact| <= (qs / 2) * sum_c scale[j, g(c)] * |code(j, c) - m|
//   values (kIntToken):  ps = max_{j, g} p[j] * scale[j, g] / 255 (per block of <= 128 tokens),
//                        |acc - exact| <= (ps / 2) * sum_j |code(j, c) - m|
// with m = (2^bits - 1) / 2 (the mean rounding effect is added back exactly), plus f32 rounding.
// On keys / values with an outlier channel this is 4-17% of the format's own error in RMS
// (tests/kv_attention_test.cc, OperandQuantizationWellBelowFormatError: 4-bit kIntChannel keys
// 0.17, 3-bit 0.08, 2-bit 0.04; 4-bit kIntToken values 0.08-0.13, 2-bit 0.02). AVX2
// (kv_int_avx2.cc) takes the same scheme with vpmaddubsw for 2- to 4-bit kIntChannel keys and
// kIntToken values (group % 32 == 0), and with 16-bit operands (qs = max / 32767,
// ps = max / 32767, vpmaddwd) for 8-bit ones; AVX-512 hands it the blocks VNNI does not take
// (8-bit codes; every integer block on an AVX-512 CPU without VNNI). Other blocks and ISAs use f32 arithmetic, exact to
// within f32 rounding:
//   |error| <= (len + 4) u * sum |terms|,  u = 2^-24, len = d (scores) or n + 1 (values).
// kv_scores_quantize_query / kv_accumulate_quantize_probs say which path a block takes.
//
// Batch invariance: each output element depends only on its own row of q (or p) and the block;
// how many rows are passed together never changes a result (one fixed sequence of operations per
// output and ISA). Results differ between ISAs.
//
// Memory: the kernels stream the block once per chunk of 4 rows. Their speed from DRAM depends
// on how blocks lie in memory (measured in kv_attention.cc): a kv head's blocks one after the
// other keep the hardware prefetchers ahead; small blocks scattered between other heads' data
// start cold every time.
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
// quantizes the query (keys) or the probabilities (values) to 8 bits (error bounds above).
bool kv_scores_quantize_query(Isa isa, const KvBlock& k);
bool kv_accumulate_quantize_probs(Isa isa, const KvBlock& v);

}  // namespace kvlab
