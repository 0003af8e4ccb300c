// Fused scores / value accumulation over packed K/V blocks (see kv_attention.h): scalar reference,
// AVX2 and AVX-512 (+ VNNI / VBMI integer paths), dispatched per call.
//
// Batch invariance comes from one rule, as in matmul.cc: every output element has exactly one
// sequence of operations per ISA, and the row chunk (4 rows), token tile or channel tile an
// output lands in only decides which independent outputs run side by side. The sequences:
//
//   scalar    one float accumulator per output, terms in index order, products and sums rounded
//             separately (kIntChannel keys: (q * scale) * code per channel, then + sum q * zero;
//             kIntToken values: (p * scale) * code per token, then + the group's sum p * zero).
//   dense scores (AVX-512 / AVX2)   one 16 / 8-lane fma accumulator per (row, token) over the
//             channels (masked tail), then the fixed lane tree (i + i+8, + i+4, + i+2, + i+1 /
//             i + i+4, + i+2, + i+1); fp8: times scale * 256 at the end (e4m3 is decoded through
//             its f16 bit pattern, 2^-8 of its value). Tiles of 4 tokens i, i + n/4, i + n/2,
//             i + 3n/4: four long sequential streams through the block for the prefetchers.
//   dense accumulate   acc[r, c] = fma(p[r, j] (* fp8 scale * 256), V(j, c), acc[r, c]) for
//             j ascending, in registers over tiles of 4 rows x 64 / 32 channels.
//   kIntChannel scores, f32   lanes = tokens: fma(q[c] * scale[c], code, acc) for c ascending,
//             then + z, z = fma chain of q[c] * zero[c] (AVX-512 without VNNI, 8-bit, AVX2).
//   kIntToken accumulate, f32   lanes = channels: fma(p * scale[j, g], code, acc) for j
//             ascending, then + the fma chain of p * zero[j, g] over j.
//   kIntToken scores (no VNNI path) / kIntChannel accumulate   tokens dequantized to a stack
//             tile (fma(code, scale, zero), exact product) then the dense dots / per-channel dots
//             over the tokens with the lane tree.
//   VNNI paths   integer sums (exact), one conversion and fma per output (bounds in the header).
//
// Integer paths. Codes are expanded to bytes with vpermb + vpmultishiftqb + and (2, 3, 4 bits
// alike, 64 codes per three instructions) in an order chosen so that interleaving four streams
// (unpack epi8, then epi16) gives dwords holding the four streams' code of one output in natural
// order; vpdpbusd then adds four products per lane: kIntChannel keys take four channels of a
// token per lane against four int8 query bytes, kIntToken values four tokens of a channel
// against four uint8 probabilities. kIntToken keys expand each token row in natural order and
// reduce 4 tokens x 2 vectors of partial sums with one transposing network.
//
// Measured on 2 cores of an AMD EPYC Zen 4 (3.65 GHz, VM shared with other jobs; fastest runs).
// Cycles per block of 128 tokens x d = 128, 4 query rows, data in L1 (scores / accumulate):
//   f32 6100 / 4300, f16 and bf16 7000 / 4900, fp8 9900 / 8300 (f32 FMA bound: 4096 / 4096);
//   int4 and int2 KIVI (kIntChannel keys / kIntToken values) 2300 / 2700 (group 128), 3700
//   (group 32); kIntToken keys (quant, d = 128) 4500; 8-bit integer formats ~9000 / ~13000;
//   online softmax of the block ~700.
// Decode attention over a 32K context, Llama-3-8B heads (8 kv heads x 4 query rows, d = 128),
// blocks of 128 tokens, a kv head's blocks contiguous, 2 threads, STREAM read 36 GB/s (harness in
// the report): f32 13.3 ms (55% of STREAM), f16 5.3-5.9 ms (63-70%), int4 2.8 ms, int2 2.0 ms:
// int4 4.8x faster than f32, 1.9-2.1x than f16. Below STREAM because a core keeps only ~24
// demand misses in flight (~12 GB/s here) and every block starts its streams cold; 32-token
// blocks interleaved with the other heads' (a page per 32 tokens) cost f16 another 40%.
#include "kernels/cpu/kv_attention.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "base/check.h"
#include "base/half.h"
#include "kernels/cpu/simd.h"

namespace kvlab {
namespace {

// Full unrolling of the short fixed loops over register tiles: partly unrolled loops index the
// tile arrays at run time and GCC then keeps them in memory.
#define KVLAB_UNROLL _Pragma("GCC unroll 16")

// Head sizes above this take the scalar path (the SIMD paths keep per-token f32 tiles of d
// channels on the stack).
constexpr int kMaxSimdD = 1024;

// e4m3 (kv_format.h) -> f32, exact: 1 sign, 4 exponent bits (bias 7), 3 mantissa bits, no
// infinities, 0x7f / 0xff NaN.
constexpr float e4m3_value(int b) {
  const int e = (b >> 3) & 15, mant = b & 7;
  if (e == 15 && mant == 7) return std::numeric_limits<float>::quiet_NaN();
  float v = e == 0 ? float(mant) / 8.0f : 1.0f + float(mant) / 8.0f;
  int p = e == 0 ? -6 : e - 7;
  for (; p > 0; --p) v *= 2.0f;
  for (; p < 0; ++p) v *= 0.5f;
  return (b & 0x80) ? -v : v;
}

constexpr std::array<float, 256> make_e4m3_table() {
  std::array<float, 256> t{};
  for (int b = 0; b < 256; ++b) t[b] = e4m3_value(b);
  return t;
}
constexpr std::array<float, 256> kE4m3 = make_e4m3_table();

// Code i of a little-endian bit stream of `bits`-bit codes.
inline uint32_t code_at(const uint8_t* p, int64_t i, int bits) {
  const int64_t bit = i * bits;
  const int64_t byte = bit >> 3;
  const int sh = int(bit & 7);
  uint32_t v = uint32_t(p[byte]) >> sh;
  if (sh + bits > 8) v |= uint32_t(p[byte + 1]) << (8 - sh);
  return v & ((1u << bits) - 1);
}

// Element (j, c) of a token-major dense block, as f32 (kFp8 without its token scale).
inline float dense_at(const KvBlock& b, int j, int c) {
  const uint8_t* row = b.data + j * b.stride;
  switch (b.format) {
    case KvFormat::kF32: {
      float v;
      std::memcpy(&v, row + 4 * c, 4);
      return v;
    }
    case KvFormat::kF16: {
      uint16_t h;
      std::memcpy(&h, row + 2 * c, 2);
      return f16_to_f32(h);
    }
    case KvFormat::kBF16: {
      uint16_t h;
      std::memcpy(&h, row + 2 * c, 2);
      return bf16_to_f32(h);
    }
    default:
      return kE4m3[row[c]];
  }
}

inline int groups_of(const KvBlock& b) { return b.d / b.group; }

// ---------------------------------------------------------------------------------------------
// Scalar reference: one float accumulator per output, terms added in index order.

void scores_scalar(const KvBlock& k, const float* q, int rows, float* s) {
  const int n = k.n, d = k.d;
  for (int r = 0; r < rows; ++r) {
    const float* qr = q + int64_t(r) * d;
    float* sr = s + int64_t(r) * n;
    switch (k.format) {
      case KvFormat::kIntToken: {
        const int groups = groups_of(k);
        for (int j = 0; j < n; ++j) {
          const uint8_t* codes = k.data + j * k.stride;
          float sum = 0.0f;
          for (int c = 0; c < d; ++c) {
            const int g = j * groups + c / k.group;
            sum += qr[c] * (float(code_at(codes, c, k.bits)) * f16_to_f32(k.scale[g]) + f16_to_f32(k.zero[g]));
          }
          sr[j] = sum;
        }
        break;
      }
      case KvFormat::kIntChannel: {
        float zterm = 0.0f;
        for (int c = 0; c < d; ++c) zterm += qr[c] * f16_to_f32(k.zero[c]);
        for (int j = 0; j < n; ++j) {
          float sum = 0.0f;
          for (int c = 0; c < d; ++c) {
            sum += (qr[c] * f16_to_f32(k.scale[c])) * float(code_at(k.data + c * k.stride, j, k.bits));
          }
          sr[j] = sum + zterm;
        }
        break;
      }
      default: {
        for (int j = 0; j < n; ++j) {
          float sum = 0.0f;
          for (int c = 0; c < d; ++c) sum += qr[c] * dense_at(k, j, c);
          sr[j] = k.format == KvFormat::kFp8 ? sum * f16_to_f32(k.scale[j]) : sum;
        }
        break;
      }
    }
  }
}

void accumulate_scalar(const KvBlock& v, const float* p, int rows, float* acc) {
  const int n = v.n, d = v.d;
  for (int r = 0; r < rows; ++r) {
    const float* pr = p + int64_t(r) * n;
    float* a = acc + int64_t(r) * d;
    switch (v.format) {
      case KvFormat::kIntToken: {
        const int groups = groups_of(v);
        for (int g = 0; g < groups; ++g) {
          float zsum = 0.0f;
          for (int j = 0; j < n; ++j) {
            const float pj = pr[j] * f16_to_f32(v.scale[j * groups + g]);
            const uint8_t* codes = v.data + j * v.stride;
            for (int c = g * v.group; c < (g + 1) * v.group; ++c) a[c] += pj * float(code_at(codes, c, v.bits));
            zsum += pr[j] * f16_to_f32(v.zero[j * groups + g]);
          }
          for (int c = g * v.group; c < (g + 1) * v.group; ++c) a[c] += zsum;
        }
        break;
      }
      case KvFormat::kIntChannel: {
        float psum = 0.0f;
        for (int j = 0; j < n; ++j) psum += pr[j];
        for (int c = 0; c < d; ++c) {
          float dot = 0.0f;
          for (int j = 0; j < n; ++j) dot += pr[j] * float(code_at(v.data + c * v.stride, j, v.bits));
          a[c] += dot * f16_to_f32(v.scale[c]) + psum * f16_to_f32(v.zero[c]);
        }
        break;
      }
      default: {
        for (int j = 0; j < n; ++j) {
          const float pj = v.format == KvFormat::kFp8 ? pr[j] * f16_to_f32(v.scale[j]) : pr[j];
          for (int c = 0; c < d; ++c) a[c] += pj * dense_at(v, j, c);
        }
        break;
      }
    }
  }
}

#ifdef KVLAB_X86
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

// Byte tables of the generic code extraction (codes16 / codes8): for `bits`-bit codes 0..15 of a
// stream, dword lane i gets the two bytes holding code i (pshufb index) and shifts right by
// (i * bits) % 8.
struct ExtractTables {
  alignas(64) uint8_t shuffle[64];
  alignas(64) uint32_t shift[16];
};
constexpr ExtractTables make_extract_tables(int bits) {
  ExtractTables t{};
  KVLAB_UNROLL
  for (int i = 0; i < 16; ++i) {
    const int byte = (i * bits) / 8;
    t.shuffle[4 * i + 0] = uint8_t(byte);
    t.shuffle[4 * i + 1] = uint8_t(byte + 1);  // <= 8: pshufb indexes within each 128-bit lane
    t.shuffle[4 * i + 2] = 0x80;
    t.shuffle[4 * i + 3] = 0x80;
    t.shift[i] = uint32_t((i * bits) % 8);
  }
  return t;
}
constexpr ExtractTables kExtract2 = make_extract_tables(2);
constexpr ExtractTables kExtract3 = make_extract_tables(3);
constexpr ExtractTables kExtract4 = make_extract_tables(4);
inline const ExtractTables& extract_tables(int bits) {
  return bits == 2 ? kExtract2 : (bits == 3 ? kExtract3 : kExtract4);
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

// ---------------------------------------------------------------------------------------------
// AVX-512

// Read-ahead (see "Read-ahead" at the top of the file): the `span` bytes that follow a block's
// `span` bytes, asked for a few cache lines at a time in lockstep with the block's own reads.
struct ReadAhead {
  const uint8_t* p = nullptr;  // null: none
  int64_t bytes = 0;
};

inline ReadAhead read_ahead(const uint8_t* data, int64_t span) { return {data + span, span}; }

// The lines of [off, off + bytes) of the read-ahead region (clipped to it).
inline void read_ahead_lines(const ReadAhead& a, int64_t off, int64_t bytes) {
  if (!a.p) return;
  const int64_t end = std::min(off + bytes, a.bytes);
  for (int64_t o = off; o < end; o += 64) __builtin_prefetch(a.p + o, 0, 2);
}

// The `bytes` bytes that follow each of the arrays at a and b (scales and zeros), at once.
inline void read_ahead_meta(const void* a, const void* b, int64_t bytes) {
  for (int64_t o = 0; o < bytes; o += 64) {
    if (a) __builtin_prefetch(static_cast<const uint8_t*>(a) + bytes + o, 0, 2);
    if (b) __builtin_prefetch(static_cast<const uint8_t*>(b) + bytes + o, 0, 2);
  }
}

KVLAB_TARGET_AVX512 inline __mmask16 mask16(int count) {
  return count >= 16 ? __mmask16(0xffff) : (count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1));
}

KVLAB_TARGET_AVX512 inline float h2f_avx512(uint16_t h) {
  return _mm_cvtss_f32(_mm512_castps512_ps128(_mm512_cvtph_ps(_mm256_set1_epi16(short(h)))));
}

// e4m3 bytes -> f32 times 2^-8, exact: the e4m3 bits moved into an f16 (sign to bit 15, the 7
// magnitude bits to bits 13..7) are the same number with exponent bias 15 instead of 7, normal
// and subnormal alike; vcvtph2ps widens. 0x7f / 0xff become the f16 NaN. The kernels fold the
// 2^8 into the per-token scale (exact).
constexpr float kE4m3Unscale = 256.0f;

KVLAB_TARGET_AVX512 inline __m512 e4m3_to_ps_avx512(__m128i bytes) {
  __m256i w = _mm256_slli_epi16(_mm256_cvtepu8_epi16(bytes), 8);  // s mmmmmmm 0...
  w = _mm256_and_si256(_mm256_srai_epi16(w, 1), _mm256_set1_epi16(short(0xbfff)));
  const __m256i mag = _mm256_set1_epi16(0x3f80);
  const __mmask16 nan = _mm256_cmpeq_epi16_mask(_mm256_and_si256(w, mag), mag);
  return _mm512_cvtph_ps(_mm256_mask_mov_epi16(w, nan, _mm256_set1_epi16(0x7e00)));
}

// Channels c .. c+15 of a dense token row as f32 (lanes outside `m` are 0 and not read).
template <KvFormat F>
KVLAB_TARGET_AVX512 inline __m512 load_dense16(const uint8_t* row, int c, __mmask16 m) {
  if constexpr (F == KvFormat::kF32) {
    return _mm512_maskz_loadu_ps(m, row + 4 * c);
  } else if constexpr (F == KvFormat::kF16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, row + 2 * c));
  } else if constexpr (F == KvFormat::kBF16) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, row + 2 * c)), 16));
  } else {
    return e4m3_to_ps_avx512(_mm_maskz_loadu_epi8(m, row + c));
  }
}

