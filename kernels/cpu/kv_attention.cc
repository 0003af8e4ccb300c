// The public entry points of the fused decode-attention kernels (kv_attention.h): which path
// takes a block. The kernels themselves, by file (kv_kernels_internal.h has the map):
//   kv_attention_scalar.cc   scalar reference, any block
//   kv_dense.h               f32 / f16 / bf16 / fp8 blocks on AVX2 and AVX-512
//   kv_int_f32.h             integer blocks in f32 arithmetic on AVX2 and AVX-512
//   kv_int_vnni.cc           2/3/4-bit integer blocks on AVX-512 VNNI
//   kv_int_avx2.cc           2/3/4-bit integer blocks on AVX2 (vpmaddubsw)
//
// Batch invariance comes from one rule, as in matmul.cc: every output element has exactly one
// sequence of operations per ISA (each file states its own), and the row chunk (4 rows), token
// tile or channel tile an output lands in only decides which independent outputs run side by
// side.
//
// Speed (docs/results.md has the tables). Decode attention over a long context is a stream of
// blocks from DRAM; a core keeps only ~24 demand misses in flight, so each kernel reads ahead
// the block that follows its own (kv_kernels_internal.h), and the dense kernels keep 4 rows x
// kTile accumulators so that each K/V element is loaded and converted once for all the query
// rows sharing its kv head.
#include "kernels/cpu/kv_attention.h"

#include "base/check.h"
#include "kernels/cpu/kv_kernels_internal.h"
#include "kernels/cpu/simd.h"

namespace kvlab {

void kv_scores_isa(Isa isa, const KvBlock& k, const float* q, int rows, float* s) {
  KVLAB_CHECK(int(isa) <= int(detected_isa()));
#ifdef KVLAB_X86
  if (k.d <= kMaxSimdD) {
    if (isa == Isa::kAvx512) return avx512::scores(k, q, rows, s);
    if (isa == Isa::kAvx2) return avx2::scores(k, q, rows, s);
  }
#endif
  scores_scalar(k, q, rows, s);
}

void kv_accumulate_isa(Isa isa, const KvBlock& v, const float* p, int rows, float* acc) {
  KVLAB_CHECK(int(isa) <= int(detected_isa()));
#ifdef KVLAB_X86
  if (v.d <= kMaxSimdD) {
    if (isa == Isa::kAvx512) return avx512::accumulate(v, p, rows, acc);
    if (isa == Isa::kAvx2) return avx2::accumulate(v, p, rows, acc);
  }
#endif
  accumulate_scalar(v, p, rows, acc);
}

bool kv_scores_quantize_query(Isa isa, const KvBlock& k) {
  if (k.d > kMaxSimdD) return false;
  if (isa == Isa::kAvx512) return vnni_scores_take(k);
  if (isa == Isa::kAvx2) return avx2_int_scores_take(k);
  return false;
}

bool kv_accumulate_quantize_probs(Isa isa, const KvBlock& v) {
  if (v.d > kMaxSimdD) return false;
  if (isa == Isa::kAvx512) return vnni_accumulate_take(v);
  if (isa == Isa::kAvx2) return avx2_int_accumulate_take(v);
  return false;
}

void kv_scores(const KvBlock& k, const float* q, int rows, float* s) {
  kv_scores_isa(active_isa(), k, q, rows, s);
}

void kv_accumulate(const KvBlock& v, const float* p, int rows, float* acc) {
  kv_accumulate_isa(active_isa(), v, p, rows, acc);
}

}  // namespace kvlab
