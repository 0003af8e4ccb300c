// Integer dot products on AVX-512 with VNNI (vpdpbusd) and VBMI (vpermb, vpmultishiftqb) for
// 2/3/4-bit codes: kIntChannel keys, kIntToken keys with d = 128 and group % 32 == 0, and
// kIntToken values with group % 16 == 0 (d / group a power of two <= 16). The query (keys) or
// the probabilities (values) are quantized to 8 bits; the error bounds are in kv_attention.h.
// Integer blocks VNNI does not take but the AVX2 integer paths do (8-bit codes; all of them on
// AVX-512 without VNNI) are handed to kv_int_avx2.cc, which every AVX-512 CPU runs.
//
// Codes are expanded to bytes with vpermb + vpmultishiftqb + and (2, 3, 4 bits alike, 64 codes
// per three instructions) in an order chosen so that interleaving four streams (unpack epi8, then
// epi16) gives dwords holding the four streams' code of one output in natural order; vpdpbusd
// then adds four products per lane: kIntChannel keys take four channels of a token per lane
// against four int8 query bytes, kIntToken values four tokens of a channel against four uint8
// probabilities. kIntToken keys expand each token row in natural order and reduce 4 tokens x 2
// vectors of partial sums with one transposing network. The `kivi` policy's pages (128 tokens,
// key groups of 32) take the 2/4-bit key passes whole, each 128-bit lane against its own group's
// query.
//
// Measured on 2 cores of an AMD EPYC Zen 4 (3.65 GHz), cycles per block of 128 tokens x d = 128,
// 4 query rows, data in L1 (scores / accumulate): int4 and int2 KIVI (kIntChannel keys /
// kIntToken values) 2300 / 2700 (group 128), 3700 (group 32, before the pages took one pass);
// kIntToken keys (quant, d = 128) 4500; the f32 paths for comparison: f16 7000 / 4900. On 2
// vCPUs of an Intel Xeon (family 6 model 167), us per 128-token block, d = 64, 3 rows: int4
// group 128 0.25 / 0.38, kivi 4 page 0.47 / 0.51 (docs/results.md).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/kv_kernels_internal.h"
#include "kernels/cpu/simd_vec.h"

namespace kvlab {

#ifdef KVLAB_X86
namespace {

// AVX-512 with VNNI (vpdpbusd) and VBMI (vpermb, vpmultishiftqb): the integer paths.
#define KVLAB_TARGET_AVX512_VNNI \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx512vnni,avx512vbmi")))

bool cpu_has_vnni_vbmi() {
  static const bool has = [] {
    __builtin_cpu_init();
    return detected_isa() == Isa::kAvx512 && __builtin_cpu_supports("avx512vnni") &&
           __builtin_cpu_supports("avx512vbmi");
  }();
  return has;
}

// The VNNI paths expand 64 codes of a stream into 64 bytes in a "pre-transposed" order: byte
// 16L + 4k + i holds code 16k + 4L + i. Interleaving four such vectors (of four channels, or four
// tokens) with unpack{lo,hi}_epi8 then unpack{lo,hi}_epi16 yields vector k whose dword m holds
// the four streams' codes 16k + m: natural order, no fix-up after the dot products.
// vpermb gathers into qword Q the 4 + 4 source bytes of codes t0 .. t0+3 and t0+16 .. t0+19
// (t0 = 32 (Q % 2) + 4 (Q / 2)); vpmultishiftqb then picks each code's bits.
struct VnniTables {
  alignas(64) uint8_t gather[64];
  alignas(64) uint8_t shift[64];
};
constexpr VnniTables make_vnni_tables(int bits) {
  VnniTables t{};
  KVLAB_UNROLL
  for (int q = 0; q < 8; ++q) {
    const int t0 = 32 * (q % 2) + 4 * (q / 2);
    const int src_a = t0 * bits / 8, off_a = t0 * bits % 8;
    const int src_b = (t0 + 16) * bits / 8, off_b = (t0 + 16) * bits % 8;
    for (int e = 0; e < 4; ++e) {
      t.gather[8 * q + e] = uint8_t(std::min(src_a + e, 63));
      t.gather[8 * q + 4 + e] = uint8_t(std::min(src_b + e, 63));
      t.shift[8 * q + e] = uint8_t(off_a + e * bits);
      t.shift[8 * q + 4 + e] = uint8_t(32 + off_b + e * bits);
    }
  }
  return t;
}
constexpr VnniTables kVnni2 = make_vnni_tables(2);
constexpr VnniTables kVnni3 = make_vnni_tables(3);
constexpr VnniTables kVnni4 = make_vnni_tables(4);
inline const VnniTables& vnni_tables(int bits) {
  return bits == 2 ? kVnni2 : (bits == 3 ? kVnni3 : kVnni4);
}

KVLAB_TARGET_AVX512 inline __mmask16 mask16(int count) { return Vec16::tail(count).m; }
KVLAB_TARGET_AVX512 inline float hsum16(__m512 v) { return Vec16::hsum(v); }

// Scores, kIntChannel keys. Per row and block the scale-folded query q'[c] = q[c] * scale[c] is
// quantized to int8: qs = max|q'| / 127, qi[c] = round(q'[c] / qs). Then
//   s[j] = qs * S[j] + z,  S[j] = sum_c qi[c] * code(j, c)  (exact, vpdpbusd)
//   z = sum_c q[c] * zero[c] + m * sum_c (q'[c] - qs * qi[c]),  m = (2^bits - 1) / 2
// The second part of z adds the mean effect of the rounding of q' exactly, so the error left is
//   |s - exact| <= sum_c |q'[c] - qs qi[c]| * |code(j, c) - m| <= (qs / 2) * sum_c |code(j, c) - m|
// plus f32 rounding: at most d * (qs / 2) * m, half of what the uncentred codes would give.
// Values, kIntToken with group % 16 == 0: p'[j, g] = p[j] * scale[j, g] is quantized to uint8
// per row and block of up to 128 tokens (ps = max p' / 255), the same way, with the sum over
// tokens; vpdpbusd takes the four probabilities of four tokens against their four codes.

constexpr int kVnniMaxTokens = 128;



// acc += vpdpbusd(u8 a, s8 b). Inline assembly: GCC 12 models the intrinsic as a three-operand
// operation and surrounds every use with register copies of the accumulators.
KVLAB_TARGET_AVX512_VNNI inline void dpbusd(__m512i& acc, __m512i a, __m512i b) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
}  // value chunk: the probability quantization is per chunk

KVLAB_TARGET_AVX512_VNNI inline __m512i expand64(const VnniTables& t, __m512i raw, int bits) {
  const __m512i x = _mm512_multishift_epi64_epi8(_mm512_load_si512(t.shift),
                                                 _mm512_permutexvar_epi8(_mm512_load_si512(t.gather), raw));
  return _mm512_and_si512(x, _mm512_set1_epi8(char((1 << bits) - 1)));
}

// y[0..3]: four expanded streams. v[k] dword m = bytes {y0, y1, y2, y3}[code 16k + m].
KVLAB_TARGET_AVX512_VNNI inline void interleave4(const __m512i (&y)[4], __m512i (&v)[4]) {
  const __m512i a0 = _mm512_unpacklo_epi8(y[0], y[1]), a1 = _mm512_unpackhi_epi8(y[0], y[1]);
  const __m512i b0 = _mm512_unpacklo_epi8(y[2], y[3]), b1 = _mm512_unpackhi_epi8(y[2], y[3]);
  v[0] = _mm512_unpacklo_epi16(a0, b0);
  v[1] = _mm512_unpackhi_epi16(a0, b0);
  v[2] = _mm512_unpacklo_epi16(a1, b1);
  v[3] = _mm512_unpackhi_epi16(a1, b1);
}

KVLAB_TARGET_AVX512_VNNI inline __mmask64 mask64(int64_t count) {
  return count >= 64 ? ~__mmask64(0) : (count <= 0 ? __mmask64(0) : (__mmask64(1) << count) - 1);
}

// The operand quantizers' step (query: 127 levels each side, int8; probabilities: 255, uint8):
// step = max / levels and its inverse, both 0 for max <= 0 (or NaN).
struct QuantStep {
  float step, inv;
};
inline QuantStep quant_step(float max, float levels) {
  return max > 0.0f ? QuantStep{max / levels, levels / max} : QuantStep{0.0f, 0.0f};
}

// qi = round(v / step) in int32 lanes, and res += v - step * qi (the rounding's residual, whose
// sum the zero terms take).
KVLAB_TARGET_AVX512 inline __m512i quantize16(__m512 v, const QuantStep& s, __m512& res) {
  const __m512i qi = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v, _mm512_set1_ps(s.inv)),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  res = _mm512_add_ps(res, _mm512_fnmadd_ps(_mm512_set1_ps(s.step), _mm512_cvtepi32_ps(qi), v));
  return qi;
}

