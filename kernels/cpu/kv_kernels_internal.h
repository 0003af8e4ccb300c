// What the decode-attention kernel files share (kv_attention.h and softmax.h are the public face):
// small helpers without intrinsics, the e4m3 table, the read-ahead of the next block, and the
// entry points of each ISA's kernels, which kv_attention.cc dispatches to.
//
//   kv_attention.cc            public entry points, which path takes a block
//   kv_attention_scalar.cc     the scalar reference (the order of operations the others follow)
//   kv_dense.h                 f32 / f16 / bf16 / fp8 blocks, written once over the vector width
//   kv_int_f32.h               integer blocks through f32 arithmetic, written once over the width
//   softmax_simd.h             exp and the online softmax, written once over the width
//   matmul_simd.h              the matmul's register tiles (matmul.cc), written once over the width
//   block_dequant.h            the matmul's block-format weights to f32: scalar, and once over the width
//   isa_entry.inc              the entry points of all of these for one ISA
//   isa_avx2.cc                those instantiated for AVX2 (8 lanes)
//   isa_avx512.cc              those instantiated for AVX-512 (16 lanes)
//   kv_int_vnni.cc             integer dot products on AVX-512 VNNI (2/3/4-bit codes; other
//                              blocks the AVX2 integer paths take are handed to them)
//   kv_int_avx2.cc             integer dot products on AVX2 (vpmaddubsw, vpmaddwd; 2/3/4/8 bits)
//   simd_vec.h                 the vector width abstraction (Vec8 = AVX2, Vec16 = AVX-512)
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kernels/cpu/kv_codec.h"
#include "kernels/cpu/kv_format.h"
#include "kernels/cpu/matmul.h"

namespace kvlab {

// Full unrolling of the short fixed loops over register tiles: partly unrolled loops index the
// tile arrays at run time and GCC then keeps them in memory.
#define KVLAB_UNROLL _Pragma("GCC unroll 16")

// Head sizes above this take the scalar path (the SIMD paths keep per-token f32 tiles of d
// channels on the stack).
constexpr int kMaxSimdD = 1024;

// e4m3 -> f32 of every byte (kv_codec.h), for the scalar reader.
constexpr std::array<float, 256> make_e4m3_table() {
  std::array<float, 256> t{};
  for (int b = 0; b < 256; ++b) t[b] = e4m3_value(b);
  return t;
}
inline constexpr std::array<float, 256> kE4m3 = make_e4m3_table();

// The SIMD paths decode e4m3 through its f16 bit pattern, which is 2^-8 of its value (simd_vec.h);
// the kernels fold the 2^8 into the per-token scale (exact).
constexpr float kE4m3Unscale = 256.0f;

inline int groups_of(const KvBlock& b) { return b.d / b.group; }

// Calls f.template operator()<R>() for R = rows (1..4).
template <class F>
inline void with_rows(int rows, F&& f) {
  switch (rows) {
    case 1: f.template operator()<1>(); break;
    case 2: f.template operator()<2>(); break;
    case 3: f.template operator()<3>(); break;
    default: f.template operator()<4>(); break;
  }
}

// Asks for the cache line at p (prefetcht1) exactly where it is written. GCC's loop
// distribution (-O3) may split __builtin_prefetch calls, which depend on nothing, out of the loop
// they pace and then drop or bunch them: ReadAheadPace's multiply-only share() lost every
// prefetch that way (int8 at the 8B row from DRAM 4.3 -> 6.9 ms). A volatile asm is neither
// removed nor moved out of its loop.
inline void read_line(const void* p) {
#if defined(__x86_64__) || defined(__i386__)
  __asm__ volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 0, 2);
#endif
}

// Read-ahead. A decode step reads a sequence's blocks one after the other, and each kernel asks
// for the lines of the block read after its own a few at a time, in lockstep with its own reads,
// so that block's first lines are on their way before it starts (the hardware prefetchers alone
// start every block cold: measured 1.5x on f16 and int4 decode at 32K). The caller names that
// block (KvBlock::next: the attention engine gives a head's values after its keys, and the next
// kv head's or the next block page's keys after them); without it the kernels take the bytes
// that follow their block, where the block stores put the next kv head (kvcache/block_store.h).
struct ReadAhead {
  const uint8_t* p = nullptr;  // null: none
  int64_t bytes = 0;
};

// The read-ahead region of block b: b.next's codes, else as many bytes as b's rows span, after
// them.
inline ReadAhead read_ahead(const KvBlock& b) {
  if (b.next) return {b.next->data, block_data_bytes(*b.next)};
  const int64_t span = block_rows(b) * b.stride;
  return {b.data + span, span};
}

// The lines of [off, off + bytes) of the read-ahead region (clipped to it).
inline void read_ahead_lines(const ReadAhead& a, int64_t off, int64_t bytes) {
  if (!a.p) return;
  const int64_t end = std::min(off + bytes, a.bytes);
  for (int64_t o = off; o < end; o += 64) read_line(a.p + o);
}

