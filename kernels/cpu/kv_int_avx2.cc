// AVX2 integer paths for KIVI blocks (declared in kv_kernels_internal.h): vpmaddubsw on byte pairs (2 to 4 bits),
// vpmaddwd on 16-bit pairs (8 bits).
//
// One expansion serves keys and values. Two bit streams A and B (keys: channels c and c + 1 over
// the block's tokens; values: tokens j and j + 1 over the channels) are interleaved byte by
// byte, so that 16-bit word i holds (A byte i, B byte i), and each byte's codes are split out
// with shifts and a mask: a tile of 32 positions (tokens of a key tile, channels of a value tile)
// is two vectors whose words each hold both streams' codes at one position (4 bits: 16 bytes per
// stream, low / high nibble; 2 bits: 8 bytes copied to both 128-bit lanes, shifted per lane by
// vpsrlvd; 3 bits: each stream's 12 bytes gathered per code by vpshufb and aligned by a multiply;
// 8 bits: 16 positions, bytes zero-extended to words). vpmaddubsw multiplies each word's
// two codes by the other operand's byte pair and adds them: keys take u8 codes x s8 query pair
// (qi[c], qi[c + 1]), values u8 probability pair (pi[j], pi[j + 1]) x codes (<= 15, so as s8
// unchanged). The 16-bit lanes take as many pair sums as cannot overflow (keys 4-bit:
// 127 * 15 * 2 = 3810 per pair, 8 steps; values 4-bit: 255 * 15 * 2 = 7650, read as unsigned,
// 8 steps) and are then extended into 32-bit sums, which end in the expansion's position order;
// one fixed shuffle per tile puts them back in natural order before the single f32 fma per
// output. 8-bit codes: vpmaddwd of the 16-bit code pairs and 16-bit operand pairs, 32-bit sums.
//
// The quantization (query per row and block, probabilities per row and chunk of up to 128
// tokens, mean rounding effect added back) is that of the AVX-512 VNNI paths in kv_int_vnni.cc
// (8-bit codes: 16-bit operands), so the error bounds of kv_attention.h hold. Every output has
// one fixed sequence of operations (exact integer sums, then its fma), whatever the rows passed
// together: batch invariant.
//
// Speed (AMD EPYC, family 25 model 17 with AVX2 only exposed, ~2.6 GHz, shared with other jobs: thread CPU time, best of
// many runs). Cycles per block of 128 tokens in L1, scores / accumulate:
//   d = 128, 4 rows: int4 3550 / 2870, int3 4550 / 4150, int2 3180 / 2510, int8 4400 / 4500-6200;
//                    f16 (f32 FMA path) 9550 / 5500
//   d = 64, 3 rows:  int4 1780 / 1370, int2 1640 / 1220
// The loop is bound by vpmaddubsw + vpaddw (0.63 cycles per pair measured, 8 pairs a step at 4
// rows), then by the 32-bit sums spilled at each flush at 4 rows (~15%) and the quantization of
// the other operand (~15%). From DRAM (blocks one after the other, one thread) int4 keys and
// values cost ~3.4 us per block pair against ~2.3 us in L1.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/cpu/kv_kernels_internal.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/simd_vec.h"