// Per-row quantized query of one kIntChannel block.
struct QuantQuery {
  alignas(64) int32_t qd[kMaxSimdD / 4];  // qi of channels 4i .. 4i+3, one byte each
  float qs;
  float z;
};

// Rows r < R of q (d floats apart), each quantized alone (the same operations as for a single
// row); the block's scales and zeros are converted once for all of them.
template <int R>
KVLAB_TARGET_AVX512_VNNI void quantize_query_rows(const KvBlock& k, const float* q, QuantQuery* out) {
  const int d = k.d;
  alignas(64) float qp[R][kMaxSimdD];
  __m512 amax[R], zacc[R];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) amax[r] = zacc[r] = _mm512_setzero_ps();
  for (int c = 0; c < d; c += 16) {
    const __mmask16 m = mask16(d - c);
    const __m512 sc = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, k.scale + c));
    const __m512 zr = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, k.zero + c));
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512 qv = _mm512_maskz_loadu_ps(m, q + r * d + c);
      const __m512 v = _mm512_mul_ps(qv, sc);
      _mm512_store_ps(qp[r] + c, v);
      amax[r] = _mm512_max_ps(amax[r], _mm512_abs_ps(v));
      zacc[r] = _mm512_fmadd_ps(qv, zr, zacc[r]);
    }
  }
  const float m_half = float((1 << k.bits) - 1) * 0.5f;
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    const QuantStep st = quant_step(_mm512_reduce_max_ps(amax[r]), 127.0f);
    __m512 dacc = _mm512_setzero_ps();
    uint8_t* qb = reinterpret_cast<uint8_t*>(out[r].qd);
    for (int c = 0; c < d; c += 16) {  // qp is 0 beyond d (masked loads above)
      const __m512i qi = quantize16(_mm512_load_ps(qp[r] + c), st, dacc);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qb + c), _mm512_cvtsepi32_epi8(qi));
    }
    for (int c = d; c < ((d + 3) & ~3); ++c) qb[c] = 0;
    out[r].qs = st.step;
    out[r].z = std::fma(m_half, hsum16(dacc), hsum16(zacc[r]));
  }
}

template <int R>
KVLAB_TARGET_AVX512_VNNI void int_channel_scores_vnni_rows(const KvBlock& k, const float* q, float* s) {
  const int n = k.n, d = k.d, bits = k.bits;
  QuantQuery qq[R];
  const ReadAhead ah = read_ahead(k);
  read_ahead_meta(k);
  quantize_query_rows<R>(k, q, qq);
  const VnniTables& tb = vnni_tables(bits);
  const int64_t sb = packed_bytes(n, bits);
  for (int t0 = 0; t0 < n; t0 += 64) {
    const int64_t off = int64_t(t0) * bits / 8;
    const __mmask64 lm = mask64(std::min<int64_t>(8 * bits, sb - off));
    __m512i acc[R][4];
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      KVLAB_UNROLL
      for (int kk = 0; kk < 4; ++kk) acc[r][kk] = _mm512_setzero_si512();
    }
    for (int c = 0; c < d; c += 4) {
      if (t0 == 0) read_ahead_lines(ah, int64_t(c) * k.stride, 4 * k.stride);
      __m512i y[4];
      KVLAB_UNROLL
      for (int cc = 0; cc < 4; ++cc) {
        y[cc] = c + cc < d ? expand64(tb, _mm512_maskz_loadu_epi8(lm, k.data + (c + cc) * k.stride + off), bits)
                           : _mm512_setzero_si512();
      }
      __m512i v[4];
      interleave4(y, v);
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) {
        const __m512i qb = _mm512_set1_epi32(qq[r].qd[c / 4]);
        KVLAB_UNROLL
        for (int kk = 0; kk < 4; ++kk) dpbusd(acc[r][kk], v[kk], qb);
      }
    }
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512 qs = _mm512_set1_ps(qq[r].qs), z = _mm512_set1_ps(qq[r].z);
      KVLAB_UNROLL
      for (int kk = 0; kk < 4; ++kk) {
        _mm512_mask_storeu_ps(s + r * n + t0 + 16 * kk, mask16(n - t0 - 16 * kk),
                              _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][kk]), qs, z));
      }
    }
  }
}

// ---- kIntChannel scores, 4- and 2-bit: codes expanded with byte interleaves and shifts ---------
// The generic expansion above spends 16 shuffles per 64 tokens x 4 channels; these paths
// interleave the PACKED bytes of four channels first (one byte of each per dword) and split the
// 2 or 4 codes of every byte with a shift and a mask, so the shuffles drop to 4 (4-bit) or 1-3
// (2-bit) per 128 tokens x 4 channels per pass; vpdpbusd is then the limit. The tokens come out
// in a fixed permutation of their order, undone on the finished f32 scores with a few lane
// shuffles. Each integer sum is the same exact sum as on the generic path (the same products),
// so the scores are bit for bit those of the generic path.

// The 4x4 transpose of 128-bit lanes: lane L of out[i] = lane i of in[L].
KVLAB_TARGET_AVX512 inline void transpose_lanes_ps(const __m512 (&in)[4], __m512 (&out)[4]) {
  const __m512 t0 = _mm512_shuffle_f32x4(in[0], in[1], 0x44), t1 = _mm512_shuffle_f32x4(in[0], in[1], 0xee);
  const __m512 t2 = _mm512_shuffle_f32x4(in[2], in[3], 0x44), t3 = _mm512_shuffle_f32x4(in[2], in[3], 0xee);
  out[0] = _mm512_shuffle_f32x4(t0, t2, 0x88);
  out[1] = _mm512_shuffle_f32x4(t0, t2, 0xdd);
  out[2] = _mm512_shuffle_f32x4(t1, t3, 0x88);
  out[3] = _mm512_shuffle_f32x4(t1, t3, 0xdd);
}

KVLAB_TARGET_AVX512 inline void transpose_lanes_epi32(const __m512i (&in)[4], __m512i (&out)[4]) {
  const __m512i t0 = _mm512_shuffle_i32x4(in[0], in[1], 0x44), t1 = _mm512_shuffle_i32x4(in[0], in[1], 0xee);
  const __m512i t2 = _mm512_shuffle_i32x4(in[2], in[3], 0x44), t3 = _mm512_shuffle_i32x4(in[2], in[3], 0xee);
  out[0] = _mm512_shuffle_i32x4(t0, t2, 0x88);
  out[1] = _mm512_shuffle_i32x4(t0, t2, 0xdd);
  out[2] = _mm512_shuffle_i32x4(t1, t3, 0x88);
  out[3] = _mm512_shuffle_i32x4(t1, t3, 0xdd);
}