// Codes first .. first+15 (first % 8 == 0) of a bit stream of `stream_bytes` bytes, as f32;
// bytes past the stream are never read (codes beyond it read as 0).
KVLAB_TARGET_AVX512 inline __m512 codes16(const uint8_t* stream, int first, int bits, int64_t stream_bytes) {
  const int64_t b0 = int64_t(first) * bits / 8;
  const __mmask16 m = mask16(int(std::min<int64_t>(2 * bits, stream_bytes - b0)));
  const __m128i raw = _mm_maskz_loadu_epi8(m, stream + b0);
  if (bits == 8) return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(raw));
  const ExtractTables& t = extract_tables(bits);
  __m512i x = _mm512_shuffle_epi8(_mm512_broadcast_i32x4(raw), _mm512_load_si512(t.shuffle));
  x = _mm512_srlv_epi32(x, _mm512_load_si512(t.shift));
  x = _mm512_and_si512(x, _mm512_set1_epi32((1 << bits) - 1));
  return _mm512_cvtepi32_ps(x);
}

// Lane 4m + n of the result is the sum of the 16 lanes of v[4n + m], every sum by the same tree:
// lane i + lane i+8, then i + i+4, then i + i+2, then i + i+1 (4 rounds of 2 shuffles and an add
// halve the vector count; unused inputs may be zeros).
KVLAB_TARGET_AVX512 inline __m512 reduce16(const __m512 (&v)[16]) {
  __m512 c[8];
  KVLAB_UNROLL
  for (int p = 0; p < 8; ++p) {
    c[p] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0xee));
  }
  __m512 e[4];
  KVLAB_UNROLL
  for (int q = 0; q < 4; ++q) {
    e[q] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * q], c[2 * q + 1], 0x88),
                         _mm512_shuffle_f32x4(c[2 * q], c[2 * q + 1], 0xdd));
  }
  __m512 g[2];
  KVLAB_UNROLL
  for (int s = 0; s < 2; ++s) {
    g[s] = _mm512_add_ps(_mm512_shuffle_ps(e[2 * s], e[2 * s + 1], 0x44),
                         _mm512_shuffle_ps(e[2 * s], e[2 * s + 1], 0xee));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(g[0], g[1], 0x88), _mm512_shuffle_ps(g[0], g[1], 0xdd));
}

// Sum of the 16 lanes by the same tree as reduce16.
KVLAB_TARGET_AVX512 inline float hsum16(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
}

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

// ---- dense scores: tiles of R rows x T tokens, one 16-lane accumulator per (row, token) --------

template <KvFormat F, int R, int T>
KVLAB_TARGET_AVX512 void dense_scores_tile16(const uint8_t* data, int64_t stride, const uint16_t* scale,
                                             int j0, const float* q, int d, float* s, int n, int js = 1,
                                             const uint8_t* ahead = nullptr) {
  if (ahead) {
    KVLAB_UNROLL
    for (int t = 0; t < T; ++t) {
      for (int64_t o = 0; o < int64_t(d) * element_bytes(F); o += 64) __builtin_prefetch(ahead + (j0 + t * js) * stride + o, 0, 2);
    }
  }
  __m512 acc[R][T];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  const uint8_t* rows[T];
  KVLAB_UNROLL
  for (int t = 0; t < T; ++t) rows[t] = data + (j0 + t * js) * stride;
  for (int c = 0; c < d; c += 16) {
    const __mmask16 m = mask16(d - c);
    __m512 kv[T];
    KVLAB_UNROLL
    for (int t = 0; t < T; ++t) kv[t] = load_dense16<F>(rows[t], c, m);
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512 qv = _mm512_maskz_loadu_ps(m, q + r * d + c);
      KVLAB_UNROLL
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_fmadd_ps(qv, kv[t], acc[r][t]);
    }
  }
  __m512 v[16];
  KVLAB_UNROLL
  for (int i = 0; i < 16; ++i) v[i] = _mm512_setzero_ps();
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int t = 0; t < T; ++t) v[4 * t + r] = acc[r][t];
  }
  __m512 sums = reduce16(v);  // lane 4r + t: row r, token t
  if constexpr (F == KvFormat::kFp8) {
    alignas(16) uint16_t h[8] = {};
    KVLAB_UNROLL
    for (int t = 0; t < T; ++t) h[t] = scale[j0 + t * js];
    const __m128i hv = _mm_load_si128(reinterpret_cast<const __m128i*>(h));
    const __m512 sc = _mm512_broadcast_f32x4(_mm512_castps512_ps128(_mm512_cvtph_ps(_mm256_castsi128_si256(hv))));
    sums = _mm512_mul_ps(sums, _mm512_mul_ps(sc, _mm512_set1_ps(kE4m3Unscale)));
  }
  if (T == 4 && js == 1) {  // row r's four scores are lanes 4r .. 4r+3
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m128 v = r == 0 ? _mm512_castps512_ps128(sums)
                              : (r == 1 ? _mm512_extractf32x4_ps(sums, 1)
                                        : (r == 2 ? _mm512_extractf32x4_ps(sums, 2) : _mm512_extractf32x4_ps(sums, 3)));
      _mm_storeu_ps(s + r * n + j0, v);
    }
    return;
  }
  alignas(64) float out[16];
  _mm512_store_ps(out, sums);
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int t = 0; t < T; ++t) s[r * n + j0 + t * js] = out[4 * r + t];
  }
}

