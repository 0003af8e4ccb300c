// AVX2 integer paths for 2- and 4-bit KIVI blocks (declared in kv_kernels_internal.h): vpmaddubsw
// on byte pairs.
//
// One expansion serves keys and values. Two bit streams A and B (keys: channels c and c + 1 over
// the block's tokens; values: tokens j and j + 1 over the channels) are read 8 bytes at a time
// and interleaved byte by byte, so that 16-bit word i holds (A byte i, B byte i); the word vector
// is copied to both 128-bit lanes and each lane shifted right by its own multiple of `bits`
// (vpsrlvd) and masked: word i of lane L then holds the two streams' codes at one position. A
// tile of 32 positions is two such vectors (4 bits: two 8-byte chunks, lane L = low / high
// nibble; 2 bits: one 8-byte chunk, vector u lane L = bits 2 (2u + L)). vpmaddubsw multiplies
// each word's two codes by the other operand's byte pair and adds them: keys take u8 codes x s8
// query pair (qi[c], qi[c + 1]), values u8 probability pair (pi[j], pi[j + 1]) x codes (<= 15,
// so as s8 unchanged). The int16 lanes take as many pair sums as cannot overflow (keys 4-bit:
// 127 * 15 * 2 = 3810 per pair, 8 steps; values 4-bit: 255 * 15 * 2 = 7650, 4 steps) and are
// then sign-extended into int32 sums, which end in the expansion's position order; one fixed
// shuffle per tile puts them back in natural order before the single f32 fma per output.
//
// The quantization (int8 query per row and block, uint8 probabilities per row and chunk of up
// to 128 tokens, mean rounding effect added back) is that of the AVX-512 VNNI paths in
// kv_int_vnni.cc, so the error bounds of kv_attention.h hold unchanged. Every output has one
// fixed sequence of operations (exact integer sums, then its fma), whatever the rows passed
// together: batch invariant.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/kv_kernels_internal.h"
#include "kernels/cpu/simd.h"

namespace kvlab {
namespace {

constexpr int kTileCodes = 32;  // positions (tokens or channels) per tile of the expansion
constexpr int kMaxGroups = 8;   // kIntToken groups per token on the value path

#ifdef KVLAB_X86

KVLAB_TARGET_AVX2 inline __m256i tail_mask8(int count) {  // lanes < count on
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

KVLAB_TARGET_AVX2 inline __m128i load_partial16(const uint8_t* p, int count) {
  if (count >= 16) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  alignas(16) uint8_t tmp[16] = {};
  if (count > 0) std::memcpy(tmp, p, size_t(count));
  return _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
}

KVLAB_TARGET_AVX2 inline float hsum8(__m256 v) {
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
}

// ---- End of the local copies -------------------------------------------------------------------

KVLAB_TARGET_AVX2 inline float hmax8(__m256 v) {
  __m128 q = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  q = _mm_max_ps(q, _mm_movehl_ps(q, q));
  q = _mm_max_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
}

// f16 values h[0 .. count) as f32 lanes (lanes >= count are 0; h + count is not read).
KVLAB_TARGET_AVX2 inline __m256 load_f16x8(const uint16_t* h, int count) {
  const uint8_t* b = reinterpret_cast<const uint8_t*>(h);
  return _mm256_cvtph_ps(count >= 8 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(b)) : load_partial16(b, 2 * count));
}

// Stand-in for the stream B of an odd last channel (keys) or token (values): codes 0.
alignas(16) constexpr uint8_t kZeroBytes[16] = {};

// The bytes a tile of the expansion spans in one stream.
constexpr int tile_bytes(int bits) { return kTileCodes * bits / 8; }

// Steps (one vpmaddubsw pair sum of at most pair_max in magnitude per 16-bit lane each) before a
// 16-bit lane could overflow: signed sums (keys: s8 query) up to 32767; sums of nonnegative
// terms (values: u8 probabilities x codes) are read as unsigned, up to 65535.
constexpr int steps_in_16bit(int pair_max, bool is_signed) { return (is_signed ? 32767 : 65535) / pair_max; }

// Quantization: x[0 .. count) (count % 32 == 0, zero-padded past the data) rounded to the nearest
// integer of x * inv (ties to even) and stored as bytes at out (signed saturation when Signed,
// unsigned otherwise; the values already lie in range). Returns the rounding residues
// x - step * rounded summed per lane: lane i holds the indices i (mod 8).
template <bool Signed>
KVLAB_TARGET_AVX2 __m256 round_to_bytes(const float* x, int count, float inv, float step, uint8_t* out) {
  const __m256 vi = _mm256_set1_ps(inv), vs = _mm256_set1_ps(step);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undoes the packs' lane interleave
  __m256 res = _mm256_setzero_ps();
  for (int i = 0; i < count; i += 32) {
    __m256i w[4];
    KVLAB_UNROLL
    for (int k = 0; k < 4; ++k) {
      const __m256 v = _mm256_load_ps(x + i + 8 * k);
      w[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v, vi));
      res = _mm256_add_ps(res, _mm256_fnmadd_ps(vs, _mm256_cvtepi32_ps(w[k]), v));
    }
    const __m256i b = Signed ? _mm256_packs_epi16(_mm256_packs_epi32(w[0], w[1]), _mm256_packs_epi32(w[2], w[3]))
                             : _mm256_packus_epi16(_mm256_packus_epi32(w[0], w[1]), _mm256_packus_epi32(w[2], w[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_permutevar8x32_epi32(b, order));
  }
  return res;
}

// Byte pairs -> the vpmaddubsw operands: out[i] = pair i (bytes 2i, 2i + 1) in both 16-bit halves,
// so that one vpbroadcastd (a plain load) spreads it over the vector. count % 32 == 0.
KVLAB_TARGET_AVX2 void duplicate_pairs(const uint8_t* bytes, int count, uint32_t* out) {
  for (int i = 0; i < count; i += 16) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes + i));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i / 2), _mm_unpacklo_epi16(x, x));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i / 2 + 4), _mm_unpackhi_epi16(x, x));
  }
}

