// The public entry points of the fused decode-attention kernels (kv_attention.h): which path
// takes a block. The kernels themselves, by file (kv_kernels_internal.h has the map):
//   kv_attention_scalar.cc   scalar reference, any block
//   kv_dense.h               f32 / f16 / bf16 / fp8 blocks on AVX2 and AVX-512
//   kv_int_f32.h             integer blocks in f32 arithmetic on AVX2 and AVX-512
//   kv_int_vnni.cc           2/3/4-bit integer blocks on AVX-512 VNNI; the others the AVX2
//                            integer paths take go to those on AVX-512 too (8-bit codes)
//   kv_int_avx2.cc           2/3/4/8-bit integer blocks on AVX2 (vpmaddubsw, vpmaddwd)
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

#include <algorithm>

#include "base/check.h"
#include "kernels/cpu/kv_kernels_internal.h"
#include "kernels/cpu/simd.h"

namespace kvlab {

namespace {

// kIntChannel blocks of several token groups (kv_format.h) go to the kernels one group at a
// time, through a stack buffer of kSplitRows rows of one group, except on the paths that take
// the groups in one pass themselves (the integer scores: avx2_int_scores_take,
// vnni_scores_take): the same operations per output.
constexpr int kSplitRows = 4;
constexpr int kMaxSplitGroup = 512;  // tokens per group split this way (16 KiB of stack at most)

bool split_groups(Isa isa, const KvBlock& b, bool scores) {
  if (b.format != KvFormat::kIntChannel || channel_groups(b) <= 1) return false;
  KVLAB_CHECK(b.group <= kMaxSplitGroup && (int64_t(b.group) * b.bits) % 8 == 0);
  if (!scores) return true;
  if (isa == Isa::kAvx512) return !vnni_scores_take(b);
  return !(isa == Isa::kAvx2 && avx2_int_scores_take(b));
}

// f(group t as a block, its first token j0, first row r0, rows rc) for each token group and
// chunk of kSplitRows rows.
template <class F>
void for_group_chunks(const KvBlock& b, int rows, F&& f) {
  for (int t = 0; t < channel_groups(b); ++t) {
    const KvBlock sub = channel_sub_block(b, t);
    for (int r0 = 0; r0 < rows; r0 += kSplitRows) {
      f(sub, t * channel_group_tokens(b), r0, std::min(kSplitRows, rows - r0));
    }
  }
}

void scores_by_group(Isa isa, const KvBlock& k, const float* q, int rows, float* s) {
  alignas(64) float buf[kSplitRows * kMaxSplitGroup];
  for_group_chunks(k, rows, [&](const KvBlock& sub, int j0, int r0, int rc) {
    kv_scores_isa(isa, sub, q + int64_t(r0) * k.d, rc, buf);
    for (int r = 0; r < rc; ++r) std::copy_n(buf + r * sub.n, sub.n, s + int64_t(r0 + r) * k.n + j0);
  });
}

void accumulate_by_group(Isa isa, const KvBlock& v, const float* p, int rows, float* acc) {
  alignas(64) float buf[kSplitRows * kMaxSplitGroup];
  for_group_chunks(v, rows, [&](const KvBlock& sub, int j0, int r0, int rc) {
    for (int r = 0; r < rc; ++r) std::copy_n(p + int64_t(r0 + r) * v.n + j0, sub.n, buf + r * sub.n);
    kv_accumulate_isa(isa, sub, buf, rc, acc + int64_t(r0) * v.d);
  });
}

}  // namespace

void kv_scores_isa(Isa isa, const KvBlock& k, const float* q, int rows, float* s) {
  KVLAB_CHECK(int(isa) <= int(detected_isa()));
  if (split_groups(isa, k, true)) return scores_by_group(isa, k, q, rows, s);
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
  if (split_groups(isa, v, false)) return accumulate_by_group(isa, v, p, rows, acc);
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
  if (split_groups(isa, k, true)) return kv_scores_quantize_query(isa, channel_sub_block(k, 0));
  if (isa == Isa::kAvx512) return vnni_scores_take(k);
  if (isa == Isa::kAvx2) return avx2_int_scores_take(k);
  return false;
}

bool kv_accumulate_quantize_probs(Isa isa, const KvBlock& v) {
  if (v.d > kMaxSimdD) return false;
  if (split_groups(isa, v, false)) return kv_accumulate_quantize_probs(isa, channel_sub_block(v, 0));
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