template <KvFormat F, int R>
KVLAB_TARGET_AVX512 void dense_scores_rows16(const uint8_t* data, int64_t stride, const uint16_t* scale,
                                             int n, const float* q, int d, float* s, const uint8_t* ahead) {
  // Tiles of four consecutive tokens (the rows were asked for ahead of use: see "Read-ahead").
  int j = 0;
  for (; j + 4 <= n; j += 4) dense_scores_tile16<F, R, 4>(data, stride, scale, j, q, d, s, n, 1, ahead);
  switch (n - j) {
    case 1: dense_scores_tile16<F, R, 1>(data, stride, scale, j, q, d, s, n, 1, ahead); break;
    case 2: dense_scores_tile16<F, R, 2>(data, stride, scale, j, q, d, s, n, 1, ahead); break;
    case 3: dense_scores_tile16<F, R, 3>(data, stride, scale, j, q, d, s, n, 1, ahead); break;
    default: break;
  }
}

template <KvFormat F>
KVLAB_TARGET_AVX512 void dense_scores16(const uint8_t* data, int64_t stride, const uint16_t* scale, int n,
                                        int d, const float* q, int rows, float* s) {
  const ReadAhead ah = read_ahead(data, int64_t(n) * stride);
  if (F == KvFormat::kFp8) read_ahead_meta(scale, nullptr, 2 * int64_t(n));
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const float* qr = q + int64_t(r0) * d;
    float* sr = s + int64_t(r0) * n;
    const uint8_t* ahead = r0 == 0 ? ah.p : nullptr;
    with_rows(rows - r0, [&]<int R>() { dense_scores_rows16<F, R>(data, stride, scale, n, qr, d, sr, ahead); });
  }
}

// ---- dense accumulate: tiles of R rows x C vectors of 16 channels, keys streaming past --------

template <KvFormat F, int R, int C>
KVLAB_TARGET_AVX512 void dense_acc_tile16(const KvBlock& v, const float* p, int c0, float* acc,
                                          const uint8_t* ahead) {
  const int n = v.n, d = v.d;
  __mmask16 m[C];
  KVLAB_UNROLL
  for (int c = 0; c < C; ++c) m[c] = mask16(d - c0 - 16 * c);
  __m512 a[R][C];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int c = 0; c < C; ++c) a[r][c] = _mm512_maskz_loadu_ps(m[c], acc + r * d + c0 + 16 * c);
  }
  for (int j = 0; j < n; ++j) {
    const uint8_t* row = v.data + j * v.stride;
    if (ahead) {
      for (int64_t o = 0; o < 16 * C * element_bytes(F); o += 64) {
        __builtin_prefetch(ahead + j * v.stride + c0 * element_bytes(F) + o, 0, 2);
      }
    }
    __m512 vv[C];
    KVLAB_UNROLL
    for (int c = 0; c < C; ++c) vv[c] = load_dense16<F>(row, c0 + 16 * c, m[c]);
    const float sc = F == KvFormat::kFp8 ? h2f_avx512(v.scale[j]) * kE4m3Unscale : 1.0f;
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const float pj = F == KvFormat::kFp8 ? p[r * n + j] * sc : p[r * n + j];
      const __m512 pb = _mm512_set1_ps(pj);
      KVLAB_UNROLL
      for (int c = 0; c < C; ++c) a[r][c] = _mm512_fmadd_ps(pb, vv[c], a[r][c]);
    }
  }
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int c = 0; c < C; ++c) _mm512_mask_storeu_ps(acc + r * d + c0 + 16 * c, m[c], a[r][c]);
  }
}

template <KvFormat F, int R>
KVLAB_TARGET_AVX512 void dense_acc_rows16(const KvBlock& v, const float* p, float* acc, const uint8_t* ahead) {
  for (int c0 = 0; c0 < v.d; c0 += 64) {
    switch ((std::min(64, v.d - c0) + 15) / 16) {
      case 1: dense_acc_tile16<F, R, 1>(v, p, c0, acc, ahead); break;
      case 2: dense_acc_tile16<F, R, 2>(v, p, c0, acc, ahead); break;
      case 3: dense_acc_tile16<F, R, 3>(v, p, c0, acc, ahead); break;
      default: dense_acc_tile16<F, R, 4>(v, p, c0, acc, ahead); break;
    }
  }
}

template <KvFormat F>
KVLAB_TARGET_AVX512 void dense_acc16(const KvBlock& v, const float* p, int rows, float* acc) {
  const ReadAhead ah = read_ahead(v.data, int64_t(v.n) * v.stride);
  if (F == KvFormat::kFp8) read_ahead_meta(v.scale, nullptr, 2 * int64_t(v.n));
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const float* pr = p + int64_t(r0) * v.n;
    float* ar = acc + int64_t(r0) * v.d;
    const uint8_t* ahead = r0 == 0 ? ah.p : nullptr;
    with_rows(rows - r0, [&]<int R>() { dense_acc_rows16<F, R>(v, pr, ar, ahead); });
  }
}

// ---- kIntChannel scores, f32: lanes = tokens, q * scale folded per channel --------------------
//   s[r, j] = sum_c (q[r, c] * scale[c]) * code(j, c)   (fma per channel, c ascending)
//           + z[r],  z[r] = sum_c q[r, c] * zero[c]     (fma per channel, c ascending)

KVLAB_TARGET_AVX512 float zero_term16(const float* q, const uint16_t* zero, int d) {
  float z = 0.0f;
  for (int c = 0; c < d; ++c) z = std::fma(q[c], h2f_avx512(zero[c]), z);
  return z;
}

template <int R, int TV>
KVLAB_TARGET_AVX512 void int_channel_scores_tile16(const KvBlock& k, const float* q, const float* z, int j0,
                                                   float* s) {
  const int n = k.n, d = k.d;
  const int64_t sb = packed_bytes(n, k.bits);
  __m512 acc[R][TV];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int t = 0; t < TV; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  for (int c = 0; c < d; ++c) {
    const uint8_t* stream = k.data + c * k.stride;
    __m512 code[TV];
    KVLAB_UNROLL
    for (int t = 0; t < TV; ++t) code[t] = codes16(stream, j0 + 16 * t, k.bits, sb);
    const float sc = h2f_avx512(k.scale[c]);
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512 qv = _mm512_set1_ps(q[r * d + c] * sc);
      KVLAB_UNROLL
      for (int t = 0; t < TV; ++t) acc[r][t] = _mm512_fmadd_ps(qv, code[t], acc[r][t]);
    }
  }
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int t = 0; t < TV; ++t) {
      _mm512_mask_storeu_ps(s + r * n + j0 + 16 * t, mask16(n - j0 - 16 * t),
                            _mm512_add_ps(acc[r][t], _mm512_set1_ps(z[r])));
    }
  }
}

template <int R>
KVLAB_TARGET_AVX512 void int_channel_scores_rows16(const KvBlock& k, const float* q, float* s) {
  float z[R];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) z[r] = zero_term16(q + r * k.d, k.zero, k.d);
  for (int j0 = 0; j0 < k.n; j0 += 64) {
    switch ((std::min(64, k.n - j0) + 15) / 16) {
      case 1: int_channel_scores_tile16<R, 1>(k, q, z, j0, s); break;
      case 2: int_channel_scores_tile16<R, 2>(k, q, z, j0, s); break;
      case 3: int_channel_scores_tile16<R, 3>(k, q, z, j0, s); break;
      default: int_channel_scores_tile16<R, 4>(k, q, z, j0, s); break;
    }
  }
}

// ---- kIntToken: scale / zero lanes of channels c .. c+15 of token j ---------------------------

KVLAB_TARGET_AVX512 inline void token_lanes16(const KvBlock& b, int j, int c, __m512* sl, __m512* zl) {
  const int G = groups_of(b);
  const int g0 = c / b.group;
  if (b.group % 16 == 0) {
    *sl = _mm512_set1_ps(h2f_avx512(b.scale[j * G + g0]));
    *zl = _mm512_set1_ps(h2f_avx512(b.zero[j * G + g0]));
    return;
  }
  // Lane i belongs to group (c + i) / group; at most 16 groups from g0 on.
  alignas(64) int32_t gi[16];
  KVLAB_UNROLL
  for (int i = 0; i < 16; ++i) gi[i] = std::min((c + i) / b.group, G - 1) - g0;
  const __m512i idx = _mm512_load_si512(gi);
  const __mmask16 m = mask16(G - g0);
  *sl = _mm512_permutexvar_ps(idx, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, b.scale + j * G + g0)));
  *zl = _mm512_permutexvar_ps(idx, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, b.zero + j * G + g0)));
}