// The read-ahead region's lines paced over `total` units of a block's work: share(done, count)
// asks for the share of the lines that matches units [done, done + count), so that the next
// block's reads spread over all of this block's arithmetic instead of a burst at its start.
// Lines per unit in 32.32 fixed point, rounded up (the last unit reaches the last line): one
// division per block instead of two per call (int64 divisions were ~4% of an AVX2 int4 block).
struct ReadAheadPace {
  const uint8_t* p = nullptr;  // null: none
  int64_t lines = 0;
  uint64_t per_unit = 0;

  ReadAheadPace(const ReadAhead& a, int64_t total) : p(a.p), lines((a.bytes + 63) / 64) {
    if (p && total > 0) per_unit = ((uint64_t(lines) << 32) + uint64_t(total) - 1) / uint64_t(total);
  }
  void share(int64_t done, int64_t count) const {
    if (!p) return;
    const int64_t first = line_at(done), last = line_at(done + count);
    for (int64_t l = first; l < last; ++l) read_line(p + 64 * l);
  }
  int64_t line_at(int64_t unit) const { return std::min<int64_t>(lines, int64_t((uint64_t(unit) * per_unit) >> 32)); }
};

// The f16 scales and zeros of the block read after b (b.next's, else as many as b's that follow
// each of b's arrays), at once: a few lines.
inline void read_ahead_meta(const KvBlock& b) {
  const int64_t entries = block_scales(b.next ? *b.next : b), bytes = 2 * entries;
  const void* arrays[2] = {b.scale ? b.scale + entries : nullptr, b.zero ? b.zero + entries : nullptr};
  if (b.next) arrays[0] = b.next->scale, arrays[1] = b.next->zero;
  for (const void* a : arrays) {
    for (int64_t o = 0; a && o < bytes; o += 64) read_line(static_cast<const uint8_t*>(a) + o);
  }
}

// The scalar reference, with the contract of kv_scores / kv_accumulate (kv_attention.h).
void scores_scalar(const KvBlock& k, const float* q, int rows, float* s);
void accumulate_scalar(const KvBlock& v, const float* p, int rows, float* acc);

// The entry points of each SIMD ISA (isa_entry.inc defines them in namespaces avx2 and avx512):
// decode attention (kv_attention.h), the online softmax and exp (softmax.h), the matmul's
// register tiles and decode streams over f32 rows or weight blocks (matmul_simd.h: rows 1 or 4,
// tokens 1 .. Vec::kMatmulTokens) and its weight blocks to f32 (block_dequant.h).
#define KVLAB_ISA_ENTRY_POINTS                                                                                   \
  void scores(const KvBlock& k, const float* q, int rows, float* s);                                             \
  void accumulate(const KvBlock& v, const float* p, int rows, float* acc);                                       \
  void online_softmax(float* s, int rows, int n, const int32_t* key_pos, int32_t first_pos,                      \
                      const int32_t* row_pos, float* m, float* l, float* acc, int d);                            \
  void exp_n(float* x, int64_t n);                                                                               \
  void matmul_tile(int rows, int tokens, const float* x, const float* w, float* y, int64_t k, int64_t n_out,     \
                   uintptr_t prefetch);                                                                          \
  void matmul_stream_rows(int tokens, const float* x, const float* w, float* y, int64_t k, int64_t n_out,        \
                          int64_t n_rows);                                                                       \
  void matmul_stream_block_rows(int tokens, const float* x, const BlockMatrix& w, float* y, int64_t n_out,     \
                                int64_t n_rows);                                                             \
  void dequantize_blocks(BlockFormat f, const uint8_t* codes, const float* scales, int64_t n_blocks, float* out);
namespace avx2 {
KVLAB_ISA_ENTRY_POINTS
}  // namespace avx2
namespace avx512 {
KVLAB_ISA_ENTRY_POINTS
}  // namespace avx512
#undef KVLAB_ISA_ENTRY_POINTS

// The integer paths (kv_int_vnni.cc, kv_int_avx2.cc): which blocks they take, and the kernels.
// The *_take functions decide everything (format, bits, group, head size, CPU features).
bool vnni_scores_take(const KvBlock& k);
bool vnni_accumulate_take(const KvBlock& v);
void vnni_scores(const KvBlock& k, const float* q, int rows, float* s);
void vnni_accumulate(const KvBlock& v, const float* p, int rows, float* acc);
bool avx2_int_scores_take(const KvBlock& k);
bool avx2_int_accumulate_take(const KvBlock& v);
void avx2_int_scores(const KvBlock& k, const float* q, int rows, float* s);
void avx2_int_accumulate(const KvBlock& v, const float* p, int rows, float* acc);

}  // namespace kvlab