// ---- Expansion -------------------------------------------------------------------------------

// 8 bytes of streams a and b as the words (a[i], b[i]), i < 8, in both 128-bit lanes.
KVLAB_TARGET_AVX2 inline __m256i pair_bytes(const uint8_t* a, const uint8_t* b) {
  const __m128i w = _mm_unpacklo_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a)),
                                      _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b)));
  return _mm256_broadcastsi128_si256(w);
}

// The tile of 32 codes of streams a and b starting at bytes a, b (tile_bytes(BITS) bytes each):
// word i of lane L of y[u] holds both streams' codes at position
//   4 bits: 16 L + 2 i + u  (byte 8 L + i, nibble u)      2 bits: 4 i + 2 u + L.
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
  } else {
    static_assert(BITS == 2);
    const __m256i w = pair_bytes(a, b);
    y[0] = _mm256_and_si256(_mm256_srlv_epi32(w, _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2)), mask);
    y[1] = _mm256_and_si256(_mm256_srlv_epi32(w, _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6)), mask);
  }
}

// acc[L] += the 16-bit lanes of lane L of a16, sign- or zero-extended (dword i = word i of that
// lane).
template <bool Signed>
KVLAB_TARGET_AVX2 inline void widen_add(__m256i a16, __m256i (&acc)[2]) {
  const __m128i lo = _mm256_castsi256_si128(a16), hi = _mm256_extracti128_si256(a16, 1);
  acc[0] = _mm256_add_epi32(acc[0], Signed ? _mm256_cvtepi16_epi32(lo) : _mm256_cvtepu16_epi32(lo));
  acc[1] = _mm256_add_epi32(acc[1], Signed ? _mm256_cvtepi16_epi32(hi) : _mm256_cvtepu16_epi32(hi));
}

// One step: the tile of streams a and b expanded once, then for each row r the 16-bit sums
// a16[r][u] += vpmaddubsw of y[u] and row r's operand pair op[r][idx] (in both halves of a dword,
// duplicate_pairs); CodesFirst: the codes are the u8 operand (keys), else the pair (values).
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
      a16[r][u] = _mm256_add_epi16(a16[r][u], CodesFirst ? _mm256_maddubs_epi16(y[u], o) : _mm256_maddubs_epi16(o, y[u]));
    }
  }
}