// 4-bit, pass P of a 4-stream byte interleave: x[0..3] hold 64 packed bytes of four streams
// (channels of a key block, tokens of a value block). Dword m of 128-bit lane L of v[k][h] holds
// the four streams' code 2 i + h, i = 16 L + 8 P + 4 k + m (h = 0: low nibble of byte i).
template <int P>
KVLAB_TARGET_AVX512_VNNI inline void split4(const __m512i (&x)[4], __m512i (&v)[2][2]) {
  const __m512i lo4 = _mm512_set1_epi8(0x0f);
  const __m512i a = P == 0 ? _mm512_unpacklo_epi8(x[0], x[1]) : _mm512_unpackhi_epi8(x[0], x[1]);
  const __m512i b = P == 0 ? _mm512_unpacklo_epi8(x[2], x[3]) : _mm512_unpackhi_epi8(x[2], x[3]);
  const __m512i d0 = _mm512_unpacklo_epi16(a, b), d1 = _mm512_unpackhi_epi16(a, b);
  v[0][0] = _mm512_and_si512(d0, lo4);
  v[0][1] = _mm512_and_si512(_mm512_srli_epi16(d0, 4), lo4);
  v[1][0] = _mm512_and_si512(d1, lo4);
  v[1][1] = _mm512_and_si512(_mm512_srli_epi16(d1, 4), lo4);
}

// 2-bit, pass P: x01 holds 32 packed bytes of streams 0 and 1 (lanes 0-1, 2-3), x23 of streams 2
// and 3. Dword m of v[e] holds the four streams' code 4 i + e, i = 16 P + m.
struct Interleave2Table {
  alignas(64) uint8_t idx[2][64];
};
constexpr Interleave2Table make_interleave2() {
  Interleave2Table t{};
  for (int p = 0; p < 2; ++p) {
    for (int m = 0; m < 16; ++m) {
      for (int s = 0; s < 4; ++s) t.idx[p][4 * m + s] = uint8_t((s / 2) * 64 + (s % 2) * 32 + 16 * p + m);
    }
  }
  return t;
}
constexpr Interleave2Table kInterleave2 = make_interleave2();

template <int P>
KVLAB_TARGET_AVX512_VNNI inline void split2(__m512i x01, __m512i x23, __m512i (&v)[4]) {
  const __m512i lo2 = _mm512_set1_epi8(0x03);
  const __m512i d = _mm512_permutex2var_epi8(x01, _mm512_load_si512(kInterleave2.idx[P]), x23);
  v[0] = _mm512_and_si512(d, lo2);
  v[1] = _mm512_and_si512(_mm512_srli_epi16(d, 2), lo2);
  v[2] = _mm512_and_si512(_mm512_srli_epi16(d, 4), lo2);
  v[3] = _mm512_and_si512(_mm512_srli_epi16(d, 6), lo2);
}

// split2's order back in natural order: out[L] holds outputs 64 P + 16 L + 0..15.
KVLAB_TARGET_AVX512 inline void unsplit2_ps(const __m512 (&f)[4], __m512 (&out)[4]) {
  const __m512 t0 = _mm512_unpacklo_ps(f[0], f[1]), t1 = _mm512_unpackhi_ps(f[0], f[1]);
  const __m512 t2 = _mm512_unpacklo_ps(f[2], f[3]), t3 = _mm512_unpackhi_ps(f[2], f[3]);
  const __m512 u[4] = {
      _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2))),
      _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2))),
      _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3))),
      _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)))};
  transpose_lanes_ps(u, out);
}

KVLAB_TARGET_AVX512 inline void unsplit2_epi32(const __m512i (&f)[4], __m512i (&out)[4]) {
  const __m512i t0 = _mm512_unpacklo_epi32(f[0], f[1]), t1 = _mm512_unpackhi_epi32(f[0], f[1]);
  const __m512i t2 = _mm512_unpacklo_epi32(f[2], f[3]), t3 = _mm512_unpackhi_epi32(f[2], f[3]);
  const __m512i u[4] = {_mm512_unpacklo_epi64(t0, t2), _mm512_unpackhi_epi64(t0, t2), _mm512_unpacklo_epi64(t1, t3),
                        _mm512_unpackhi_epi64(t1, t3)};
  transpose_lanes_epi32(u, out);
}

// split4's order back in natural order: f[k][h] as split4's v; out[L] holds outputs
// 32 L + 16 P + 0..15.
KVLAB_TARGET_AVX512 inline void unsplit4_ps(const __m512 (&f)[2][2], __m512 (&out)[4]) {
  const __m512 w[4] = {_mm512_unpacklo_ps(f[0][0], f[0][1]), _mm512_unpackhi_ps(f[0][0], f[0][1]),
                       _mm512_unpacklo_ps(f[1][0], f[1][1]), _mm512_unpackhi_ps(f[1][0], f[1][1])};
  transpose_lanes_ps(w, out);
}

KVLAB_TARGET_AVX512 inline void unsplit4_epi32(const __m512i (&f)[2][2], __m512i (&out)[4]) {
  const __m512i w[4] = {_mm512_unpacklo_epi32(f[0][0], f[0][1]), _mm512_unpackhi_epi32(f[0][0], f[0][1]),
                        _mm512_unpacklo_epi32(f[1][0], f[1][1]), _mm512_unpackhi_epi32(f[1][0], f[1][1])};
  transpose_lanes_epi32(w, out);
}

// ---- kIntChannel 4- and 2-bit scores over pages of several token groups -------------------------
// A page of KIVI groups (kv_format.h: a token group of >= 32 tokens starts on a byte) has the same
// code bytes per channel as one group, so its tiles take the same passes; only the quantized query
// differs from group to group. Every 128-bit lane of a pass's accumulators holds 16 tokens that
// lie in one group when the groups are multiples of 32 tokens (4-bit pass P, lane L: tokens
// 32 L + 16 P + 0..15 of the tile; 2-bit: 64 P + 16 L + 0..15), so a pass multiplies lane L's
// codes by the query quantized against lane L's group: each score is, bit for bit, the score of
// its group taken as a block of its own (the same integer sum, scaled by the same qs and z).

constexpr int kTileGroups = 4;  // token groups a 128-token tile touches (groups of >= 32 tokens)
constexpr int kMaxLaneD = 256;  // head sizes whose pages of several groups take one pass

// The quantized query rows of each token group a tile touches (groups first .. first + count - 1,
// slot s = group first + s), and per row the quadruples of every slot side by side:
// qt[r][4 i + s] = qq[s][r].qd[i], so that one vpermd of the 16 bytes at 4 i gives a pass's
// vector of quadruple i for any assignment of slots to lanes.
template <int R>
struct TileGroups {
  int first = -1, count = 0;
  QuantQuery qq[kTileGroups][R];
  alignas(64) int32_t qt[R][kMaxLaneD + 16];  // + 16: a 64-byte load at the last quadruple
  alignas(16) float qs[R][kTileGroups], z[R][kTileGroups];
};

template <int R>
KVLAB_TARGET_AVX512_VNNI void tile_groups(const KvBlock& k, const float* q, int t0, TileGroups<R>& tg) {
  const int group = channel_group_tokens(k);
  const int first = t0 / group, end = std::min(channel_groups(k), (std::min(t0 + 128, k.n) - 1) / group + 1);
  if (first == tg.first && end - first == tg.count) return;  // one group, the previous tile's
  tg.first = first;
  tg.count = end - first;
  for (int g = first; g < end; ++g) quantize_query_rows<R>(channel_sub_block(k, g), q, tg.qq[g - first]);
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    for (int s = 0; s < kTileGroups; ++s) {
      tg.qs[r][s] = s < tg.count ? tg.qq[s][r].qs : 0.0f;
      tg.z[r][s] = s < tg.count ? tg.qq[s][r].z : 0.0f;
    }
    if (tg.count == 1) continue;
    for (int i = 0; i < (k.d + 3) / 4; i += 16) {  // 16 quadruples of 4 slots: two 4 x 4 transposes
      __m512i a[4], t[4], o[4];
      KVLAB_UNROLL
      for (int s = 0; s < 4; ++s) a[s] = s < tg.count ? _mm512_load_si512(tg.qq[s][r].qd + i) : _mm512_setzero_si512();
      const __m512i u0 = _mm512_unpacklo_epi32(a[0], a[1]), u1 = _mm512_unpackhi_epi32(a[0], a[1]);
      const __m512i u2 = _mm512_unpacklo_epi32(a[2], a[3]), u3 = _mm512_unpackhi_epi32(a[2], a[3]);
      t[0] = _mm512_unpacklo_epi64(u0, u2);  // lane L: the slots' quadruple i + 4 L + 0
      t[1] = _mm512_unpackhi_epi64(u0, u2);
      t[2] = _mm512_unpacklo_epi64(u1, u3);
      t[3] = _mm512_unpackhi_epi64(u1, u3);
      transpose_lanes_epi32(t, o);  // o[L]: quadruples i + 4 L .. i + 4 L + 3
      KVLAB_UNROLL
      for (int L = 0; L < 4; ++L) _mm512_store_si512(tg.qt[r] + 4 * (i + 4 * L), o[L]);
    }
  }
}