namespace kvlab {
namespace {

// Positions (tokens or channels) per tile of the expansion: two vectors of 16 (2 / 4 bits: byte
// pairs) or 8 (8 bits: 16-bit pairs) positions.
constexpr int tile_codes(int bits) { return bits == 8 ? 16 : 32; }
constexpr int kMaxGroups = 8;  // kIntToken groups per token on the value path

#ifdef KVLAB_X86

// Vec8 (simd_vec.h) serves the f32 ends of these paths.
using V8 = Vec8;

// Stand-in for the stream B of an odd last channel (keys) or token (values): codes 0.
alignas(16) constexpr uint8_t kZeroBytes[16] = {};

// The bytes a tile of the expansion spans in one stream.
constexpr int tile_bytes(int bits) { return tile_codes(bits) * bits / 8; }

// The other operand's levels: 8 bits (s8 query, u8 probabilities) against 2- to 4-bit codes,
// 16 bits against 8-bit codes (vpmaddwd; 8-bit codes would overflow vpmaddubsw's pairs and an
// 8-bit operand would not keep the error well below the format's).
constexpr int operand_levels(int bits, bool is_signed) { return bits == 8 ? 32767 : (is_signed ? 127 : 255); }

// Steps (one pair sum of at most pair_max in magnitude per lane each) before a lane of the
// running sums could overflow. 2 / 4 bits, 16-bit lanes: signed sums (keys) up to 32767, sums of
// nonnegative terms (values) read as unsigned, up to 65535. 8 bits: 32-bit lanes, no flush
// needed within the limits the paths take (keys d <= 256, values chunks of <= 128 tokens).
constexpr int steps_in_sums(int bits, bool is_signed) {
  const int pair_max = 2 * operand_levels(bits, is_signed) * ((1 << bits) - 1);
  return bits == 8 ? (1 << 30) : (is_signed ? 32767 : 65535) / pair_max;
}

// ---- Expansion -------------------------------------------------------------------------------

// 8 bytes of streams a and b as the words (a[i], b[i]), i < 8, in both 128-bit lanes.
KVLAB_TARGET_AVX2 inline __m256i pair_bytes(const uint8_t* a, const uint8_t* b) {
  const __m128i w = _mm_unpacklo_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a)),
                                      _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b)));
  return _mm256_broadcastsi128_si256(w);
}

// 3-bit codes straddle bytes: word i of lane L of y[u] gathers (vpshufb) the two bytes that hold
// the code at position p = 16 L + 8 u + i (bit 3p), and a multiply by 2^(13 - 3p % 8) moves the
// code's bits to bits 13..15 (AVX2 has no per-word shift).
struct Expand3Tables {
  alignas(32) uint8_t idx[2][32];
  alignas(32) uint16_t mul[2][16];
};
constexpr Expand3Tables make_expand3_tables() {
  Expand3Tables t{};
  for (int u = 0; u < 2; ++u) {
    for (int L = 0; L < 2; ++L) {
      for (int i = 0; i < 8; ++i) {
        const int bit = 3 * (16 * L + 8 * u + i);
        t.idx[u][16 * L + 2 * i] = uint8_t(bit / 8);  // <= 11 (+1 <= 12): inside the lane's copy
        t.idx[u][16 * L + 2 * i + 1] = uint8_t(bit / 8 + 1);
        t.mul[u][8 * L + i] = uint16_t(1u << (13 - bit % 8));
      }
    }
  }
  return t;
}
constexpr Expand3Tables kExpand3 = make_expand3_tables();

// The 12 bytes at p (32 3-bit codes) in both 128-bit lanes, bytes 12..15 zero; nothing past p + 12
// is read.
KVLAB_TARGET_AVX2 inline __m256i load12x2(const uint8_t* p) {
  int32_t last;
  std::memcpy(&last, p + 8, 4);
  return _mm256_broadcastsi128_si256(_mm_insert_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), last, 2));
}

// The tile of 32 codes of streams a and b starting at bytes a, b (tile_bytes(BITS) bytes each):
// word i of lane L of y[u] holds both streams' codes at position
//   4 bits: 16 L + 2 i + u  (byte 8 L + i, nibble u)      2 bits: 4 i + 2 u + L
//   3 bits: 16 L + 8 u + i;
// 8 bits (16 codes): dword i of y[u] holds both codes of position 8 u + i as 16-bit words.
template <int BITS>
KVLAB_TARGET_AVX2 inline void expand_tile(const uint8_t* a, const uint8_t* b, __m256i (&y)[2]) {
  const __m256i mask = _mm256_set1_epi8(char((1 << BITS) - 1));
  if constexpr (BITS == 4) {
    const __m128i a16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a));
    const __m128i b16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
    const __m256i w = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_unpacklo_epi8(a16, b16)),
                                              _mm_unpackhi_epi8(a16, b16), 1);
    y[0] = _mm256_and_si256(w, mask);
    y[1] = _mm256_and_si256(_mm256_srli_epi16(w, 4), mask);
  } else if constexpr (BITS == 8) {  // 16-bit codes: dword i of y[u] holds position 8u + i
    const __m128i a16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a));
    const __m128i b16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
    y[0] = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(a16, b16));
    y[1] = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(a16, b16));
  } else if constexpr (BITS == 3) {
    const __m256i ra = load12x2(a), rb = load12x2(b);
    KVLAB_UNROLL
    for (int u = 0; u < 2; ++u) {
      const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(kExpand3.idx[u]));
      const __m256i mul = _mm256_load_si256(reinterpret_cast<const __m256i*>(kExpand3.mul[u]));
      const __m256i ya = _mm256_srli_epi16(_mm256_mullo_epi16(_mm256_shuffle_epi8(ra, idx), mul), 13);
      const __m256i yb = _mm256_srli_epi16(_mm256_mullo_epi16(_mm256_shuffle_epi8(rb, idx), mul), 5);
      y[u] = _mm256_or_si256(ya, _mm256_and_si256(yb, _mm256_set1_epi16(0x0700)));
    }
  } else {
    static_assert(BITS == 2);
    const __m256i w = pair_bytes(a, b);
    y[0] = _mm256_and_si256(_mm256_srlv_epi32(w, _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2)), mask);
    y[1] = _mm256_and_si256(_mm256_srlv_epi32(w, _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6)), mask);
  }
}