// x[u][L] (dword i: the position of word i of lane L of y[u], expand_tile) -> out[w]: positions
// 8w .. 8w+7 in order.
template <int BITS>
KVLAB_TARGET_AVX2 inline void natural_order(const __m256i (&x)[2][2], __m256i (&out)[4]) {
  if constexpr (BITS == 4) {  // x[u][h] dword i = 16h + 2i + u: zip the two nibbles' streams
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

// ---- kIntChannel scores -----------------------------------------------------------------------

// One row's quantized query for one block: q'[c] = q[c] * scale[c], qs = max |q'| / 127,
// qi[c] = round(q'[c] / qs), z = sum_c q[c] zero[c] + m sum_c (q'[c] - qs qi[c]), m = (2^bits - 1) / 2.
struct QuantQuery {
  alignas(32) uint32_t qd[kMaxSimdD / 2 + 16];  // step p's operand: the pair (qi[2p], qi[2p + 1]), twice
  float qs;
  float z;
};

KVLAB_TARGET_AVX2 void quantize_query(const KvBlock& k, const float* q, QuantQuery* out) {
  const int d = k.d, dp = (d + 31) & ~31;
  alignas(32) float qp[kMaxSimdD + 32];
  __m256 amax = _mm256_setzero_ps(), zacc = _mm256_setzero_ps();
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int c = 0; c < dp; c += 8) {
    if (c >= d) {
      _mm256_store_ps(qp + c, _mm256_setzero_ps());
      continue;
    }
    const int count = std::min(8, d - c);
    const __m256 qv = _mm256_maskload_ps(q + c, tail_mask8(count));
    const __m256 v = _mm256_mul_ps(qv, load_f16x8(k.scale + c, count));
    _mm256_store_ps(qp + c, v);
    amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v));
    zacc = _mm256_fmadd_ps(qv, load_f16x8(k.zero + c, count), zacc);
  }
  const float mx = hmax8(amax);
  const float qs = mx > 0.0f ? mx / 127.0f : 0.0f;
  const float inv = mx > 0.0f ? 127.0f / mx : 0.0f;
  alignas(32) uint8_t qi[kMaxSimdD + 32];  // int8, 0 past d
  const __m256 res = round_to_bytes<true>(qp, dp, inv, qs, qi);
  duplicate_pairs(qi, dp, out->qd);
  out->qs = qs;
  out->z = std::fma(float((1 << k.bits) - 1) * 0.5f, hsum8(res), hsum8(zacc));
}

// Scores of R rows over one block: tiles of 32 tokens; per tile the channel pairs stream past,
// each expanded once for all R rows.
template <int R, int BITS>
KVLAB_TARGET_AVX2 void channel_scores_rows(const KvBlock& k, const float* q, float* s) {
  constexpr int kBytes = tile_bytes(BITS);
  constexpr int kSteps = steps_in_16bit(2 * 127 * ((1 << BITS) - 1), true);
  const int n = k.n, d = k.d, pairs = (d + 1) / 2;
  const ReadAhead ah = read_ahead(k.data, int64_t(d) * k.stride);
  read_ahead_meta(k.scale, k.zero, 2 * int64_t(d));
  QuantQuery qq[R];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) quantize_query(k, q + r * d, &qq[r]);
  const uint32_t* qd[R];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) qd[r] = qq[r].qd;
  const int64_t sb = packed_bytes(n, BITS);
  for (int t0 = 0; t0 < n; t0 += kTileCodes) {
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
      if (t0 == 0) read_ahead_lines(ah, int64_t(2 * p0) * k.stride, int64_t(2 * (p1 - p0)) * k.stride);
      const uint8_t* a = k.data + int64_t(2 * p0) * k.stride + off;
      _Pragma("GCC unroll 8")
      for (int p = p0; p < p1; ++p, a += 2 * k.stride) {
        const uint8_t* b = 2 * p + 1 < d ? a + k.stride : kZeroBytes;
        if (have == kBytes) {
          madd_step<R, BITS, true>(a, b, qd, p, a16);
        } else {  // codes past n read as 0 (their scores are not stored)
          alignas(16) uint8_t part[2][kBytes] = {};
          std::memcpy(part[0], a, size_t(have));
          std::memcpy(part[1], b, size_t(have));
          madd_step<R, BITS, true>(part[0], part[1], qd, p, a16);
        }
      }
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) {
        KVLAB_UNROLL
        for (int u = 0; u < 2; ++u) widen_add<true>(a16[r][u], acc[r][u]);
      }
    }
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      __m256i nat[4];
      natural_order<BITS>(acc[r], nat);
      const __m256 qs = _mm256_set1_ps(qq[r].qs), z = _mm256_set1_ps(qq[r].z);
      KVLAB_UNROLL
      for (int w = 0; w < 4; ++w) {
        const int j = t0 + 8 * w;
        if (j >= n) break;
        _mm256_maskstore_ps(s + r * n + j, tail_mask8(n - j), _mm256_fmadd_ps(_mm256_cvtepi32_ps(nat[w]), qs, z));
      }
    }
  }
}