// The query of one pass as its steps read it, per row: the int8 quadruple of channels 4i .. 4i+3
// against the tokens of each 128-bit lane, and the step qs and zero term z of each lane's group.
// One group in the pass (kLanes false): qd is that group's QuantQuery::qd, broadcast; several:
// qd is TileGroups::qt and idx puts slot s's dword in the lanes of group first + s.
template <int R>
struct PassQuery {
  const int32_t* qd[R];
  __m512i idx;
  __m512 qs[R], z[R];
};

template <int R, bool kLanes>
KVLAB_TARGET_AVX512_VNNI inline __m512i query_quad(const PassQuery<R>& pq, int r, int c) {
  if constexpr (kLanes) {
    return _mm512_permutexvar_epi32(pq.idx, _mm512_loadu_si512(pq.qd[r] + c));  // quadruple c / 4 at 4 (c / 4)
  } else {
    return _mm512_set1_epi32(pq.qd[r][c / 4]);
  }
}

// The pass query of a tile at t0 whose lane L starts at token t0 + lane_first[L]. Returns whether
// the lanes' groups differ.
template <int R>
KVLAB_TARGET_AVX512_VNNI bool pass_query(const KvBlock& k, const TileGroups<R>& tg, int t0, const int (&lane_first)[4],
                                         PassQuery<R>& pq) {
  const int group = channel_group_tokens(k), last = channel_groups(k) - 1;
  int slot[4];
  KVLAB_UNROLL
  for (int L = 0; L < 4; ++L) slot[L] = std::min((t0 + lane_first[L]) / group, last) - tg.first;
  const bool several = slot[0] != slot[1] || slot[0] != slot[2] || slot[0] != slot[3];
  pq.idx = _mm512_setr_epi32(slot[0], slot[0], slot[0], slot[0], slot[1], slot[1], slot[1], slot[1], slot[2],
                             slot[2], slot[2], slot[2], slot[3], slot[3], slot[3], slot[3]);
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    pq.qd[r] = several ? tg.qt[r] : tg.qq[slot[0]][r].qd;
    pq.qs[r] = _mm512_permutexvar_ps(pq.idx, _mm512_castps128_ps512(_mm_load_ps(tg.qs[r])));
    pq.z[r] = _mm512_permutexvar_ps(pq.idx, _mm512_castps128_ps512(_mm_load_ps(tg.z[r])));
  }
  return several;
}

// 4-bit keys: per tile of 128 tokens (64 bytes of each channel) two passes of 64 tokens, each
// with 16 accumulators (R = 4).
template <int R, int P, bool kTail, bool kLanes>
KVLAB_TARGET_AVX512_VNNI inline void channel4_step(const KvBlock& k, const PassQuery<R>& pq, int c, int64_t off,
                                                   __mmask64 lm, __m512i (&acc)[R][2][2]) {
  __m512i x[4];
  KVLAB_UNROLL
  for (int i = 0; i < 4; ++i) {
    x[i] = !kTail || c + i < k.d ? _mm512_maskz_loadu_epi8(lm, k.data + (c + i) * k.stride + off)
                                 : _mm512_setzero_si512();
  }
  __m512i v[2][2];
  split4<P>(x, v);
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    const __m512i qb = query_quad<R, kLanes>(pq, r, c);
    KVLAB_UNROLL
    for (int kk = 0; kk < 2; ++kk) {
      KVLAB_UNROLL
      for (int h = 0; h < 2; ++h) dpbusd(acc[r][kk][h], v[kk][h], qb);
    }
  }
}

template <int R, int P, bool kLanes>
KVLAB_TARGET_AVX512_VNNI void channel4_pass(const KvBlock& k, const PassQuery<R>& pq, int t0, float* s,
                                            const ReadAhead& ah) {
  const int n = k.n, d = k.d;
  const int64_t off = t0 / 2;
  const __mmask64 lm = mask64(std::min<int64_t>(64, packed_bytes(n, 4) - off));
  __m512i acc[R][2][2];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int i = 0; i < 4; ++i) acc[r][i / 2][i % 2] = _mm512_setzero_si512();
  }
  int c = 0;
  for (; c + 4 <= d; c += 4) {
    if (P == 0) read_ahead_lines(ah, int64_t(c) * k.stride, 4 * k.stride);
    channel4_step<R, P, false, kLanes>(k, pq, c, off, lm, acc);
  }
  if (c < d) channel4_step<R, P, true, kLanes>(k, pq, c, off, lm, acc);
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    __m512 f[2][2], o[4];
    KVLAB_UNROLL
    for (int i = 0; i < 4; ++i) {
      f[i / 2][i % 2] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][i / 2][i % 2]), pq.qs[r], pq.z[r]);
    }
    unsplit4_ps(f, o);
    KVLAB_UNROLL
    for (int L = 0; L < 4; ++L) {
      const int j = t0 + 32 * L + 16 * P;
      if (j < n) _mm512_mask_storeu_ps(s + r * n + j, mask16(n - j), o[L]);
    }
  }
}

// 2-bit keys: per tile of 128 tokens (32 bytes of each channel) two passes of 64 tokens. Four
// channels' bytes are gathered into two vectors (one load each when the channels are 32 bytes
// apart) and interleaved by one vpermt2b.
template <int R, int P, bool kTail, bool kPacked, bool kLanes>
KVLAB_TARGET_AVX512_VNNI inline void channel2_step(const KvBlock& k, const PassQuery<R>& pq, int c, int64_t off,
                                                   __mmask32 lm, __m512i (&acc)[R][4]) {
  __m512i x[2];
  KVLAB_UNROLL
  for (int i = 0; i < 2; ++i) {
    const int c0 = c + 2 * i;
    if (kPacked && !kTail) {  // channels c0, c0 + 1 in one 64-byte load (off = 0: n <= 128)
      x[i] = _mm512_maskz_loadu_epi8(__mmask64(lm) | (__mmask64(lm) << 32), k.data + c0 * k.stride);
    } else {
      const __m256i a = !kTail || c0 < k.d ? _mm256_maskz_loadu_epi8(lm, k.data + c0 * k.stride + off)
                                           : _mm256_setzero_si256();
      const __m256i b = !kTail || c0 + 1 < k.d ? _mm256_maskz_loadu_epi8(lm, k.data + (c0 + 1) * k.stride + off)
                                               : _mm256_setzero_si256();
      x[i] = _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
    }
  }
  __m512i v[4];
  split2<P>(x[0], x[1], v);
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    const __m512i qb = query_quad<R, kLanes>(pq, r, c);
    KVLAB_UNROLL
    for (int e = 0; e < 4; ++e) dpbusd(acc[r][e], v[e], qb);
  }
}

template <int R, int P, bool kPacked, bool kLanes>
KVLAB_TARGET_AVX512_VNNI void channel2_pass(const KvBlock& k, const PassQuery<R>& pq, int t0, float* s,
                                            const ReadAhead& ah) {
  const int n = k.n, d = k.d;
  const int64_t off = t0 / 4;
  const __mmask32 lm = __mmask32(mask64(std::min<int64_t>(32, packed_bytes(n, 2) - off)));
  __m512i acc[R][4];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int e = 0; e < 4; ++e) acc[r][e] = _mm512_setzero_si512();
  }
  int c = 0;
  for (; c + 4 <= d; c += 4) {
    if (P == 0) read_ahead_lines(ah, int64_t(c) * k.stride, 4 * k.stride);
    channel2_step<R, P, false, kPacked, kLanes>(k, pq, c, off, lm, acc);
  }
  if (c < d) channel2_step<R, P, true, kPacked, kLanes>(k, pq, c, off, lm, acc);
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    __m512 f[4], o[4];
    KVLAB_UNROLL
    for (int e = 0; e < 4; ++e) f[e] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][e]), pq.qs[r], pq.z[r]);
    unsplit2_ps(f, o);
    KVLAB_UNROLL
    for (int L = 0; L < 4; ++L) {
      const int j = t0 + 64 * P + 16 * L;
      if (j < n) _mm512_mask_storeu_ps(s + r * n + j, mask16(n - j), o[L]);
    }
  }
}