// kIntToken scores: tiles of 4 tokens dequantized (code * scale + zero, one rounding) to a stack
// tile, then the dense f32 dot products.
KVLAB_TARGET_AVX512 void int_token_scores16(const KvBlock& k, const float* q, int rows, float* s) {
  const int n = k.n, d = k.d;
  const int dp = (d + 15) & ~15;
  alignas(64) float tile[4 * kMaxSimdD];
  const int64_t rb = packed_bytes(d, k.bits);
  for (int j0 = 0; j0 < n; j0 += 4) {
    const int T = std::min(4, n - j0);
    KVLAB_UNROLL
    for (int t = 0; t < T; ++t) {
      const uint8_t* row = k.data + (j0 + t) * k.stride;
      for (int c = 0; c < d; c += 16) {
        __m512 sl, zl;
        token_lanes16(k, j0 + t, c, &sl, &zl);
        _mm512_store_ps(tile + t * dp + c, _mm512_fmadd_ps(codes16(row, c, k.bits, rb), sl, zl));
      }
    }
    const uint8_t* tb = reinterpret_cast<const uint8_t*>(tile);
    for (int r0 = 0; r0 < rows; r0 += 4) {
      const float* qr = q + int64_t(r0) * d;
      float* sr = s + int64_t(r0) * n + j0;
      // The tile's token t sits at tile + t * dp; scores land at sr[r * n + t].
      with_rows(rows - r0, [&]<int R>() {
        switch (T) {
          case 1: dense_scores_tile16<KvFormat::kF32, R, 1>(tb, dp * 4, nullptr, 0, qr, d, sr, n); break;
          case 2: dense_scores_tile16<KvFormat::kF32, R, 2>(tb, dp * 4, nullptr, 0, qr, d, sr, n); break;
          case 3: dense_scores_tile16<KvFormat::kF32, R, 3>(tb, dp * 4, nullptr, 0, qr, d, sr, n); break;
          default: dense_scores_tile16<KvFormat::kF32, R, 4>(tb, dp * 4, nullptr, 0, qr, d, sr, n); break;
        }
      });
    }
  }
}

// ---- kIntToken accumulate, f32: scale folded into p ------------------------------------------
//   acc[r, c] = (acc[r, c] + sum_j (p[r, j] * scale[j, g]) * code(j, c))   (fma, j ascending)
//             + zs[r, g],  zs[r, g] = sum_j p[r, j] * zero[j, g]           (fma, j ascending)

template <int R, int C>
KVLAB_TARGET_AVX512 void int_token_acc_tile16(const KvBlock& v, const float* p, const float* zs, int c0,
                                              float* acc) {
  const int n = v.n, d = v.d, G = groups_of(v);
  const int64_t rb = packed_bytes(d, v.bits);
  __mmask16 m[C];
  KVLAB_UNROLL
  for (int c = 0; c < C; ++c) m[c] = mask16(d - c0 - 16 * c);
  __m512 a[R][C];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int c = 0; c < C; ++c) a[r][c] = _mm512_maskz_loadu_ps(m[c], acc + r * d + c0 + 16 * c);
  }
  for (int j = 0; j < n; ++j) {
    const uint8_t* row = v.data + j * v.stride;
    __m512 code[C], sl[C];
    KVLAB_UNROLL
    for (int c = 0; c < C; ++c) {
      __m512 zl;
      code[c] = codes16(row, c0 + 16 * c, v.bits, rb);
      token_lanes16(v, j, c0 + 16 * c, &sl[c], &zl);
    }
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512 pb = _mm512_set1_ps(p[r * n + j]);
      KVLAB_UNROLL
      for (int c = 0; c < C; ++c) a[r][c] = _mm512_fmadd_ps(_mm512_mul_ps(pb, sl[c]), code[c], a[r][c]);
    }
  }
  // Zero terms: lane c gets zs[r, c / group].
  KVLAB_UNROLL
  for (int c = 0; c < C; ++c) {
    alignas(64) int32_t gi[16];
    KVLAB_UNROLL
    for (int i = 0; i < 16; ++i) gi[i] = std::min((c0 + 16 * c + i) / v.group, G - 1);
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512 zl = _mm512_i32gather_ps(_mm512_load_si512(gi), zs + r * G, 4);
      _mm512_mask_storeu_ps(acc + r * d + c0 + 16 * c, m[c], _mm512_add_ps(a[r][c], zl));
    }
  }
}

template <int R>
KVLAB_TARGET_AVX512 void int_token_acc_rows16(const KvBlock& v, const float* p, float* acc) {
  const int G = groups_of(v), n = v.n;
  float zs[4 * kMaxSimdD];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    for (int g = 0; g < G; ++g) {
      float z = 0.0f;
      for (int j = 0; j < n; ++j) z = std::fma(p[r * n + j], h2f_avx512(v.zero[j * G + g]), z);
      zs[r * G + g] = z;
    }
  }
  for (int c0 = 0; c0 < v.d; c0 += 64) {
    switch ((std::min(64, v.d - c0) + 15) / 16) {
      case 1: int_token_acc_tile16<R, 1>(v, p, zs, c0, acc); break;
      case 2: int_token_acc_tile16<R, 2>(v, p, zs, c0, acc); break;
      case 3: int_token_acc_tile16<R, 3>(v, p, zs, c0, acc); break;
      default: int_token_acc_tile16<R, 4>(v, p, zs, c0, acc); break;
    }
  }
}

// ---- kIntChannel accumulate: per (row, channel) dot over tokens, lanes = tokens --------------
//   acc[r, c] += dot(p[r, :], code(:, c)) * scale[c] + psum[r] * zero[c]
// dot: 16-lane fma over tokens then the reduce16 tree; psum: the same over p alone.

template <int R>
KVLAB_TARGET_AVX512 void int_channel_acc_rows16(const KvBlock& v, const float* p, float* acc) {
  const int n = v.n, d = v.d;
  const int64_t sb = packed_bytes(n, v.bits);
  float psum[R];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    __m512 sv = _mm512_setzero_ps();
    for (int j = 0; j < n; j += 16) sv = _mm512_add_ps(sv, _mm512_maskz_loadu_ps(mask16(n - j), p + r * n + j));
    psum[r] = hsum16(sv);
  }
  for (int c0 = 0; c0 < d; c0 += 4) {
    const int CC = std::min(4, d - c0);
    __m512 dots[4][R];
    KVLAB_UNROLL
    for (int cc = 0; cc < 4; ++cc) {
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) dots[cc][r] = _mm512_setzero_ps();
    }
    for (int j = 0; j < n; j += 16) {
      const __mmask16 m = mask16(n - j);
      __m512 pv[R];
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) pv[r] = _mm512_maskz_loadu_ps(m, p + r * n + j);
      KVLAB_UNROLL
      for (int cc = 0; cc < 4; ++cc) {
        if (cc >= CC) break;
        const __m512 code = codes16(v.data + (c0 + cc) * v.stride, j, v.bits, sb);
        KVLAB_UNROLL
        for (int r = 0; r < R; ++r) dots[cc][r] = _mm512_fmadd_ps(pv[r], code, dots[cc][r]);
      }
    }
    __m512 in[16];
    KVLAB_UNROLL
    for (int i = 0; i < 16; ++i) in[i] = _mm512_setzero_ps();
    KVLAB_UNROLL
    for (int cc = 0; cc < CC; ++cc) {
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) in[4 * cc + r] = dots[cc][r];
    }
    alignas(64) float out[16];  // out[4r + cc]
    _mm512_store_ps(out, reduce16(in));
    KVLAB_UNROLL
    for (int cc = 0; cc < CC; ++cc) {
      const float sc = h2f_avx512(v.scale[c0 + cc]), zr = h2f_avx512(v.zero[c0 + cc]);
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) acc[r * d + c0 + cc] += std::fma(out[4 * r + cc], sc, psum[r] * zr);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// AVX-512 VNNI: integer dot products for 2/3/4-bit codes
//
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
    const float mx = _mm512_reduce_max_ps(amax[r]);
    const float qs = mx > 0.0f ? mx / 127.0f : 0.0f;
    const float inv = mx > 0.0f ? 127.0f / mx : 0.0f;
    __m512 dacc = _mm512_setzero_ps();
    uint8_t* qb = reinterpret_cast<uint8_t*>(out[r].qd);
    for (int c = 0; c < d; c += 16) {
      const __m512 v = _mm512_load_ps(qp[r] + c);  // 0 beyond d (masked loads above)
      const __m512i qi = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v, _mm512_set1_ps(inv)),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      dacc = _mm512_add_ps(dacc, _mm512_fnmadd_ps(_mm512_set1_ps(qs), _mm512_cvtepi32_ps(qi), v));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qb + c), _mm512_cvtsepi32_epi8(qi));
    }
    for (int c = d; c < ((d + 3) & ~3); ++c) qb[c] = 0;
    out[r].qs = qs;
    out[r].z = std::fma(m_half, hsum16(dacc), hsum16(zacc[r]));
  }
}

template <int R>
KVLAB_TARGET_AVX512_VNNI void int_channel_scores_vnni_rows(const KvBlock& k, const float* q, float* s) {
  const int n = k.n, d = k.d, bits = k.bits;
  QuantQuery qq[R];
  const ReadAhead ah = read_ahead(k.data, int64_t(d) * k.stride);
  read_ahead_meta(k.scale, k.zero, 2 * int64_t(d));
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

// 4-bit keys: per tile of 128 tokens (64 bytes of each channel) two passes of 64 tokens, each
// with 16 accumulators (R = 4).
template <int R, int P, bool kTail>
KVLAB_TARGET_AVX512_VNNI inline void channel4_step(const KvBlock& k, const QuantQuery (&qq)[R], int c, int64_t off,
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
    const __m512i qb = _mm512_set1_epi32(qq[r].qd[c / 4]);
    KVLAB_UNROLL
    for (int kk = 0; kk < 2; ++kk) {
      KVLAB_UNROLL
      for (int h = 0; h < 2; ++h) dpbusd(acc[r][kk][h], v[kk][h], qb);
    }
  }
}