// acc[L] += the 16-bit lanes of lane L of a16, sign- or zero-extended (dword i = word i of that
// lane).
template <int BITS, bool Signed>
KVLAB_TARGET_AVX2 inline void widen_add(__m256i a16, __m256i (&acc)[2]) {
  if constexpr (BITS == 8) {  // already 32-bit
    acc[0] = _mm256_add_epi32(acc[0], a16);
    return;
  }
  const __m128i lo = _mm256_castsi256_si128(a16), hi = _mm256_extracti128_si256(a16, 1);
  acc[0] = _mm256_add_epi32(acc[0], Signed ? _mm256_cvtepi16_epi32(lo) : _mm256_cvtepu16_epi32(lo));
  acc[1] = _mm256_add_epi32(acc[1], Signed ? _mm256_cvtepi16_epi32(hi) : _mm256_cvtepu16_epi32(hi));
}

// One step: the tile of streams a and b expanded once, then for each row r the running sums
// a16[r][u] += vpmaddubsw of y[u] and row r's operand pair op[r][idx] (in both halves of a dword,
// round_operand; 16-bit lanes); CodesFirst: the codes are the u8 operand (keys), else the pair
// (values). 8 bits: a16 += vpmaddwd of y[u] and the 16-bit pair op[r][idx] (32-bit lanes).
template <int R, int BITS, bool CodesFirst>
KVLAB_TARGET_AVX2 inline __attribute__((always_inline)) void madd_step(const uint8_t* a, const uint8_t* b,
                                                                      const uint32_t* const (&op)[R], int idx,
                                                                      __m256i (&a16)[R][2]) {
  __m256i y[2];
  expand_tile<BITS>(a, b, y);
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    const __m256i o = _mm256_set1_epi32(int(op[r][idx]));
    KVLAB_UNROLL
    for (int u = 0; u < 2; ++u) {
      if constexpr (BITS == 8) {
        a16[r][u] = _mm256_add_epi32(a16[r][u], _mm256_madd_epi16(y[u], o));
      } else {
        a16[r][u] = _mm256_add_epi16(a16[r][u], CodesFirst ? _mm256_maddubs_epi16(y[u], o) : _mm256_maddubs_epi16(o, y[u]));
      }
    }
  }
}