template <int R, int P, bool kLanes>
KVLAB_TARGET_AVX512_VNNI inline void channel24_pass(const KvBlock& k, const PassQuery<R>& pq, int t0, float* s,
                                                    const ReadAhead& ah) {
  if (k.bits == 4) {
    channel4_pass<R, P, kLanes>(k, pq, t0, s, ah);
  } else if (k.stride == 32) {
    channel2_pass<R, P, true, kLanes>(k, pq, t0, s, ah);
  } else {
    channel2_pass<R, P, false, kLanes>(k, pq, t0, s, ah);
  }
}

// Pass P of a tile at t0 of a page of several groups, with the query of its lanes' groups.
template <int R, int P>
KVLAB_TARGET_AVX512_VNNI inline void channel24_group_pass(const KvBlock& k, const TileGroups<R>& tg, int t0, float* s,
                                                          const ReadAhead& ah) {
  const bool four = k.bits == 4;
  const int lane_first[4] = {four ? 16 * P : 64 * P, four ? 32 + 16 * P : 64 * P + 16,
                             four ? 64 + 16 * P : 64 * P + 32, four ? 96 + 16 * P : 64 * P + 48};
  PassQuery<R> pq;
  if (pass_query(k, tg, t0, lane_first, pq)) {
    channel24_pass<R, P, true>(k, pq, t0, s, ah);
  } else {
    channel24_pass<R, P, false>(k, pq, t0, s, ah);
  }
}

template <int R>
KVLAB_TARGET_AVX512_VNNI void int_channel_scores_vnni24_rows(const KvBlock& k, const float* q, float* s) {
  const int groups = channel_groups(k);
  const ReadAhead ah = read_ahead(k);
  read_ahead_meta(k);
  const int second = k.bits == 4 ? 16 : 64;  // pass 1's first token in a tile
  // One group (every block but a KIVI page): its query once, no per-tile group lookup. Taking it
  // through TileGroups / pass_query too costs 2-9% per block hot in L1 (d 64 and 128, 2 and 4 bits).
  if (groups == 1) {
    QuantQuery qq[R];
    quantize_query_rows<R>(k, q, qq);
    PassQuery<R> pq;
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      pq.qd[r] = qq[r].qd;
      pq.qs[r] = _mm512_set1_ps(qq[r].qs);
      pq.z[r] = _mm512_set1_ps(qq[r].z);
    }
    for (int t0 = 0; t0 < k.n; t0 += 128) {
      const ReadAhead& a = t0 == 0 ? ah : ReadAhead();  // the first tile's pass reads every line
      channel24_pass<R, 0, false>(k, pq, t0, s, a);
      if (t0 + second < k.n) channel24_pass<R, 1, false>(k, pq, t0, s, a);
    }
    return;
  }
  TileGroups<R> tg;
  for (int t0 = 0; t0 < k.n; t0 += 128) {
    tile_groups(k, q, t0, tg);
    const ReadAhead& a = t0 == 0 ? ah : ReadAhead();
    channel24_group_pass<R, 0>(k, tg, t0, s, a);
    if (t0 + second < k.n) channel24_group_pass<R, 1>(k, tg, t0, s, a);
  }
}

// Per-row quantized probabilities of a chunk of up to 128 tokens of a kIntToken block.
struct QuantProbs {
  alignas(64) int32_t pd[kVnniMaxTokens / 4 * 16];  // [token quad][group]: 4 uint8 probabilities
  float ps;                                          // step
  float zg[16];                                      // zero term of each group
};

// Fold of lanes i, i + w, ... for a G-periodic lane pattern (G | 16): lanes 0..G-1 get the sums
// of the lanes congruent to them mod G, by halving (i + 8, then i + 4, ...).
KVLAB_TARGET_AVX512_VNNI inline __m512 fold_groups(__m512 v, int G) {
  for (int w = 8; w >= G; w /= 2) {
    const __m512i idx = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                         _mm512_set1_epi32(w));
    v = _mm512_add_ps(v, _mm512_permutexvar_ps(_mm512_and_si512(idx, _mm512_set1_epi32(15)), v));
  }
  return v;
}

// The vpermb index that turns bytes [token][group] (64 / G tokens) into [token quad][group][4].
struct QuadTables {
  alignas(64) uint8_t idx[5][64];  // G = 1, 2, 4, 8, 16
};
constexpr QuadTables make_quad_tables() {
  QuadTables t{};
  for (int lg = 0; lg < 5; ++lg) {
    const int G = 1 << lg;
    for (int qd = 0; qd < 16 / G; ++qd) {
      for (int g = 0; g < G; ++g) {
        for (int tt = 0; tt < 4; ++tt) t.idx[lg][(qd * G + g) * 4 + tt] = uint8_t((4 * qd + tt) * G + g);
      }
    }
  }
  return t;
}
constexpr QuadTables kQuad = make_quad_tables();

// Probabilities of R rows (n floats apart) for the chunk of nc tokens at j0: each row quantized
// alone, as the comment above the integer paths says; the scales and zeros converted once for all
// rows. The bytes are put in [token quad][group] order in registers (a vpermb per 64 entries;
// none for G = 1, whose token order is that order). kG1: G = 1, no lane replication or folds.
template <int R, bool kG1>
KVLAB_TARGET_AVX512_VNNI void quantize_probs(const KvBlock& v, const float* p, int n, int j0, int nc,
                                             QuantProbs* out) {
  const int G = groups_of(v);
  const int lg = __builtin_ctz(unsigned(G));
  const int entries = nc * G;
  alignas(64) float pp[R][kVnniMaxTokens * 16];
  // Lane i of an entry vector e0 .. e0+15 is token (e0 + i) / G, group i % G.
  const __m512i rep = _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), lg);
  __m512 mx[R], zacc[R];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) mx[r] = zacc[r] = _mm512_setzero_ps();
  const uint16_t* scale = v.scale + int64_t(j0) * G;
  const uint16_t* zero = v.zero + int64_t(j0) * G;
  for (int e = 0; e < entries; e += 16) {
    const __mmask16 m = mask16(entries - e), mt = mask16((entries - e + G - 1) >> lg);
    const __m512 sc = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, scale + e));
    const __m512 zr = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, zero + e));
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512 pv =
          kG1 ? _mm512_maskz_loadu_ps(m, p + r * n + j0 + e)
              : _mm512_maskz_mov_ps(m, _mm512_permutexvar_ps(rep, _mm512_maskz_loadu_ps(mt, p + r * n + j0 + (e >> lg))));
      const __m512 v1 = _mm512_mul_ps(pv, sc);
      _mm512_store_ps(pp[r] + e, v1);
      mx[r] = _mm512_max_ps(mx[r], v1);
      zacc[r] = _mm512_fmadd_ps(pv, zr, zacc[r]);
    }
  }
  const __m512i qidx = _mm512_load_si512(kQuad.idx[lg]);
  const float m_half = float((1 << v.bits) - 1) * 0.5f;
  const int padded = (entries + 63) & ~63;
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    const QuantStep st = quant_step(_mm512_reduce_max_ps(mx[r]), 255.0f);
    __m512 dacc = _mm512_setzero_ps();
    uint8_t* pd = reinterpret_cast<uint8_t*>(out[r].pd);
    for (int e = 0; e < padded; e += 64) {
      __m128i b[4];
      KVLAB_UNROLL
      for (int i = 0; i < 4; ++i) {
        if (e + 16 * i >= entries) {
          b[i] = _mm_setzero_si128();
          continue;
        }
        // pp is 0 in lanes beyond the chunk
        b[i] = _mm512_cvtusepi32_epi8(quantize16(_mm512_load_ps(pp[r] + e + 16 * i), st, dacc));
      }
      const __m512i bytes = _mm512_inserti64x4(
          _mm512_castsi256_si512(_mm256_set_m128i(b[1], b[0])), _mm256_set_m128i(b[3], b[2]), 1);
      _mm512_store_si512(pd + e, kG1 ? bytes : _mm512_permutexvar_epi8(qidx, bytes));
    }
    out[r].ps = st.step;
    if constexpr (kG1) {
      out[r].zg[0] = std::fma(m_half, hsum16(dacc), hsum16(zacc[r]));
    } else {
      alignas(64) float dg[16], zgs[16];
      _mm512_store_ps(dg, fold_groups(dacc, G));
      _mm512_store_ps(zgs, fold_groups(zacc[r], G));
      for (int g = 0; g < G; ++g) out[r].zg[g] = std::fma(m_half, dg[g], zgs[g]);
    }
  }
}