template <int R, int P>
KVLAB_TARGET_AVX512_VNNI void channel4_pass(const KvBlock& k, const QuantQuery (&qq)[R], int t0, float* s,
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
    channel4_step<R, P, false>(k, qq, c, off, lm, acc);
  }
  if (c < d) channel4_step<R, P, true>(k, qq, c, off, lm, acc);
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    const __m512 qs = _mm512_set1_ps(qq[r].qs), z = _mm512_set1_ps(qq[r].z);
    __m512 f[2][2], o[4];
    KVLAB_UNROLL
    for (int i = 0; i < 4; ++i) f[i / 2][i % 2] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][i / 2][i % 2]), qs, z);
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
template <int R, int P, bool kTail, bool kPacked>
KVLAB_TARGET_AVX512_VNNI inline void channel2_step(const KvBlock& k, const QuantQuery (&qq)[R], int c, int64_t off,
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
    const __m512i qb = _mm512_set1_epi32(qq[r].qd[c / 4]);
    KVLAB_UNROLL
    for (int e = 0; e < 4; ++e) dpbusd(acc[r][e], v[e], qb);
  }
}

template <int R, int P, bool kPacked>
KVLAB_TARGET_AVX512_VNNI void channel2_pass(const KvBlock& k, const QuantQuery (&qq)[R], int t0, float* s,
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
    channel2_step<R, P, false, kPacked>(k, qq, c, off, lm, acc);
  }
  if (c < d) channel2_step<R, P, true, kPacked>(k, qq, c, off, lm, acc);
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    const __m512 qs = _mm512_set1_ps(qq[r].qs), z = _mm512_set1_ps(qq[r].z);
    __m512 f[4], o[4];
    KVLAB_UNROLL
    for (int e = 0; e < 4; ++e) f[e] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][e]), qs, z);
    unsplit2_ps(f, o);
    KVLAB_UNROLL
    for (int L = 0; L < 4; ++L) {
      const int j = t0 + 64 * P + 16 * L;
      if (j < n) _mm512_mask_storeu_ps(s + r * n + j, mask16(n - j), o[L]);
    }
  }
}

template <int R>
KVLAB_TARGET_AVX512_VNNI void int_channel_scores_vnni24_rows(const KvBlock& k, const float* q, float* s) {
  QuantQuery qq[R];
  const ReadAhead ah = read_ahead(k.data, int64_t(k.d) * k.stride);
  read_ahead_meta(k.scale, k.zero, 2 * int64_t(k.d));
  quantize_query_rows<R>(k, q, qq);
  for (int t0 = 0; t0 < k.n; t0 += 128) {
    const ReadAhead& a = t0 == 0 ? ah : ReadAhead();  // the first tile's pass reads every line
    if (k.bits == 4) {
      channel4_pass<R, 0>(k, qq, t0, s, a);
      if (t0 + 16 < k.n) channel4_pass<R, 1>(k, qq, t0, s, a);
    } else if (k.stride == 32) {
      channel2_pass<R, 0, true>(k, qq, t0, s, a);
      if (t0 + 64 < k.n) channel2_pass<R, 1, true>(k, qq, t0, s, a);
    } else {
      channel2_pass<R, 0, false>(k, qq, t0, s, a);
      if (t0 + 64 < k.n) channel2_pass<R, 1, false>(k, qq, t0, s, a);
    }
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

KVLAB_TARGET_AVX512_VNNI void quantize_probs(const KvBlock& v, const float* p, int j0, int nc, QuantProbs* out) {
  const int G = groups_of(v);
  const int lg = __builtin_ctz(unsigned(G));
  const int entries = nc * G;
  alignas(64) float pp[kVnniMaxTokens * 16];
  alignas(64) uint8_t pb[kVnniMaxTokens * 16];
  // Lane i of an entry vector e0 .. e0+15 is token (e0 + i) / G, group i % G.
  const __m512i rep = _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), lg);
  __m512 mx = _mm512_setzero_ps(), zacc = _mm512_setzero_ps();
  const uint16_t* scale = v.scale + int64_t(j0) * G;
  const uint16_t* zero = v.zero + int64_t(j0) * G;
  for (int e = 0; e < entries; e += 16) {
    const __mmask16 m = mask16(entries - e);
    const __m512 pr = _mm512_permutexvar_ps(rep, _mm512_maskz_loadu_ps(mask16((entries - e + G - 1) >> lg), p + j0 + (e >> lg)));
    const __m512 pv = _mm512_maskz_mov_ps(m, pr);
    const __m512 v1 = _mm512_mul_ps(pv, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, scale + e)));
    _mm512_store_ps(pp + e, v1);
    mx = _mm512_max_ps(mx, v1);
    zacc = _mm512_fmadd_ps(pv, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, zero + e)), zacc);
  }
  const float pmax = _mm512_reduce_max_ps(mx);
  const float ps = pmax > 0.0f ? pmax / 255.0f : 0.0f;
  const float inv = pmax > 0.0f ? 255.0f / pmax : 0.0f;
  __m512 dacc = _mm512_setzero_ps();
  const int padded = (entries + 63) & ~63;
  for (int e = 0; e < padded; e += 16) {
    if (e >= entries) {
      _mm_store_si128(reinterpret_cast<__m128i*>(pb + e), _mm_setzero_si128());
      continue;
    }
    const __m512 v1 = _mm512_load_ps(pp + e);  // 0 in lanes beyond the chunk
    const __m512i qi = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(inv)),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    dacc = _mm512_add_ps(dacc, _mm512_fnmadd_ps(_mm512_set1_ps(ps), _mm512_cvtepi32_ps(qi), v1));
    _mm_store_si128(reinterpret_cast<__m128i*>(pb + e), _mm512_cvtusepi32_epi8(qi));
  }
  const __m512i qidx = _mm512_load_si512(kQuad.idx[lg]);
  uint8_t* pd = reinterpret_cast<uint8_t*>(out->pd);
  for (int e = 0; e < padded; e += 64) {
    _mm512_store_si512(pd + e, _mm512_permutexvar_epi8(qidx, _mm512_load_si512(pb + e)));
  }
  alignas(64) float dg[16], zgs[16];
  _mm512_store_ps(dg, fold_groups(dacc, G));
  _mm512_store_ps(zgs, fold_groups(zacc, G));
  const float m_half = float((1 << v.bits) - 1) * 0.5f;
  out->ps = ps;
  for (int g = 0; g < G; ++g) out->zg[g] = std::fma(m_half, dg[g], zgs[g]);
}

template <int R>
KVLAB_TARGET_AVX512_VNNI void int_token_acc_vnni_rows(const KvBlock& v, const float* p, float* acc) {
  const int n = v.n, d = v.d, bits = v.bits, G = groups_of(v);
  const VnniTables& tb = vnni_tables(bits);
  const int64_t rb = packed_bytes(d, bits);
  QuantProbs qp[R];
  const ReadAhead ah = read_ahead(v.data, int64_t(n) * v.stride);
  read_ahead_meta(v.scale, v.zero, 2 * int64_t(n) * G);
  for (int j0 = 0; j0 < n; j0 += kVnniMaxTokens) {
    const int nc = std::min(kVnniMaxTokens, n - j0);
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) quantize_probs(v, p + r * n, j0, nc, &qp[r]);
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

// Probabilities of R rows (n floats apart) for one chunk of a kIntToken block with one group per
// token (G = 1): quantize_probs's operations for each row, the scales and zeros converted once
// for all rows; the bytes land in token order, which is already the [token quad][group] order.
template <int R>
KVLAB_TARGET_AVX512_VNNI void quantize_probs_g1(const KvBlock& v, const float* p, int n, int j0, int nc,
                                                QuantProbs* out) {
  alignas(64) float pp[R][kVnniMaxTokens];
  __m512 mx[R], zacc[R];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) mx[r] = zacc[r] = _mm512_setzero_ps();
  for (int e = 0; e < nc; e += 16) {
    const __mmask16 m = mask16(nc - e);
    const __m512 sc = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, v.scale + j0 + e));
    const __m512 zr = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, v.zero + j0 + e));
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512 pv = _mm512_maskz_loadu_ps(m, p + r * n + j0 + e);
      const __m512 v1 = _mm512_mul_ps(pv, sc);
      _mm512_store_ps(pp[r] + e, v1);
      mx[r] = _mm512_max_ps(mx[r], v1);
      zacc[r] = _mm512_fmadd_ps(pv, zr, zacc[r]);
    }
  }
  const float m_half = float((1 << v.bits) - 1) * 0.5f;
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    const float pmax = _mm512_reduce_max_ps(mx[r]);
    const float ps = pmax > 0.0f ? pmax / 255.0f : 0.0f;
    const float inv = pmax > 0.0f ? 255.0f / pmax : 0.0f;
    __m512 dacc = _mm512_setzero_ps();
    uint8_t* pd = reinterpret_cast<uint8_t*>(out[r].pd);
    for (int e = 0; e < nc; e += 16) {
      const __m512 v1 = _mm512_load_ps(pp[r] + e);  // 0 in lanes beyond the chunk
      const __m512i qi = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(inv)),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      dacc = _mm512_add_ps(dacc, _mm512_fnmadd_ps(_mm512_set1_ps(ps), _mm512_cvtepi32_ps(qi), v1));
      _mm_store_si128(reinterpret_cast<__m128i*>(pd + e), _mm512_cvtusepi32_epi8(qi));
    }
    out[r].ps = ps;
    out[r].zg[0] = std::fma(m_half, hsum16(dacc), hsum16(zacc[r]));
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
  const ReadAhead ah = read_ahead(v.data, int64_t(n) * v.stride);
  read_ahead_meta(v.scale, v.zero, 2 * int64_t(n) * groups_of(v));
  for (int j0 = 0; j0 < n; j0 += kVnniMaxTokens) {
    const int nc = std::min(kVnniMaxTokens, n - j0);
    if (groups_of(v) == 1) {
      quantize_probs_g1<R>(v, p, n, j0, nc, qp);
      token24_chunk<R, true>(v, qp, j0, nc, acc, ah);
    } else {
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) quantize_probs(v, p + r * n, j0, nc, &qp[r]);
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
  const float mx = _mm512_reduce_max_ps(amax);
  const float qs = mx > 0.0f ? mx / 127.0f : 0.0f;
  const float inv = mx > 0.0f ? 127.0f / mx : 0.0f;
  __m128i b[8];
  KVLAB_UNROLL
  for (int h = 0; h < 4; ++h) {
    __m512 dsum = _mm512_setzero_ps();
    KVLAB_UNROLL
    for (int i = 2 * h; i < 2 * h + 2; ++i) {
      const __m512i qi = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v[i], _mm512_set1_ps(inv)),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      dsum = _mm512_add_ps(dsum, _mm512_fnmadd_ps(_mm512_set1_ps(qs), _mm512_cvtepi32_ps(qi), v[i]));
      b[i] = _mm512_cvtsepi32_epi8(qi);
    }
    out->d[h] = hsum16(dsum);
    out->qsum[h] = hsum16(_mm512_add_ps(v[2 * h], v[2 * h + 1]));
  }
  const __m256i lo01 = _mm256_set_m128i(b[1], b[0]), lo23 = _mm256_set_m128i(b[3], b[2]);
  const __m256i hi01 = _mm256_set_m128i(b[5], b[4]), hi23 = _mm256_set_m128i(b[7], b[6]);
  out->q0 = _mm512_inserti64x4(_mm512_castsi256_si512(lo01), lo23, 1);
  out->q1 = _mm512_inserti64x4(_mm512_castsi256_si512(hi01), hi23, 1);
  out->qs = qs;
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
  const ReadAhead ah = read_ahead(k.data, int64_t(n) * k.stride);
  read_ahead_meta(k.scale, k.zero, 2 * int64_t(n) * G);
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
bool vnni_keys(const KvBlock& k) {
  return k.format == KvFormat::kIntChannel && k.bits <= 4 && cpu_has_vnni_vbmi();
}
bool vnni_token_keys(const KvBlock& k) {
  return k.format == KvFormat::kIntToken && k.bits <= 4 && k.d == 128 && k.group % 32 == 0 && cpu_has_vnni_vbmi();
}
bool vnni_values(const KvBlock& v) {
  if (v.format != KvFormat::kIntToken || v.bits > 4 || v.group % 16 != 0 || !cpu_has_vnni_vbmi()) return false;
  const int G = groups_of(v);
  return G <= 16 && (G & (G - 1)) == 0;
}