// x[u][L] (dword i: the position of word i of lane L of y[u], expand_tile) -> out[w]: positions
// 8w .. 8w+7 in order.
template <int BITS>
KVLAB_TARGET_AVX2 inline void natural_order(const __m256i (&x)[2][2], __m256i (&out)[4]) {
  if constexpr (BITS == 8) {  // x[u][0] dword i = 8u + i (out[2], out[3] unused: 16 positions)
    out[0] = x[0][0];
    out[1] = x[1][0];
    out[2] = out[3] = _mm256_setzero_si256();
  } else if constexpr (BITS == 3) {  // x[u][L] dword i = 16L + 8u + i
    out[0] = x[0][0];
    out[1] = x[1][0];
    out[2] = x[0][1];
    out[3] = x[1][1];
  } else if constexpr (BITS == 4) {  // x[u][h] dword i = 16h + 2i + u: zip the two nibbles' streams
    KVLAB_UNROLL
    for (int h = 0; h < 2; ++h) {
      const __m256i lo = _mm256_unpacklo_epi32(x[0][h], x[1][h]);  // 0..3 | 8..11 (+16h)
      const __m256i hi = _mm256_unpackhi_epi32(x[0][h], x[1][h]);  // 4..7 | 12..15
      out[2 * h] = _mm256_permute2x128_si256(lo, hi, 0x20);
      out[2 * h + 1] = _mm256_permute2x128_si256(lo, hi, 0x31);
    }
  } else {  // y_k = x[k / 2][k % 2], dword i = 4i + k: a 4 x 8 transpose
    const __m256i a = _mm256_unpacklo_epi32(x[0][0], x[0][1]);  // 0 1 4 5 | 16 17 20 21
    const __m256i b = _mm256_unpacklo_epi32(x[1][0], x[1][1]);  // 2 3 6 7 | 18 19 22 23
    const __m256i c = _mm256_unpackhi_epi32(x[0][0], x[0][1]);  // 8 9 12 13 | 24 25 28 29
    const __m256i e = _mm256_unpackhi_epi32(x[1][0], x[1][1]);  // 10 11 14 15 | 26 27 30 31
    const __m256i f0 = _mm256_unpacklo_epi64(a, b), f1 = _mm256_unpackhi_epi64(a, b);  // 0-3 | 16-19, 4-7 | 20-23
    const __m256i f2 = _mm256_unpacklo_epi64(c, e), f3 = _mm256_unpackhi_epi64(c, e);  // 8-11 | 24-27, 12-15 | 28-31
    out[0] = _mm256_permute2x128_si256(f0, f1, 0x20);
    out[1] = _mm256_permute2x128_si256(f2, f3, 0x20);
    out[2] = _mm256_permute2x128_si256(f0, f1, 0x31);
    out[3] = _mm256_permute2x128_si256(f2, f3, 0x31);
  }
}

// ---- The other operand, quantized -------------------------------------------------------------

constexpr int kChunk = 128;  // tokens per probability quantization (the VNNI paths' chunk)
static_assert(kChunk % 2 == 0, "a chunk is whole token pairs");

// One row's other operand for one block (keys: the query, entries = channels, G = 1) or chunk
// (values: the probabilities, entry e = token e / G, group e % G): x'[e] = x[e / G] * scale[e],
// step = max |x'| / L (L = operand_levels), xi[e] = round(x'[e] / step) and per group g
//   z[g] = sum_e x[e / G] zero[e] + m sum_e (x'[e] - step xi[e]),  m = (2^bits - 1) / 2.
struct QuantOperand {
  // Step p's operand for group g, op[p * G + g]: the pair (xi of token / channel 2p, 2p + 1) of
  // group g, bytes in both 16-bit halves (round_operand) or, for 8-bit codes, 16-bit words.
  alignas(32) uint32_t op[kMaxSimdD / 2 + 16];
  float step;
  float z[kMaxGroups];
};
static_assert(kChunk / 2 * kMaxGroups <= kMaxSimdD / 2 + 16, "a chunk's probability pairs fit");

// pshufb index: bytes [token pair][token][group] -> [token pair][group][token], for G = 1, 2, 4, 8
// (blocks of 2G <= 16 bytes, inside a 128-bit lane).
struct PairTables {
  alignas(32) uint8_t idx[4][32];
};
constexpr PairTables make_pair_tables() {
  PairTables t{};
  for (int lg = 0; lg < 4; ++lg) {
    const int G = 1 << lg;
    for (int i = 0; i < 32; ++i) {
      const int base = i / (2 * G) * (2 * G), g = (i % (2 * G)) / 2, tok = i % 2;
      t.idx[lg][i] = uint8_t(base % 16 + tok * G + g);
    }
  }
  return t;
}
constexpr PairTables kPairTables = make_pair_tables();

// v's lane i belongs to group i % G (G = 2^lg <= 8): out[g] = the sum of group g's lanes, g < G.
KVLAB_TARGET_AVX2 inline void fold_groups(__m256 v, int lg, float* out) {
  if (lg == 3) return _mm256_storeu_ps(out, v);
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));  // lane i: i, i + 4
  if (lg <= 1) x = _mm_add_ps(x, _mm_movehl_ps(x, x));                            // i, i + 2, ...
  if (lg == 0) x = _mm_add_ss(x, _mm_movehdup_ps(x));                             // all
  alignas(16) float l[4];
  _mm_store_ps(l, x);
  for (int g = 0; g < (1 << lg); ++g) out[g] = l[g];
}