template <int R>
KVLAB_TARGET_AVX512_VNNI void int_token_acc_vnni_rows(const KvBlock& v, const float* p, float* acc) {
  const int n = v.n, d = v.d, bits = v.bits, G = groups_of(v);
  const VnniTables& tb = vnni_tables(bits);
  const int64_t rb = packed_bytes(d, bits);
  QuantProbs qp[R];
  const ReadAhead ah = read_ahead(v);
  read_ahead_meta(v);
  for (int j0 = 0; j0 < n; j0 += kVnniMaxTokens) {
    const int nc = std::min(kVnniMaxTokens, n - j0);
    if (G == 1) {
      quantize_probs<R, true>(v, p, n, j0, nc, qp);
    } else {
      quantize_probs<R, false>(v, p, n, j0, nc, qp);
    }
    for (int c0 = 0; c0 < d; c0 += 64) {
      const int64_t off = int64_t(c0) * bits / 8;
      const __mmask64 lm = mask64(std::min<int64_t>(8 * bits, rb - off));
      int gk[4];
      KVLAB_UNROLL
      for (int kk = 0; kk < 4; ++kk) gk[kk] = std::min((c0 + 16 * kk) / v.group, G - 1);
      __m512i a[R][4];
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) {
        KVLAB_UNROLL
        for (int kk = 0; kk < 4; ++kk) a[r][kk] = _mm512_setzero_si512();
      }
      for (int j = 0; j < nc; j += 4) {
        if (c0 == 0) read_ahead_lines(ah, int64_t(j0 + j) * v.stride, 4 * v.stride);
        __m512i y[4];
        KVLAB_UNROLL
        for (int t = 0; t < 4; ++t) {
          y[t] = j + t < nc ? expand64(tb, _mm512_maskz_loadu_epi8(lm, v.data + (j0 + j + t) * v.stride + off), bits)
                            : _mm512_setzero_si512();
        }
        __m512i cv[4];
        interleave4(y, cv);
        KVLAB_UNROLL
        for (int r = 0; r < R; ++r) {
          const int32_t* pd = qp[r].pd + (j / 4) * G;
          KVLAB_UNROLL
          for (int kk = 0; kk < 4; ++kk) {
            dpbusd(a[r][kk], _mm512_set1_epi32(pd[gk[kk]]), cv[kk]);
          }
        }
      }
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) {
        const __m512 ps = _mm512_set1_ps(qp[r].ps);
        KVLAB_UNROLL
        for (int kk = 0; kk < 4; ++kk) {
          const __mmask16 m = mask16(d - c0 - 16 * kk);
          if (!m) break;
          float* dst = acc + r * d + c0 + 16 * kk;
          const __m512 t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[r][kk]), ps, _mm512_set1_ps(qp[r].zg[gk[kk]]));
          _mm512_mask_storeu_ps(dst, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst), t));
        }
      }
    }
  }
}

// ---- kIntToken values, 4- and 2-bit, d = 128: the byte interleave of the key paths -------------
// Four token rows are interleaved (one byte of each per dword, split4 / split2), so vpdpbusd takes
// the four tokens' probabilities against their codes of one channel; the channels come out
// permuted and the integer sums are put back in order before the one conversion per output.
// Same exact integer sums as int_token_acc_vnni_rows: bit for bit its results.

// The probabilities of token quad q for lanes whose 128-bit lane L lies in group gidx[L].
template <bool kG1>
KVLAB_TARGET_AVX512_VNNI inline __m512i quad_probs(const QuantProbs& qp, int q, int G, __m512i gidx) {
  if constexpr (kG1) {
    return _mm512_set1_epi32(qp.pd[q]);
  } else {
    return _mm512_permutexvar_epi32(gidx, _mm512_maskz_loadu_epi32(mask16(G), qp.pd + q * G));
  }
}

// Lane L of the result: the group of channel c0 + stride_l * L, in every dword.
KVLAB_TARGET_AVX512 inline __m512i lane_groups(int c0, int stride_l, int group) {
  return _mm512_setr_epi32(c0 / group, c0 / group, c0 / group, c0 / group, (c0 + stride_l) / group,
                           (c0 + stride_l) / group, (c0 + stride_l) / group, (c0 + stride_l) / group,
                           (c0 + 2 * stride_l) / group, (c0 + 2 * stride_l) / group, (c0 + 2 * stride_l) / group,
                           (c0 + 2 * stride_l) / group, (c0 + 3 * stride_l) / group, (c0 + 3 * stride_l) / group,
                           (c0 + 3 * stride_l) / group, (c0 + 3 * stride_l) / group);
}

// acc[c0 + 16 L + i] += o[L][i] * ps + zg[group of c0 + 16 L] for the 64 channels of one pass,
// L = 0..3 at channel offsets `lane_off[L]`.
template <int R>
KVLAB_TARGET_AVX512 inline void token_acc_store(const QuantProbs& qp, const __m512i (&o)[4], const int (&c)[4],
                                                int group, float* acc) {
  const __m512 ps = _mm512_set1_ps(qp.ps);
  KVLAB_UNROLL
  for (int L = 0; L < 4; ++L) {
    float* dst = acc + c[L];
    const __m512 t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(o[L]), ps, _mm512_set1_ps(qp.zg[c[L] / group]));
    _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(dst), t));
  }
}

template <int R, int P, bool kG1>
KVLAB_TARGET_AVX512_VNNI void token4_pass(const KvBlock& v, const QuantProbs (&qp)[R], int j0, int nc, float* acc,
                                          const ReadAhead& ah) {
  const int G = groups_of(v);
  const __m512i gidx = lane_groups(16 * P, 32, v.group);
  __m512i a[R][2][2];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int i = 0; i < 4; ++i) a[r][i / 2][i % 2] = _mm512_setzero_si512();
  }
  const uint8_t* rows = v.data + int64_t(j0) * v.stride;
  for (int j = 0; j < nc; j += 4) {
    if (P == 0) read_ahead_lines(ah, int64_t(j0 + j) * v.stride, 4 * v.stride);
    __m512i x[4];
    KVLAB_UNROLL
    for (int t = 0; t < 4; ++t) {
      x[t] = _mm512_maskz_loadu_epi8(j + t < nc ? ~__mmask64(0) : __mmask64(0), rows + (j + t) * v.stride);
    }
    __m512i cv[2][2];
    split4<P>(x, cv);
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512i pv = quad_probs<kG1>(qp[r], j / 4, G, gidx);
      KVLAB_UNROLL
      for (int i = 0; i < 4; ++i) dpbusd(a[r][i / 2][i % 2], pv, cv[i / 2][i % 2]);
    }
  }
  const int c[4] = {16 * P, 32 + 16 * P, 64 + 16 * P, 96 + 16 * P};
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    __m512i o[4];
    unsplit4_epi32(a[r], o);
    token_acc_store<R>(qp[r], o, c, v.group, acc + r * 128);
  }
}