// ---- kIntToken accumulate ---------------------------------------------------------------------

constexpr int kChunk = 128;  // tokens per probability quantization (the VNNI paths' chunk)

// One row's quantized probabilities for one chunk: p'[j, g] = p[j] * scale[j, g],
// ps = max p' / 255, pi = round(p' / ps), zg[g] = sum_j p[j] zero[j, g] + m sum_j (p' - ps pi).
struct QuantProbs {
  alignas(32) uint32_t pd[kChunk / 2 * kMaxGroups];  // [token pair][group]: pi[2t] | pi[2t + 1] << 8, twice
  float ps;
  float zg[kMaxGroups];
};

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

KVLAB_TARGET_AVX2 void quantize_probs(const KvBlock& v, const float* p, int j0, int nc, QuantProbs* out) {
  const int G = groups_of(v), lg = __builtin_ctz(unsigned(G));
  const int entries = nc * G, ep = (entries + 31) & ~31;
  alignas(32) float pp[kChunk * kMaxGroups];
  alignas(32) uint8_t pb[kChunk * kMaxGroups];
  // Lane i of the entries e .. e+7 (e % 8 == 0) is token (e + i) / G = e / G + i / G.
  const __m256i rep = _mm256_srli_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), lg);
  const uint16_t* scale = v.scale + int64_t(j0) * G;
  const uint16_t* zero = v.zero + int64_t(j0) * G;
  __m256 mx = _mm256_setzero_ps(), zacc = _mm256_setzero_ps();
  for (int e = 0; e < ep; e += 8) {
    if (e >= entries) {
      _mm256_store_ps(pp + e, _mm256_setzero_ps());
      continue;
    }
    const int count = std::min(8, entries - e);
    const __m256 pr = _mm256_permutevar8x32_ps(
        _mm256_maskload_ps(p + j0 + (e >> lg), tail_mask8((count + G - 1) >> lg)), rep);
    const __m256 v1 = _mm256_mul_ps(pr, load_f16x8(scale + e, count));  // 0 past the entries
    _mm256_store_ps(pp + e, v1);
    mx = _mm256_max_ps(mx, v1);
    zacc = _mm256_fmadd_ps(pr, load_f16x8(zero + e, count), zacc);
  }
  const float pmax = hmax8(mx);
  const float ps = pmax > 0.0f ? pmax / 255.0f : 0.0f;
  const float inv = pmax > 0.0f ? 255.0f / pmax : 0.0f;
  const __m256 res = round_to_bytes<false>(pp, ep, inv, ps, pb);
  const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPairTables.idx[lg]));
  for (int e = 0; e < ep; e += 32) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(pb + e),
                       _mm256_shuffle_epi8(_mm256_load_si256(reinterpret_cast<const __m256i*>(pb + e)), idx));
  }
  duplicate_pairs(pb, ep, out->pd);
  alignas(32) float rl[8], zl[8];
  _mm256_store_ps(rl, res);
  _mm256_store_ps(zl, zacc);
  const float m_half = float((1 << v.bits) - 1) * 0.5f;
  out->ps = ps;
  for (int g = 0; g < G; ++g) {  // lane i holds group i % G
    float rg = 0.0f, zg = 0.0f;
    for (int i = g; i < 8; i += G) {
      rg += rl[i];
      zg += zl[i];
    }
    out->zg[g] = std::fma(m_half, rg, zg);
  }
}