// One row's xp[0 .. ep) (ep % 32 == 0, zero past the entries) rounded to the nearest integer of
// xp * inv (ties to even) and written as the operands of the madd steps (QuantOperand::op).
// Returns the integers' sums: lane i holds those of the entries of group i % G. 2-4-bit codes:
// bytes (int8 if Signed, else uint8; the values already lie in range) regrouped
// [pair][group][token] and each pair duplicated into both halves of its dword; 8-bit codes:
// 16-bit words (G = 1).
template <int BITS, bool Signed>
KVLAB_TARGET_AVX2 __m256i round_operand(const float* xp, int ep, int lg, float inv, uint32_t* op) {
  const __m256 vi = _mm256_set1_ps(inv);
  const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPairTables.idx[lg]));
  __m256i sums = _mm256_setzero_si256();  // 8 bits: 32-bit lanes; else 16-bit (<= 33 x 2 x 255 for ep <= 1056)
  for (int i = 0; i < ep; i += 32) {
    __m256i w[4];
    KVLAB_UNROLL
    for (int k = 0; k < 4; ++k) w[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_load_ps(xp + i + 8 * k), vi));
    // The packs interleave their sources per 128-bit lane; the permutes restore the order.
    const __m256i w01 = _mm256_packs_epi32(w[0], w[1]), w23 = _mm256_packs_epi32(w[2], w[3]);
    if constexpr (BITS == 8) {
      const __m256i ones = _mm256_set1_epi16(1);
      sums = _mm256_add_epi32(sums, _mm256_add_epi32(_mm256_madd_epi16(w01, ones), _mm256_madd_epi16(w23, ones)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(op + i / 2), _mm256_permute4x64_epi64(w01, 0xd8));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(op + i / 2 + 8), _mm256_permute4x64_epi64(w23, 0xd8));
    } else {
      __m256i b = _mm256_permutevar8x32_epi32(Signed ? _mm256_packs_epi16(w01, w23) : _mm256_packus_epi16(w01, w23),
                                              _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      if (lg) b = _mm256_shuffle_epi8(b, idx);
      // Word j: the pair of bytes 2j, 2j + 1, one group's (j % G).
      const __m256i ones = _mm256_set1_epi8(1);
      sums = _mm256_add_epi16(sums, Signed ? _mm256_maddubs_epi16(ones, b) : _mm256_maddubs_epi16(b, ones));
      const __m256i lo = _mm256_unpacklo_epi16(b, b), hi = _mm256_unpackhi_epi16(b, b);  // pairs 0-3 | 8-11, 4-7 | 12-15
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(op + i / 2), _mm256_permute2x128_si256(lo, hi, 0x20));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(op + i / 2 + 8), _mm256_permute2x128_si256(lo, hi, 0x31));
    }
  }
  if constexpr (BITS == 8) return sums;
  // Words j and j + 8 (same group: G divides 8) into lane j.
  return _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(sums)),
                          _mm256_cvtepi16_epi32(_mm256_extracti128_si256(sums, 1)));
}