KVLAB_TARGET_AVX512 void scores_avx512(const KvBlock& k, const float* q, int rows, float* s) {
  switch (k.format) {
    case KvFormat::kF32: return dense_scores16<KvFormat::kF32>(k.data, k.stride, k.scale, k.n, k.d, q, rows, s);
    case KvFormat::kF16: return dense_scores16<KvFormat::kF16>(k.data, k.stride, k.scale, k.n, k.d, q, rows, s);
    case KvFormat::kBF16: return dense_scores16<KvFormat::kBF16>(k.data, k.stride, k.scale, k.n, k.d, q, rows, s);
    case KvFormat::kFp8: return dense_scores16<KvFormat::kFp8>(k.data, k.stride, k.scale, k.n, k.d, q, rows, s);
    case KvFormat::kIntToken:
      if (!vnni_token_keys(k)) return int_token_scores16(k, q, rows, s);
      for (int r0 = 0; r0 < rows; r0 += 4) {
        const float* qr = q + int64_t(r0) * k.d;
        float* sr = s + int64_t(r0) * k.n;
        with_rows(rows - r0, [&]<int R>() { int_token_scores_vnni_rows<R>(k, qr, sr); });
      }
      return;
    case KvFormat::kIntChannel:
      for (int r0 = 0; r0 < rows; r0 += 4) {
        const float* qr = q + int64_t(r0) * k.d;
        float* sr = s + int64_t(r0) * k.n;
        if (vnni_keys(k) && (k.bits == 4 || k.bits == 2)) {
          with_rows(rows - r0, [&]<int R>() { int_channel_scores_vnni24_rows<R>(k, qr, sr); });
        } else if (vnni_keys(k)) {
          with_rows(rows - r0, [&]<int R>() { int_channel_scores_vnni_rows<R>(k, qr, sr); });
        } else {
          with_rows(rows - r0, [&]<int R>() { int_channel_scores_rows16<R>(k, qr, sr); });
        }
      }
      return;
  }
}

KVLAB_TARGET_AVX512 void accumulate_avx512(const KvBlock& v, const float* p, int rows, float* acc) {
  switch (v.format) {
    case KvFormat::kF32: return dense_acc16<KvFormat::kF32>(v, p, rows, acc);
    case KvFormat::kF16: return dense_acc16<KvFormat::kF16>(v, p, rows, acc);
    case KvFormat::kBF16: return dense_acc16<KvFormat::kBF16>(v, p, rows, acc);
    case KvFormat::kFp8: return dense_acc16<KvFormat::kFp8>(v, p, rows, acc);
    default: break;
  }
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const float* pr = p + int64_t(r0) * v.n;
    float* ar = acc + int64_t(r0) * v.d;
    if (v.format == KvFormat::kIntChannel) {
      with_rows(rows - r0, [&]<int R>() { int_channel_acc_rows16<R>(v, pr, ar); });
    } else if (vnni_values(v) && v.d == 128 && (v.bits == 4 || v.bits == 2)) {
      with_rows(rows - r0, [&]<int R>() { int_token_acc_vnni24_rows<R>(v, pr, ar); });
    } else if (vnni_values(v)) {
      with_rows(rows - r0, [&]<int R>() { int_token_acc_vnni_rows<R>(v, pr, ar); });
    } else {
      with_rows(rows - r0, [&]<int R>() { int_token_acc_rows16<R>(v, pr, ar); });
    }
  }
}
// ---------------------------------------------------------------------------------------------
// AVX2 (+ FMA, F16C): the f32 paths of AVX-512 on 8 lanes. AVX2 has no byte- or word-masked
// loads, so partial tails of 16- and 8-bit data go through a zeroed local copy.

KVLAB_TARGET_AVX2 inline __m256i tail_mask8(int count) {  // lanes < count on
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// The first min(count, 16) bytes at p in an xmm, the rest zero (p + 16 may be unreadable).
KVLAB_TARGET_AVX2 inline __m128i load_partial16(const uint8_t* p, int count) {
  if (count >= 16) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  alignas(16) uint8_t tmp[16] = {};
  if (count > 0) std::memcpy(tmp, p, size_t(count));
  return _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
}

KVLAB_TARGET_AVX2 inline __m256 e4m3_to_ps_avx2(__m128i bytes) {  // times 2^-8, as e4m3_to_ps_avx512
  __m128i w = _mm_slli_epi16(_mm_cvtepu8_epi16(bytes), 8);
  w = _mm_and_si128(_mm_srai_epi16(w, 1), _mm_set1_epi16(short(0xbfff)));
  const __m128i mag = _mm_set1_epi16(0x3f80);
  const __m128i nan = _mm_cmpeq_epi16(_mm_and_si128(w, mag), mag);
  return _mm256_cvtph_ps(_mm_blendv_epi8(w, _mm_set1_epi16(0x7e00), nan));
}

// Channels c .. c+7 of a dense token row (count = valid channels from c; lanes beyond are 0).
template <KvFormat F>
KVLAB_TARGET_AVX2 inline __m256 load_dense8(const uint8_t* row, int c, int count) {
  if constexpr (F == KvFormat::kF32) {
    const float* p = reinterpret_cast<const float*>(row) + c;
    return count >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, tail_mask8(count));
  } else if constexpr (F == KvFormat::kF16) {
    return _mm256_cvtph_ps(load_partial16(row + 2 * c, 2 * std::min(count, 8)));
  } else if constexpr (F == KvFormat::kBF16) {
    const __m128i h = load_partial16(row + 2 * c, 2 * std::min(count, 8));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    const __m128i b = count >= 8 ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c))
                                 : load_partial16(row + c, count);
    return e4m3_to_ps_avx2(b);
  }
}

// Codes first .. first+7 (first % 8 == 0) of a bit stream of `stream_bytes` bytes, as f32.
KVLAB_TARGET_AVX2 inline __m256 codes8(const uint8_t* stream, int first, int bits, int64_t stream_bytes) {
  const int64_t b0 = int64_t(first) * bits / 8;
  const int64_t left = stream_bytes - b0;  // 8 codes are `bits` bytes; read 8 where they exist
  uint64_t word = 0;
  if (left >= 8) {
    std::memcpy(&word, stream + b0, 8);
  } else {
    std::memcpy(&word, stream + b0, size_t(std::min<int64_t>(bits, left)));
  }
  const __m128i raw = _mm_cvtsi64_si128(int64_t(word));
  if (bits == 8) return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(raw));
  const ExtractTables& t = extract_tables(bits);
  __m256i x = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(raw),
                                  _mm256_load_si256(reinterpret_cast<const __m256i*>(t.shuffle)));
  x = _mm256_srlv_epi32(x, _mm256_load_si256(reinterpret_cast<const __m256i*>(t.shift)));
  x = _mm256_and_si256(x, _mm256_set1_epi32((1 << bits) - 1));
  return _mm256_cvtepi32_ps(x);
}

// Lane i of the result is the sum of the 8 lanes of w[i], every sum by the same tree:
// lane l + lane l+4, then l + l+2, then l + l+1 (3 rounds of shuffles and adds).
KVLAB_TARGET_AVX2 inline __m256 reduce8(const __m256 (&w)[8]) {
  __m256 t[4];  // t[p]: [w[p] lanes l + l+4 | w[p + 4] lanes l + l+4]
  KVLAB_UNROLL
  for (int p = 0; p < 4; ++p) {
    t[p] = _mm256_add_ps(_mm256_permute2f128_ps(w[p], w[p + 4], 0x20), _mm256_permute2f128_ps(w[p], w[p + 4], 0x31));
  }
  // u[0]: [w0 l + l+2 (2 lanes), w1 (2) | w4, w5];  u[1]: [w2, w3 | w6, w7]
  const __m256 u0 = _mm256_add_ps(_mm256_shuffle_ps(t[0], t[1], 0x44), _mm256_shuffle_ps(t[0], t[1], 0xee));
  const __m256 u1 = _mm256_add_ps(_mm256_shuffle_ps(t[2], t[3], 0x44), _mm256_shuffle_ps(t[2], t[3], 0xee));
  return _mm256_add_ps(_mm256_shuffle_ps(u0, u1, 0x88), _mm256_shuffle_ps(u0, u1, 0xdd));
}