template <int R, int P, bool kG1, bool kPacked>
KVLAB_TARGET_AVX512_VNNI void token2_pass(const KvBlock& v, const QuantProbs (&qp)[R], int j0, int nc, float* acc,
                                          const ReadAhead& ah) {
  const int G = groups_of(v);
  const __m512i gidx = lane_groups(64 * P, 16, v.group);
  __m512i a[R][4];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int e = 0; e < 4; ++e) a[r][e] = _mm512_setzero_si512();
  }
  const uint8_t* rows = v.data + int64_t(j0) * v.stride;
  for (int j = 0; j < nc; j += 4) {
    if (P == 0) read_ahead_lines(ah, int64_t(j0 + j) * v.stride, 4 * v.stride);
    __m512i x[2];
    KVLAB_UNROLL
    for (int i = 0; i < 2; ++i) {
      const int t = j + 2 * i;
      const __mmask32 m0 = t < nc ? ~__mmask32(0) : __mmask32(0), m1 = t + 1 < nc ? ~__mmask32(0) : __mmask32(0);
      if constexpr (kPacked) {  // rows t, t + 1 in one 64-byte load
        x[i] = _mm512_maskz_loadu_epi8(__mmask64(m0) | (__mmask64(m1) << 32), rows + t * 32);
      } else {
        x[i] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_maskz_loadu_epi8(m0, rows + t * v.stride)),
                                  _mm256_maskz_loadu_epi8(m1, rows + (t + 1) * v.stride), 1);
      }
    }
    __m512i cv[4];
    split2<P>(x[0], x[1], cv);
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512i pv = quad_probs<kG1>(qp[r], j / 4, G, gidx);
      KVLAB_UNROLL
      for (int e = 0; e < 4; ++e) dpbusd(a[r][e], pv, cv[e]);
    }
  }
  const int c[4] = {64 * P, 64 * P + 16, 64 * P + 32, 64 * P + 48};
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    __m512i o[4];
    unsplit2_epi32(a[r], o);
    token_acc_store<R>(qp[r], o, c, v.group, acc + r * 128);
  }
}

template <int R, bool kG1>
KVLAB_TARGET_AVX512_VNNI void token24_chunk(const KvBlock& v, const QuantProbs (&qp)[R], int j0, int nc, float* acc,
                                            const ReadAhead& ah) {
  if (v.bits == 4) {
    token4_pass<R, 0, kG1>(v, qp, j0, nc, acc, ah);
    token4_pass<R, 1, kG1>(v, qp, j0, nc, acc, ah);
  } else if (v.stride == 32) {
    token2_pass<R, 0, kG1, true>(v, qp, j0, nc, acc, ah);
    token2_pass<R, 1, kG1, true>(v, qp, j0, nc, acc, ah);
  } else {
    token2_pass<R, 0, kG1, false>(v, qp, j0, nc, acc, ah);
    token2_pass<R, 1, kG1, false>(v, qp, j0, nc, acc, ah);
  }
}

// kIntToken values with d = 128, 2 or 4 bits, group % 16 == 0.
template <int R>
KVLAB_TARGET_AVX512_VNNI void int_token_acc_vnni24_rows(const KvBlock& v, const float* p, float* acc) {
  const int n = v.n;
  QuantProbs qp[R];
  const ReadAhead ah = read_ahead(v);
  read_ahead_meta(v);
  for (int j0 = 0; j0 < n; j0 += kVnniMaxTokens) {
    const int nc = std::min(kVnniMaxTokens, n - j0);
    if (groups_of(v) == 1) {
      quantize_probs<R, true>(v, p, n, j0, nc, qp);
      token24_chunk<R, true>(v, qp, j0, nc, acc, ah);
    } else {
      quantize_probs<R, false>(v, p, n, j0, nc, qp);
      token24_chunk<R, false>(v, qp, j0, nc, acc, ah);
    }
  }
}

// Scores, kIntToken keys with d = 128 and group % 32 == 0 (the `quant` policy): the query is
// quantized to int8 once per row (qs = max|q| / 127; the scales are per token and cannot be
// folded into it), each token's codes expanded to natural byte order, and vpdpbusd gives
// per-(row, token) partial sums of 4 channels per lane; a transposing reduction turns 4 tokens x
// 2 vectors into the 16 integer sums S[t, h] over the channel quarters h (32 channels each).
//   s[t] = sum_h (scale[t, g(h)] * (qs * S[t, h] + m * D[h]) + zero[t, g(h)] * Q[h])
// D[h], Q[h]: the sums of q - qs * qi and of q over quarter h; the f32 sum over h is the tree
// (h0 + h2) + (h1 + h3). Error: |s - exact| <= (qs / 2) sum_c scale[t, g(c)] |code(t, c) - m|.

// Natural order: qword Q holds codes 8Q .. 8Q+7 (bytes Q * bits ..), byte e of it code 8Q + e.
constexpr VnniTables make_natural_tables(int bits) {
  VnniTables t{};
  for (int q = 0; q < 8; ++q) {
    for (int e = 0; e < 8; ++e) {
      t.gather[8 * q + e] = uint8_t(std::min(q * bits + e, 63));
      t.shift[8 * q + e] = uint8_t(e * bits);
    }
  }
  return t;
}
constexpr VnniTables kNatural2 = make_natural_tables(2);
constexpr VnniTables kNatural3 = make_natural_tables(3);
constexpr VnniTables kNatural4 = make_natural_tables(4);

struct TokenQuery {
  __m512i q0, q1;  // qi of channels 0..63, 64..127 (natural order, int8)
  float qs;
  alignas(16) float d[4], qsum[4];  // per channel quarter
};

KVLAB_TARGET_AVX512_VNNI void quantize_token_query(const float* q, TokenQuery* out) {
  __m512 v[8];
  __m512 amax = _mm512_setzero_ps();
  KVLAB_UNROLL
  for (int i = 0; i < 8; ++i) {
    v[i] = _mm512_loadu_ps(q + 16 * i);
    amax = _mm512_max_ps(amax, _mm512_abs_ps(v[i]));
  }
  const QuantStep st = quant_step(_mm512_reduce_max_ps(amax), 127.0f);
  __m128i b[8];
  KVLAB_UNROLL
  for (int h = 0; h < 4; ++h) {
    __m512 dsum = _mm512_setzero_ps();
    KVLAB_UNROLL
    for (int i = 2 * h; i < 2 * h + 2; ++i) {
      b[i] = _mm512_cvtsepi32_epi8(quantize16(v[i], st, dsum));
    }
    out->d[h] = hsum16(dsum);
    out->qsum[h] = hsum16(_mm512_add_ps(v[2 * h], v[2 * h + 1]));
  }
  const __m256i lo01 = _mm256_set_m128i(b[1], b[0]), lo23 = _mm256_set_m128i(b[3], b[2]);
  const __m256i hi01 = _mm256_set_m128i(b[5], b[4]), hi23 = _mm256_set_m128i(b[7], b[6]);
  out->q0 = _mm512_inserti64x4(_mm512_castsi256_si512(lo01), lo23, 1);
  out->q1 = _mm512_inserti64x4(_mm512_castsi256_si512(hi01), hi23, 1);
  out->qs = st.step;
}