// Rows r < R of x (x_row floats apart), `entries` entries of G = 2^lg groups each, each row
// quantized alone (the same operations as for a single row); the f16 scales and zeros are
// converted once for all rows. Signed: int8 (keys), else uint8 (values, x' >= 0). The rounding's
// residues are summed as sum x' - step * sum xi, the integers summed exactly.
template <int R, int BITS, bool Signed>
KVLAB_TARGET_AVX2 void quantize_operand(const float* x, int64_t x_row, const uint16_t* scale, const uint16_t* zero,
                                        int entries, int lg, QuantOperand* out) {
  const int G = 1 << lg, ep = (entries + 31) & ~31;
  alignas(32) float xp[R][kMaxSimdD + 32];
  // Lane i of the entries e .. e+7 (e % 8 == 0) is element (e + i) / G = e / G + i / G.
  const __m256i rep = _mm256_srli_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), lg);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 amax[R], zacc[R], xsum[R];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) amax[r] = zacc[r] = xsum[r] = _mm256_setzero_ps();
  for (int e = 0; e < ep; e += 8) {
    if (e >= entries) {
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) _mm256_store_ps(xp[r] + e, _mm256_setzero_ps());
      continue;
    }
    const int count = std::min(8, entries - e);
    const __m256i tm = V8::lane_mask((count + G - 1) >> lg);
    const __m256 sc = V8::load_f16(scale + e, V8::tail(count)), zr = V8::load_f16(zero + e, V8::tail(count));  // 0 past the entries
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m256 xl = _mm256_maskload_ps(x + r * x_row + (e >> lg), tm);
      const __m256 xv = lg ? _mm256_permutevar8x32_ps(xl, rep) : xl;
      const __m256 v = _mm256_mul_ps(xv, sc);
      _mm256_store_ps(xp[r] + e, v);
      amax[r] = _mm256_max_ps(amax[r], Signed ? _mm256_andnot_ps(sign, v) : v);
      xsum[r] = _mm256_add_ps(xsum[r], v);
      zacc[r] = _mm256_fmadd_ps(xv, zr, zacc[r]);
    }
  }
  constexpr float kLevels = float(operand_levels(BITS, Signed));
  constexpr float kHalf = float((1 << BITS) - 1) * 0.5f;
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    const float mx = V8::hmax(amax[r]);
    const float step = mx > 0.0f ? mx / kLevels : 0.0f;
    const float inv = mx > 0.0f ? kLevels / mx : 0.0f;
    const __m256i isum = round_operand<BITS, Signed>(xp[r], ep, lg, inv, out[r].op);
    const __m256 res = _mm256_fnmadd_ps(_mm256_set1_ps(step), _mm256_cvtepi32_ps(isum), xsum[r]);
    out[r].step = step;
    fold_groups(_mm256_fmadd_ps(_mm256_set1_ps(kHalf), res, zacc[r]), lg, out[r].z);
  }
}

// ---- kIntChannel scores -----------------------------------------------------------------------

// Scores of R rows over one block: tiles of 32 tokens; per tile the channel pairs stream past,
// each expanded once for all R rows. The query is quantized again at the start of each token
// group (kv_format.h; a group is a whole number of tiles: avx2_int_scores_take), against that
// group's scales: each group's scores are those of the group alone.
template <int R, int BITS>
KVLAB_TARGET_AVX2 void channel_scores_rows(const KvBlock& k, const float* q, float* s) {
  constexpr int kBytes = tile_bytes(BITS);
  constexpr int kSteps = steps_in_sums(BITS, true);
  constexpr int kOutVectors = tile_codes(BITS) / 8;
  const int n = k.n, d = k.d, pairs = (d + 1) / 2, group = channel_group_tokens(k);
  const int tiles = (n + tile_codes(BITS) - 1) / tile_codes(BITS);
  const ReadAheadPace ah(read_ahead(k), int64_t(tiles) * pairs);
  read_ahead_meta(k);
  QuantOperand qq[R];
  const uint32_t* qd[R];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) qd[r] = qq[r].op;
  const int64_t sb = packed_bytes(n, BITS);
  // The next block's lines are asked for in step with the work (units: tiles x channel pairs).
  // Asking for all of them in the first tile, as 8-bit keys did, stalled: 256 lines at once cost
  // 1.5x at the 8B row from DRAM (Zen 4).
  for (int t0 = 0, next_group = 0; t0 < n; t0 += tile_codes(BITS)) {
    if (t0 == next_group) {  // group t0 / group starts
      const int64_t meta = int64_t(t0 / group) * d;
      quantize_operand<R, BITS, true>(q, d, k.scale + meta, k.zero + meta, d, 0, qq);
      next_group += group;
    }
    const int64_t off = int64_t(t0) * BITS / 8;
    const int have = int(std::min<int64_t>(kBytes, sb - off));  // < kBytes: the block's last, partial tile
    __m256i acc[R][2][2];
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      KVLAB_UNROLL
      for (int u = 0; u < 2; ++u) acc[r][u][0] = acc[r][u][1] = _mm256_setzero_si256();
    }
    for (int p0 = 0; p0 < pairs; p0 += kSteps) {
      const int p1 = std::min(pairs, p0 + kSteps);
      __m256i a16[R][2];
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) a16[r][0] = a16[r][1] = _mm256_setzero_si256();
      ah.share(int64_t(t0 / tile_codes(BITS)) * pairs + p0, p1 - p0);
      const uint8_t* a = k.data + int64_t(2 * p0) * k.stride + off;
      // Full pairs of a full tile, then the odd last channel (its partner reads as zeros) and
      // the block's last, partial tile (codes past n read as 0; their scores are not stored).
      const int pf = have == kBytes ? std::min(p1, d / 2) : p0;
      for (int p = p0; p < pf; ++p, a += 2 * k.stride) madd_step<R, BITS, true>(a, a + k.stride, qd, p, a16);
      for (int p = pf; p < p1; ++p, a += 2 * k.stride) {
        alignas(16) uint8_t part[2][kBytes] = {};
        std::memcpy(part[0], a, size_t(have));
        if (2 * p + 1 < d) std::memcpy(part[1], a + k.stride, size_t(have));
        madd_step<R, BITS, true>(part[0], part[1], qd, p, a16);
      }
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) {
        KVLAB_UNROLL
        for (int u = 0; u < 2; ++u) widen_add<BITS, true>(a16[r][u], acc[r][u]);
      }
    }
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      __m256i nat[4];
      natural_order<BITS>(acc[r], nat);
      const __m256 qs = _mm256_set1_ps(qq[r].step), z = _mm256_set1_ps(qq[r].z[0]);
      KVLAB_UNROLL
      for (int w = 0; w < kOutVectors; ++w) {
        const int j = t0 + 8 * w;
        if (j >= n) break;
        V8::store(s + r * n + j, V8::tail(n - j), _mm256_fmadd_ps(_mm256_cvtepi32_ps(nat[w]), qs, z));
      }
    }
  }
}