KVLAB_TARGET_AVX2 inline float hsum8(__m256 v) {
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
}

// ---- dense scores: tiles of R rows x T tokens (T <= 2), one 8-lane accumulator per dot ----------

template <KvFormat F, int R, int T>
KVLAB_TARGET_AVX2 void dense_scores_tile8(const uint8_t* data, int64_t stride, const uint16_t* scale, int j0,
                                          const float* q, int d, float* s, int n) {
  __m256 acc[R][T];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  }
  const uint8_t* rows[T];
  KVLAB_UNROLL
  for (int t = 0; t < T; ++t) rows[t] = data + (j0 + t) * stride;
  for (int c = 0; c < d; c += 8) {
    const int count = d - c;
    __m256 kv[T];
    KVLAB_UNROLL
    for (int t = 0; t < T; ++t) kv[t] = load_dense8<F>(rows[t], c, count);
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m256 qv = load_dense8<KvFormat::kF32>(reinterpret_cast<const uint8_t*>(q + r * d), c, count);
      KVLAB_UNROLL
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_fmadd_ps(qv, kv[t], acc[r][t]);
    }
  }
  __m256 w[8];
  KVLAB_UNROLL
  for (int i = 0; i < 8; ++i) w[i] = _mm256_setzero_ps();
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int t = 0; t < T; ++t) w[4 * t + r] = acc[r][t];
  }
  alignas(32) float out[8];  // out[4t + r]
  _mm256_store_ps(out, reduce8(w));
  KVLAB_UNROLL
  for (int t = 0; t < T; ++t) {
    const float sc = F == KvFormat::kFp8 ? _cvtsh_ss(scale[j0 + t]) * kE4m3Unscale : 1.0f;
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) s[r * n + j0 + t] = F == KvFormat::kFp8 ? out[4 * t + r] * sc : out[4 * t + r];
  }
}

template <KvFormat F, int R>
KVLAB_TARGET_AVX2 void dense_scores_rows8(const uint8_t* data, int64_t stride, const uint16_t* scale, int n,
                                          const float* q, int d, float* s) {
  int j = 0;
  for (; j + 2 <= n; j += 2) dense_scores_tile8<F, R, 2>(data, stride, scale, j, q, d, s, n);
  if (j < n) dense_scores_tile8<F, R, 1>(data, stride, scale, j, q, d, s, n);
}

template <KvFormat F>
KVLAB_TARGET_AVX2 void dense_scores8(const uint8_t* data, int64_t stride, const uint16_t* scale, int n, int d,
                                     const float* q, int rows, float* s) {
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const float* qr = q + int64_t(r0) * d;
    float* sr = s + int64_t(r0) * n;
    with_rows(rows - r0, [&]<int R>() { dense_scores_rows8<F, R>(data, stride, scale, n, qr, d, sr); });
  }
}

// ---- dense accumulate: tiles of R rows x C vectors of 8 channels (C <= 2) ---------------------

template <KvFormat F, int R, int C>
KVLAB_TARGET_AVX2 void dense_acc_tile8(const KvBlock& v, const float* p, int c0, float* acc) {
  const int n = v.n, d = v.d;
  __m256i m[C];
  KVLAB_UNROLL
  for (int c = 0; c < C; ++c) m[c] = tail_mask8(d - c0 - 8 * c);
  __m256 a[R][C];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int c = 0; c < C; ++c) a[r][c] = _mm256_maskload_ps(acc + r * d + c0 + 8 * c, m[c]);
  }
  for (int j = 0; j < n; ++j) {
    const uint8_t* row = v.data + j * v.stride;
    __m256 vv[C];
    KVLAB_UNROLL
    for (int c = 0; c < C; ++c) vv[c] = load_dense8<F>(row, c0 + 8 * c, d - c0 - 8 * c);
    const float sc = F == KvFormat::kFp8 ? _cvtsh_ss(v.scale[j]) * kE4m3Unscale : 1.0f;
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m256 pb = _mm256_set1_ps(F == KvFormat::kFp8 ? p[r * n + j] * sc : p[r * n + j]);
      KVLAB_UNROLL
      for (int c = 0; c < C; ++c) a[r][c] = _mm256_fmadd_ps(pb, vv[c], a[r][c]);
    }
  }
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int c = 0; c < C; ++c) _mm256_maskstore_ps(acc + r * d + c0 + 8 * c, m[c], a[r][c]);
  }
}

template <KvFormat F, int R>
KVLAB_TARGET_AVX2 void dense_acc_rows8(const KvBlock& v, const float* p, float* acc) {
  for (int c0 = 0; c0 < v.d; c0 += 16) {
    if (v.d - c0 > 8) {
      dense_acc_tile8<F, R, 2>(v, p, c0, acc);
    } else {
      dense_acc_tile8<F, R, 1>(v, p, c0, acc);
    }
  }
}

template <KvFormat F>
KVLAB_TARGET_AVX2 void dense_acc8(const KvBlock& v, const float* p, int rows, float* acc) {
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const float* pr = p + int64_t(r0) * v.n;
    float* ar = acc + int64_t(r0) * v.d;
    with_rows(rows - r0, [&]<int R>() { dense_acc_rows8<F, R>(v, pr, ar); });
  }
}

// ---- kIntChannel scores, f32 (the AVX-512 scheme on 8 lanes) ---------------------------------

KVLAB_TARGET_AVX2 float zero_term8(const float* q, const uint16_t* zero, int d) {
  float z = 0.0f;
  for (int c = 0; c < d; ++c) z = std::fma(q[c], _cvtsh_ss(zero[c]), z);
  return z;
}

template <int R, int TV>
KVLAB_TARGET_AVX2 void int_channel_scores_tile8(const KvBlock& k, const float* q, const float* z, int j0, float* s) {
  const int n = k.n, d = k.d;
  const int64_t sb = packed_bytes(n, k.bits);
  __m256 acc[R][TV];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int t = 0; t < TV; ++t) acc[r][t] = _mm256_setzero_ps();
  }
  for (int c = 0; c < d; ++c) {
    const uint8_t* stream = k.data + c * k.stride;
    __m256 code[TV];
    KVLAB_UNROLL
    for (int t = 0; t < TV; ++t) code[t] = codes8(stream, j0 + 8 * t, k.bits, sb);
    const float sc = _cvtsh_ss(k.scale[c]);
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m256 qv = _mm256_set1_ps(q[r * d + c] * sc);
      KVLAB_UNROLL
      for (int t = 0; t < TV; ++t) acc[r][t] = _mm256_fmadd_ps(qv, code[t], acc[r][t]);
    }
  }
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int t = 0; t < TV; ++t) {
      _mm256_maskstore_ps(s + r * n + j0 + 8 * t, tail_mask8(n - j0 - 8 * t),
                          _mm256_add_ps(acc[r][t], _mm256_set1_ps(z[r])));
    }
  }
}

template <int R>
KVLAB_TARGET_AVX2 void int_channel_scores_rows8(const KvBlock& k, const float* q, float* s) {
  float z[R];
  for (int r = 0; r < R; ++r) z[r] = zero_term8(q + r * k.d, k.zero, k.d);
  for (int j0 = 0; j0 < k.n; j0 += 16) {
    if (k.n - j0 > 8) {
      int_channel_scores_tile8<R, 2>(k, q, z, j0, s);
    } else {
      int_channel_scores_tile8<R, 1>(k, q, z, j0, s);
    }
  }
}

// ---- kIntToken: scale / zero lanes of channels c .. c+7 of token j -----------------------------

KVLAB_TARGET_AVX2 inline void token_lanes8(const KvBlock& b, int j, int c, __m256* sl, __m256* zl) {
  const int G = groups_of(b);
  const int g0 = c / b.group;
  if (b.group % 8 == 0) {
    *sl = _mm256_set1_ps(_cvtsh_ss(b.scale[j * G + g0]));
    *zl = _mm256_set1_ps(_cvtsh_ss(b.zero[j * G + g0]));
    return;
  }
  alignas(32) int32_t gi[8];
  for (int i = 0; i < 8; ++i) gi[i] = std::min((c + i) / b.group, G - 1) - g0;
  const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(gi));
  const int count = 2 * std::min(8, G - g0);
  *sl = _mm256_permutevar8x32_ps(
      _mm256_cvtph_ps(load_partial16(reinterpret_cast<const uint8_t*>(b.scale + j * G + g0), count)), idx);
  *zl = _mm256_permutevar8x32_ps(
      _mm256_cvtph_ps(load_partial16(reinterpret_cast<const uint8_t*>(b.zero + j * G + g0), count)), idx);
}

KVLAB_TARGET_AVX2 void int_token_scores8(const KvBlock& k, const float* q, int rows, float* s) {
  const int n = k.n, d = k.d;
  const int dp = (d + 7) & ~7;
  alignas(32) float tile[2 * kMaxSimdD];
  const int64_t rb = packed_bytes(d, k.bits);
  for (int j0 = 0; j0 < n; j0 += 2) {
    const int T = std::min(2, n - j0);
    for (int t = 0; t < T; ++t) {
      const uint8_t* row = k.data + (j0 + t) * k.stride;
      for (int c = 0; c < d; c += 8) {
        __m256 sl, zl;
        token_lanes8(k, j0 + t, c, &sl, &zl);
        _mm256_store_ps(tile + t * dp + c, _mm256_fmadd_ps(codes8(row, c, k.bits, rb), sl, zl));
      }
    }
    const uint8_t* tb = reinterpret_cast<const uint8_t*>(tile);
    for (int r0 = 0; r0 < rows; r0 += 4) {
      const float* qr = q + int64_t(r0) * d;
      float* sr = s + int64_t(r0) * n + j0;
      with_rows(rows - r0, [&]<int R>() {
        if (T == 2) {
          dense_scores_tile8<KvFormat::kF32, R, 2>(tb, dp * 4, nullptr, 0, qr, d, sr, n);
        } else {
          dense_scores_tile8<KvFormat::kF32, R, 1>(tb, dp * 4, nullptr, 0, qr, d, sr, n);
        }
      });
    }
  }
}