// R rows of values over one block: per chunk of <= 128 tokens, tiles of 32 channels; per tile
// the token pairs stream past, each expanded once for all R rows.
template <int R, int BITS>
KVLAB_TARGET_AVX2 void token_acc_rows(const KvBlock& v, const float* p, float* acc) {
  constexpr int kSteps = steps_in_16bit(2 * 255 * ((1 << BITS) - 1), false);
  const int n = v.n, d = v.d, G = groups_of(v);
  const ReadAhead ah = read_ahead(v.data, int64_t(n) * v.stride);
  read_ahead_meta(v.scale, v.zero, 2 * int64_t(n) * G);
  QuantProbs qp[R];
  for (int j0 = 0; j0 < n; j0 += kChunk) {
    const int nc = std::min(kChunk, n - j0), npairs = (nc + 1) / 2;
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) quantize_probs(v, p + r * n, j0, nc, &qp[r]);
    for (int c0 = 0; c0 < d; c0 += kTileCodes) {
      const int64_t off = int64_t(c0) * BITS / 8;
      const int g = c0 / v.group;  // one group for the tile's 32 channels (group % 32 == 0)
      const uint32_t* pd[R];
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) pd[r] = qp[r].pd + g;
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
        if (c0 == 0) read_ahead_lines(ah, int64_t(j0 + 2 * t0) * v.stride, int64_t(2 * (t1 - t0)) * v.stride);
        const uint8_t* a = v.data + int64_t(j0 + 2 * t0) * v.stride + off;
        for (int t = t0; t < t1; ++t, a += 2 * v.stride) {
          madd_step<R, BITS, false>(a, 2 * t + 1 < nc ? a + v.stride : kZeroBytes, pd, t * G, a16);
        }
        KVLAB_UNROLL
        for (int r = 0; r < R; ++r) {
          KVLAB_UNROLL
          for (int u = 0; u < 2; ++u) widen_add<false>(a16[r][u], a32[r][u]);
        }
      }
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) {
        __m256i nat[4];
        natural_order<BITS>(a32[r], nat);
        const __m256 ps = _mm256_set1_ps(qp[r].ps);
        KVLAB_UNROLL
        for (int w = 0; w < 4; ++w) {
          const int c = c0 + 8 * w;
          float* dst = acc + r * d + c;
          const __m256 t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(nat[w]), ps, _mm256_set1_ps(qp[r].zg[g]));
          _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), t));
        }
      }
    }
  }
}

#endif  // KVLAB_X86

}  // namespace

bool avx2_int_scores_take(const KvBlock& k) {
  return k.format == KvFormat::kIntChannel && (k.bits == 2 || k.bits == 4) && k.d >= 1 && k.d <= kMaxSimdD;
}

bool avx2_int_accumulate_take(const KvBlock& v) {
  if (v.format != KvFormat::kIntToken || !(v.bits == 2 || v.bits == 4)) return false;
  if (v.d > kMaxSimdD || v.d % kTileCodes != 0 || v.group <= 0 || v.d % v.group != 0) return false;
  if (v.group % kTileCodes != 0) return false;  // a tile's channels in one group
  const int G = groups_of(v);
  return G <= kMaxGroups && (G & (G - 1)) == 0;
}

void avx2_int_scores(const KvBlock& k, const float* q, int rows, float* s) {
#ifdef KVLAB_X86
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const float* qr = q + int64_t(r0) * k.d;
    float* sr = s + int64_t(r0) * k.n;
    with_rows(rows - r0, [&]<int R>() {
      if (k.bits == 4) {
        channel_scores_rows<R, 4>(k, qr, sr);
      } else {
        channel_scores_rows<R, 2>(k, qr, sr);
      }
    });
  }
#endif
}

void avx2_int_accumulate(const KvBlock& v, const float* p, int rows, float* acc) {
#ifdef KVLAB_X86
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const float* pr = p + int64_t(r0) * v.n;
    float* ar = acc + int64_t(r0) * v.d;
    with_rows(rows - r0, [&]<int R>() {
      if (v.bits == 4) {
        token_acc_rows<R, 4>(v, pr, ar);
      } else {
        token_acc_rows<R, 2>(v, pr, ar);
      }
    });
  }
#endif
}

}  // namespace kvlab