// ---- kIntToken accumulate ---------------------------------------------------------------------

// R rows of values over one block: per chunk of <= 128 tokens, tiles of 32 channels; per tile
// the token pairs stream past, each expanded once for all R rows.
template <int R, int BITS>
KVLAB_TARGET_AVX2 void token_acc_rows(const KvBlock& v, const float* p, float* acc) {
  constexpr int kSteps = steps_in_sums(BITS, false);
  constexpr int kOutVectors = tile_codes(BITS) / 8;
  const int n = v.n, d = v.d, G = groups_of(v);
  read_ahead_meta(v);
  QuantOperand qp[R];
  // The next block's lines in step with the work (units: channel tiles x token pairs; as for the
  // scores). Chunks before the last are whole pairs (kChunk is even): chunk j0 starts after
  // tiles * j0 / 2 units, and the block holds tiles * ceil(n / 2).
  const int tiles = d / tile_codes(BITS);
  const ReadAheadPace ah(read_ahead(v), int64_t(tiles) * ((n + 1) / 2));
  for (int j0 = 0; j0 < n; j0 += kChunk) {
    const int nc = std::min(kChunk, n - j0), npairs = (nc + 1) / 2;
    quantize_operand<R, BITS, false>(p + j0, n, v.scale + int64_t(j0) * G, v.zero + int64_t(j0) * G, nc * G,
                                     __builtin_ctz(unsigned(G)), qp);
    for (int c0 = 0; c0 < d; c0 += tile_codes(BITS)) {
      const int64_t off = int64_t(c0) * BITS / 8;
      const int g = c0 / v.group;  // one group for the tile's channels (avx2_int_accumulate_take)
      const uint32_t* pd[R];
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) pd[r] = qp[r].op + g;
      __m256i a32[R][2][2];
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) {
        KVLAB_UNROLL
        for (int u = 0; u < 2; ++u) a32[r][u][0] = a32[r][u][1] = _mm256_setzero_si256();
      }
      for (int t0 = 0; t0 < npairs; t0 += kSteps) {
        const int t1 = std::min(npairs, t0 + kSteps);
        __m256i a16[R][2];
        KVLAB_UNROLL
        for (int r = 0; r < R; ++r) a16[r][0] = a16[r][1] = _mm256_setzero_si256();
        const int64_t unit = int64_t(tiles) * (j0 / 2) + int64_t(c0 / tile_codes(BITS)) * npairs + t0;
        ah.share(unit, t1 - t0);
        const uint8_t* a = v.data + int64_t(j0 + 2 * t0) * v.stride + off;
        const int tf = std::min(t1, nc / 2);  // full pairs, then the odd last token against zeros
        for (int t = t0; t < tf; ++t, a += 2 * v.stride) madd_step<R, BITS, false>(a, a + v.stride, pd, t * G, a16);
        for (int t = tf; t < t1; ++t) madd_step<R, BITS, false>(a, kZeroBytes, pd, t * G, a16);
        KVLAB_UNROLL
        for (int r = 0; r < R; ++r) {
          KVLAB_UNROLL
          for (int u = 0; u < 2; ++u) widen_add<BITS, false>(a16[r][u], a32[r][u]);
        }
      }
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) {
        __m256i nat[4];
        natural_order<BITS>(a32[r], nat);
        const __m256 ps = _mm256_set1_ps(qp[r].step);
        KVLAB_UNROLL
        for (int w = 0; w < kOutVectors; ++w) {
          const int c = c0 + 8 * w;
          float* dst = acc + r * d + c;
          const __m256 t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(nat[w]), ps, _mm256_set1_ps(qp[r].z[g]));
          _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), t));
        }
      }
    }
  }
}