// ---- kIntToken accumulate, f32: scale folded into p (the AVX-512 scheme on 8 lanes) -----------

template <int R, int C>
KVLAB_TARGET_AVX2 void int_token_acc_tile8(const KvBlock& v, const float* p, const float* zs, int c0, float* acc) {
  const int n = v.n, d = v.d, G = groups_of(v);
  const int64_t rb = packed_bytes(d, v.bits);
  __m256i m[C];
  KVLAB_UNROLL
  for (int c = 0; c < C; ++c) m[c] = tail_mask8(d - c0 - 8 * c);
  __m256 a[R][C];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int c = 0; c < C; ++c) a[r][c] = _mm256_maskload_ps(acc + r * d + c0 + 8 * c, m[c]);
  }
  for (int j = 0; j < n; ++j) {
    const uint8_t* row = v.data + j * v.stride;
    __m256 code[C], sl[C];
    KVLAB_UNROLL
    for (int c = 0; c < C; ++c) {
      __m256 zl;
      code[c] = codes8(row, c0 + 8 * c, v.bits, rb);
      token_lanes8(v, j, c0 + 8 * c, &sl[c], &zl);
    }
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m256 pb = _mm256_set1_ps(p[r * n + j]);
      KVLAB_UNROLL
      for (int c = 0; c < C; ++c) a[r][c] = _mm256_fmadd_ps(_mm256_mul_ps(pb, sl[c]), code[c], a[r][c]);
    }
  }
  KVLAB_UNROLL
  for (int c = 0; c < C; ++c) {
    alignas(32) int32_t gi[8];
    for (int i = 0; i < 8; ++i) gi[i] = std::min((c0 + 8 * c + i) / v.group, G - 1);
    const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(gi));
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m256 zl = _mm256_i32gather_ps(zs + r * G, idx, 4);
      _mm256_maskstore_ps(acc + r * d + c0 + 8 * c, m[c], _mm256_add_ps(a[r][c], zl));
    }
  }
}

template <int R>
KVLAB_TARGET_AVX2 void int_token_acc_rows8(const KvBlock& v, const float* p, float* acc) {
  const int G = groups_of(v), n = v.n;
  float zs[4 * kMaxSimdD];
  for (int r = 0; r < R; ++r) {
    for (int g = 0; g < G; ++g) {
      float z = 0.0f;
      for (int j = 0; j < n; ++j) z = std::fma(p[r * n + j], _cvtsh_ss(v.zero[j * G + g]), z);
      zs[r * G + g] = z;
    }
  }
  for (int c0 = 0; c0 < v.d; c0 += 16) {
    if (v.d - c0 > 8) {
      int_token_acc_tile8<R, 2>(v, p, zs, c0, acc);
    } else {
      int_token_acc_tile8<R, 1>(v, p, zs, c0, acc);
    }
  }
}

// ---- kIntChannel accumulate: per (row, channel) dots over tokens, 2 channels at a time --------

template <int R>
KVLAB_TARGET_AVX2 void int_channel_acc_rows8(const KvBlock& v, const float* p, float* acc) {
  const int n = v.n, d = v.d;
  const int64_t sb = packed_bytes(n, v.bits);
  float psum[R];
  for (int r = 0; r < R; ++r) {
    __m256 sv = _mm256_setzero_ps();
    for (int j = 0; j < n; j += 8) sv = _mm256_add_ps(sv, _mm256_maskload_ps(p + r * n + j, tail_mask8(n - j)));
    psum[r] = hsum8(sv);
  }
  for (int c0 = 0; c0 < d; c0 += 2) {
    const int CC = std::min(2, d - c0);
    __m256 dots[2][R];
    KVLAB_UNROLL
    for (int cc = 0; cc < 2; ++cc) {
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) dots[cc][r] = _mm256_setzero_ps();
    }
    for (int j = 0; j < n; j += 8) {
      const __m256i m = tail_mask8(n - j);
      __m256 pv[R];
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) pv[r] = _mm256_maskload_ps(p + r * n + j, m);
      KVLAB_UNROLL
      for (int cc = 0; cc < 2; ++cc) {
        if (cc >= CC) break;
        const __m256 code = codes8(v.data + (c0 + cc) * v.stride, j, v.bits, sb);
        KVLAB_UNROLL
        for (int r = 0; r < R; ++r) dots[cc][r] = _mm256_fmadd_ps(pv[r], code, dots[cc][r]);
      }
    }
    __m256 w[8];
    KVLAB_UNROLL
    for (int i = 0; i < 8; ++i) w[i] = _mm256_setzero_ps();
    KVLAB_UNROLL
    for (int cc = 0; cc < 2; ++cc) {
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) w[4 * cc + r] = dots[cc][r];
    }
    alignas(32) float out[8];  // out[4cc + r]
    _mm256_store_ps(out, reduce8(w));
    for (int cc = 0; cc < CC; ++cc) {
      const float sc = _cvtsh_ss(v.scale[c0 + cc]), zr = _cvtsh_ss(v.zero[c0 + cc]);
      for (int r = 0; r < R; ++r) acc[r * d + c0 + cc] += std::fma(out[4 * cc + r], sc, psum[r] * zr);
    }
  }
}

KVLAB_TARGET_AVX2 void scores_avx2(const KvBlock& k, const float* q, int rows, float* s) {
  switch (k.format) {
    case KvFormat::kF32: return dense_scores8<KvFormat::kF32>(k.data, k.stride, k.scale, k.n, k.d, q, rows, s);
    case KvFormat::kF16: return dense_scores8<KvFormat::kF16>(k.data, k.stride, k.scale, k.n, k.d, q, rows, s);
    case KvFormat::kBF16: return dense_scores8<KvFormat::kBF16>(k.data, k.stride, k.scale, k.n, k.d, q, rows, s);
    case KvFormat::kFp8: return dense_scores8<KvFormat::kFp8>(k.data, k.stride, k.scale, k.n, k.d, q, rows, s);
    case KvFormat::kIntToken: return int_token_scores8(k, q, rows, s);
    case KvFormat::kIntChannel:
      for (int r0 = 0; r0 < rows; r0 += 4) {
        const float* qr = q + int64_t(r0) * k.d;
        float* sr = s + int64_t(r0) * k.n;
        with_rows(rows - r0, [&]<int R>() { int_channel_scores_rows8<R>(k, qr, sr); });
      }
      return;
  }
}

KVLAB_TARGET_AVX2 void accumulate_avx2(const KvBlock& v, const float* p, int rows, float* acc) {
  switch (v.format) {
    case KvFormat::kF32: return dense_acc8<KvFormat::kF32>(v, p, rows, acc);
    case KvFormat::kF16: return dense_acc8<KvFormat::kF16>(v, p, rows, acc);
    case KvFormat::kBF16: return dense_acc8<KvFormat::kBF16>(v, p, rows, acc);
    case KvFormat::kFp8: return dense_acc8<KvFormat::kFp8>(v, p, rows, acc);
    default: break;
  }
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const float* pr = p + int64_t(r0) * v.n;
    float* ar = acc + int64_t(r0) * v.d;
    if (v.format == KvFormat::kIntChannel) {
      with_rows(rows - r0, [&]<int R>() { int_channel_acc_rows8<R>(v, pr, ar); });
    } else {
      with_rows(rows - r0, [&]<int R>() { int_token_acc_rows8<R>(v, pr, ar); });
    }
  }
}
#endif  // KVLAB_X86

}  // namespace

void kv_scores_isa(Isa isa, const KvBlock& k, const float* q, int rows, float* s) {
  KVLAB_CHECK(int(isa) <= int(detected_isa()));
#ifdef KVLAB_X86
  if (k.d <= kMaxSimdD) {
    if (isa == Isa::kAvx512) return scores_avx512(k, q, rows, s);
    if (isa == Isa::kAvx2) return scores_avx2(k, q, rows, s);
  }
#endif
  scores_scalar(k, q, rows, s);
}

void kv_accumulate_isa(Isa isa, const KvBlock& v, const float* p, int rows, float* acc) {
  KVLAB_CHECK(int(isa) <= int(detected_isa()));
#ifdef KVLAB_X86
  if (v.d <= kMaxSimdD) {
    if (isa == Isa::kAvx512) return accumulate_avx512(v, p, rows, acc);
    if (isa == Isa::kAvx2) return accumulate_avx2(v, p, rows, acc);
  }
#endif
  accumulate_scalar(v, p, rows, acc);
}

bool kv_scores_quantize_query(Isa isa, const KvBlock& k) {
#ifdef KVLAB_X86
  return isa == Isa::kAvx512 && k.d <= kMaxSimdD && (vnni_keys(k) || vnni_token_keys(k));
#else
  return false;
#endif
}

bool kv_accumulate_quantize_probs(Isa isa, const KvBlock& v) {
#ifdef KVLAB_X86
  return isa == Isa::kAvx512 && v.d <= kMaxSimdD && vnni_values(v);
#else
  return false;
#endif
}

void kv_scores(const KvBlock& k, const float* q, int rows, float* s) {
  kv_scores_isa(active_isa(), k, q, rows, s);
}

void kv_accumulate(const KvBlock& v, const float* p, int rows, float* acc) {
  kv_accumulate_isa(active_isa(), v, p, rows, acc);
}

}  // namespace kvlab