template <int R>
KVLAB_TARGET_AVX512_VNNI void int_token_scores_vnni_rows(const KvBlock& k, const float* q, float* s) {
  const int n = k.n, bits = k.bits, G = groups_of(k);
  const VnniTables& tb = bits == 2 ? kNatural2 : (bits == 3 ? kNatural3 : kNatural4);
  const __m512i gather = _mm512_load_si512(tb.gather), shift = _mm512_load_si512(tb.shift);
  const __m512i cmask = _mm512_set1_epi8(char((1 << bits) - 1));
  const int64_t rb = packed_bytes(128, bits);  // <= 64
  const __mmask64 ma = mask64(std::min<int64_t>(8 * bits, rb)), mb = mask64(rb - 8 * bits);
  const float m_half = float((1 << bits) - 1) * 0.5f;
  TokenQuery tq[R];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) quantize_token_query(q + r * 128, &tq[r]);
  // Lane 4h + t of the scale / zero vectors: entry t * G + g(h) of the 4 tokens' 4G entries.
  alignas(64) int32_t sidx[16];
  for (int h = 0; h < 4; ++h) {
    for (int t = 0; t < 4; ++t) sidx[4 * h + t] = t * G + (32 * h) / k.group;
  }
  const __m512i scale_idx = _mm512_load_si512(sidx);
  __m512 md[R], qz[R];  // lane 4h + t: m * D[h], Q[h]
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    alignas(64) float a[16], b2[16];
    for (int h = 0; h < 4; ++h) {
      for (int t = 0; t < 4; ++t) a[4 * h + t] = m_half * tq[r].d[h], b2[4 * h + t] = tq[r].qsum[h];
    }
    md[r] = _mm512_load_ps(a);
    qz[r] = _mm512_load_ps(b2);
  }
  const ReadAhead ah = read_ahead(k);
  read_ahead_meta(k);
  for (int j = 0; j < n; j += 4) {
    read_ahead_lines(ah, int64_t(j) * k.stride, 4 * k.stride);
    const int T = std::min(4, n - j);
    __m512i A[4], B[4];
    KVLAB_UNROLL
    for (int t = 0; t < 4; ++t) {
      if (t < T) {
        const uint8_t* row = k.data + (j + t) * k.stride;
        A[t] = _mm512_and_si512(_mm512_multishift_epi64_epi8(shift, _mm512_permutexvar_epi8(gather, _mm512_maskz_loadu_epi8(ma, row))), cmask);
        B[t] = _mm512_and_si512(_mm512_multishift_epi64_epi8(shift, _mm512_permutexvar_epi8(gather, _mm512_maskz_loadu_epi8(mb, row + 8 * bits))), cmask);
      } else {
        A[t] = B[t] = _mm512_setzero_si512();
      }
    }
    const __mmask16 em = mask16(4 * G > 16 ? 16 : std::min(4, T) * G);
    const __m512 sc = _mm512_permutexvar_ps(scale_idx, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(em, k.scale + j * G)));
    const __m512 zr = _mm512_permutexvar_ps(scale_idx, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(em, k.zero + j * G)));
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      __m512i c[4];
      KVLAB_UNROLL
      for (int t = 0; t < 4; ++t) {
        __m512i pa = _mm512_setzero_si512(), pb = _mm512_setzero_si512();
        dpbusd(pa, A[t], tq[r].q0);
        dpbusd(pb, B[t], tq[r].q1);
        c[t] = _mm512_add_epi32(_mm512_shuffle_i32x4(pa, pb, 0x88), _mm512_shuffle_i32x4(pa, pb, 0xdd));
      }
      const __m512i t0 = _mm512_unpacklo_epi32(c[0], c[1]), t1 = _mm512_unpackhi_epi32(c[0], c[1]);
      const __m512i t2 = _mm512_unpacklo_epi32(c[2], c[3]), t3 = _mm512_unpackhi_epi32(c[2], c[3]);
      const __m512i S = _mm512_add_epi32(_mm512_add_epi32(_mm512_unpacklo_epi64(t0, t2), _mm512_unpackhi_epi64(t0, t2)),
                                         _mm512_add_epi32(_mm512_unpacklo_epi64(t1, t3), _mm512_unpackhi_epi64(t1, t3)));
      // Lane 4h + t: S[t, h]; U = scale * (qs * S + m D) + zero * Q.
      const __m512 u = _mm512_fmadd_ps(sc, _mm512_fmadd_ps(_mm512_cvtepi32_ps(S), _mm512_set1_ps(tq[r].qs), md[r]),
                                       _mm512_mul_ps(zr, qz[r]));
      const __m512 y = _mm512_add_ps(u, _mm512_shuffle_f32x4(u, u, 0x4e));  // h + h+2
      const __m512 z = _mm512_add_ps(y, _mm512_shuffle_f32x4(y, y, 0xb1));  // + (h+1 + h+3)
      _mm_mask_storeu_ps(s + r * n + j, __mmask8((1u << T) - 1), _mm512_castps512_ps128(z));
    }
  }
}

// Which packed blocks take the integer (VNNI) paths on AVX-512.
// Pages of several token groups: 2/4-bit in one pass (groups of 32k tokens, heads up to
// kMaxLaneD); the others are split into their groups (kv_attention.cc).
bool vnni_keys(const KvBlock& k) {
  if (k.format != KvFormat::kIntChannel || k.bits > 4 || !cpu_has_vnni_vbmi()) return false;
  return channel_groups(k) <= 1 || (k.bits != 3 && channel_group_tokens(k) % 32 == 0 && k.d <= kMaxLaneD);
}
bool vnni_token_keys(const KvBlock& k) {
  return k.format == KvFormat::kIntToken && k.bits <= 4 && k.d == 128 && k.group % 32 == 0 && cpu_has_vnni_vbmi();
}
bool vnni_values(const KvBlock& v) {
  if (v.format != KvFormat::kIntToken || v.bits > 4 || v.group % 16 != 0 || !cpu_has_vnni_vbmi()) return false;
  const int G = groups_of(v);
  return G <= 16 && (G & (G - 1)) == 0;
}

}  // namespace

// The blocks VNNI does not take (8-bit codes; any, on AVX-512 without VNNI) go to the AVX2
// integer paths (kv_int_avx2.cc: vpmaddwd / vpmaddubsw on 256 bits), which every AVX-512 CPU runs:
// int8 at 32K, 8B layout, from memory, 13.3 -> 7.2 ms against the f32 path (docs/results.md).
bool vnni_scores_take(const KvBlock& k) {
  if (k.d > kMaxSimdD) return false;
  if (vnni_keys(k) || vnni_token_keys(k)) return true;
  // A page whose groups VNNI takes one by one is split, so that each score is its group's own.
  if (channel_groups(k) > 1 && vnni_keys(channel_sub_block(k, 0))) return false;
  return avx2_int_scores_take(k);
}

bool vnni_accumulate_take(const KvBlock& v) {
  return v.d <= kMaxSimdD && (vnni_values(v) || avx2_int_accumulate_take(v));
}

void vnni_scores(const KvBlock& k, const float* q, int rows, float* s) {
  if (!vnni_keys(k) && !vnni_token_keys(k)) return avx2_int_scores(k, q, rows, s);
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const float* qr = q + int64_t(r0) * k.d;
    float* sr = s + int64_t(r0) * k.n;
    if (k.format == KvFormat::kIntToken) {
      with_rows(rows - r0, [&]<int R>() { int_token_scores_vnni_rows<R>(k, qr, sr); });
    } else if (k.bits == 4 || k.bits == 2) {
      with_rows(rows - r0, [&]<int R>() { int_channel_scores_vnni24_rows<R>(k, qr, sr); });
    } else {
      with_rows(rows - r0, [&]<int R>() { int_channel_scores_vnni_rows<R>(k, qr, sr); });
    }
  }
}

void vnni_accumulate(const KvBlock& v, const float* p, int rows, float* acc) {
  if (!vnni_values(v)) return avx2_int_accumulate(v, p, rows, acc);
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const float* pr = p + int64_t(r0) * v.n;
    float* ar = acc + int64_t(r0) * v.d;
    if (v.d == 128 && (v.bits == 4 || v.bits == 2)) {
      with_rows(rows - r0, [&]<int R>() { int_token_acc_vnni24_rows<R>(v, pr, ar); });
    } else {
      with_rows(rows - r0, [&]<int R>() { int_token_acc_vnni_rows<R>(v, pr, ar); });
    }
  }
}

#else  // not x86: no VNNI

bool vnni_scores_take(const KvBlock&) { return false; }
bool vnni_accumulate_take(const KvBlock&) { return false; }
void vnni_scores(const KvBlock&, const float*, int, float*) {}
void vnni_accumulate(const KvBlock&, const float*, int, float*) {}

#endif  // KVLAB_X86

}  // namespace kvlab