// The kernels per row count and code width, and their calls over the chunks of 4 rows: rows of x
// are x_row floats apart, rows of y y_row.
struct ScoresKernel {
  template <int R, int BITS>
  static void run(const KvBlock& b, const float* x, float* y) { channel_scores_rows<R, BITS>(b, x, y); }
};
struct AccumulateKernel {
  template <int R, int BITS>
  static void run(const KvBlock& b, const float* x, float* y) { token_acc_rows<R, BITS>(b, x, y); }
};

template <class Kernel>
void for_row_chunks(const KvBlock& b, const float* x, int64_t x_row, int rows, float* y, int64_t y_row) {
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const float* xr = x + r0 * x_row;
    float* yr = y + r0 * y_row;
    with_rows(rows - r0, [&]<int R>() {
      switch (b.bits) {
        case 2: Kernel::template run<R, 2>(b, xr, yr); break;
        case 3: Kernel::template run<R, 3>(b, xr, yr); break;
        case 4: Kernel::template run<R, 4>(b, xr, yr); break;
        default: Kernel::template run<R, 8>(b, xr, yr); break;
      }
    });
  }
}

#endif  // KVLAB_X86

}  // namespace

bool avx2_int_scores_take(const KvBlock& k) {
  if (k.format != KvFormat::kIntChannel || k.d < 1 || k.d > kMaxSimdD) return false;
  if (channel_group_tokens(k) % tile_codes(k.bits) != 0 && channel_groups(k) > 1) return false;
  // 8 bits: 32-bit sums of up to 128 channel pairs of 2 * 32767 * 255 stay below 2^31.
  return (k.bits >= 2 && k.bits <= 4) || (k.bits == 8 && k.d <= 256);
}

bool avx2_int_accumulate_take(const KvBlock& v) {
  if (v.format != KvFormat::kIntToken || !((v.bits >= 2 && v.bits <= 4) || v.bits == 8)) return false;
  const int tile = tile_codes(v.bits);
  if (v.d > kMaxSimdD || v.d % tile != 0 || v.group <= 0 || v.d % v.group != 0) return false;
  if (v.group % tile != 0) return false;  // a tile's channels in one group
  const int G = groups_of(v);
  if (v.bits == 8) return G == 1;  // the 16-bit probabilities are used as they round (no regrouping)
  return G <= kMaxGroups && (G & (G - 1)) == 0;
}

void avx2_int_scores(const KvBlock& k, const float* q, int rows, float* s) {
#ifdef KVLAB_X86
  for_row_chunks<ScoresKernel>(k, q, k.d, rows, s, k.n);
#endif
}

void avx2_int_accumulate(const KvBlock& v, const float* p, int rows, float* acc) {
#ifdef KVLAB_X86
  for_row_chunks<AccumulateKernel>(v, p, v.n, rows, acc, v.d);
#endif
}

}  // namespace kvlab
