// The vector width abstraction of the f32 decode-attention kernels (kv_dense.h, kv_int_f32.h):
// each algorithm there is written once over a type V with these members, and each ISA is one
// struct here. Vec8 is AVX2 + FMA + F16C (8 f32 lanes, 16 registers), Vec16 is AVX-512 (16
// lanes, 32 registers, masked loads).
//
//   F, kLanes          the f32 vector and its lane count
//   kTile              register tile: the kernels keep 4 rows x kTile accumulators (16 registers
//                      on AVX-512, 8 on AVX2, leaving room for the operands)
//   kMatmulTokens      tokens of the matmul's 4-row register tile (matmul_simd.h)
//   Lanes, lanes(t)    any set of lanes (key visibility in the softmax)
//   Tail, tail(n)      the first min(n, kLanes) lanes; loads through a tail read nothing beyond
//                      them and give 0 there, stores write only them
//   load_dense<Fmt, kRaw>   channels c .. c + kLanes - 1 of a token-major row as f32 (fp8: 2^-8
//                      of the e4m3 value, every byte exact, NaN kept; kRaw: 2^-120 of it, cheaper,
//                      for blocks without NaN codes: any_e4m3_nan; kv_dense.h)
//   codes              codes first .. first + kLanes - 1 (first % 8 == 0) of a bit stream as f32,
//                      never reading past its end
//   hsums<N>           out[i] = the sum of v[i]'s lanes, each by one fixed tree (lane l + lane
//                      l + kLanes / 2, then l + kLanes / 4, ...), for N <= 16
//
// Every member is compiled for its ISA (function target attributes); the kernels that use them
// are compiled under the same target (#pragma GCC target in isa_avx2.cc / isa_avx512.cc).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/kv_format.h"
#include "kernels/cpu/kv_kernels_internal.h"
#include "kernels/cpu/simd.h"

#ifdef KVLAB_X86
namespace kvlab {

// Byte tables of the generic code extraction: for `bits`-bit codes 0..15 of a stream, dword lane
// i gets the two bytes holding code i (pshufb index) and shifts right by (i * bits) % 8.
struct ExtractTables {
  alignas(64) uint8_t shuffle[64];
  alignas(64) uint32_t shift[16];
};
constexpr ExtractTables make_extract_tables(int bits) {
  ExtractTables t{};
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
inline constexpr ExtractTables kExtract2 = make_extract_tables(2);
inline constexpr ExtractTables kExtract3 = make_extract_tables(3);
inline constexpr ExtractTables kExtract4 = make_extract_tables(4);
inline const ExtractTables& extract_tables(int bits) {
  return bits == 2 ? kExtract2 : (bits == 3 ? kExtract3 : kExtract4);
}

// ---------------------------------------------------------------------------------------------
// AVX2: no byte- or word-masked loads, so partial tails of 16- and 8-bit data go through a
// zeroed local copy.

struct Vec8 {
  using F = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kTile = 2;
  static constexpr int kMatmulTokens = 3;  // 4 x 3 accumulators + 3 x + 1 w: all 16 registers

  // A tail is only its count (GCC keeps a struct holding a vector in memory, and copies it at
  // every use); the lane mask is made where a partial vector needs it.
  struct Tail {
    int count;  // valid lanes (may exceed kLanes)
  };
  struct Lanes {  // any set of lanes: all-ones where on
    __m256i mask;
  };
  KVLAB_TARGET_AVX2 static Tail tail(int count) { return {count}; }
  KVLAB_TARGET_AVX2 static __m256i lane_mask(int count) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  KVLAB_TARGET_AVX2 static Lanes lanes(Tail t) { return {lane_mask(t.count)}; }

  KVLAB_TARGET_AVX2 static F zero() { return _mm256_setzero_ps(); }
  KVLAB_TARGET_AVX2 static F set1(float x) { return _mm256_set1_ps(x); }
  KVLAB_TARGET_AVX2 static F add(F a, F b) { return _mm256_add_ps(a, b); }
  KVLAB_TARGET_AVX2 static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  KVLAB_TARGET_AVX2 static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }  // a * b + c
  // Keeps v in a register: GCC would otherwise fold a load used by several fmas into each of
  // them, and the loads, not the fmas, then bound the loop.
  KVLAB_TARGET_AVX2 static void keep(F& v) { __asm__("" : "+x"(v)); }
  KVLAB_TARGET_AVX2 static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  KVLAB_TARGET_AVX2 static F abs(F a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  // f16 values p[0 .. min(count, 8)) as f32 (0 beyond).
  KVLAB_TARGET_AVX2 static F load_f16(const uint16_t* p, Tail t) {
    const uint8_t* b = reinterpret_cast<const uint8_t*>(p);
    return _mm256_cvtph_ps(t.count >= 8 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(b))
                                        : load_partial16(b, 2 * t.count));
  }
  KVLAB_TARGET_AVX2 static F fnma(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a * b
  KVLAB_TARGET_AVX2 static F max(F a, F b) { return _mm256_max_ps(a, b); }  // b where either is NaN
  KVLAB_TARGET_AVX2 static F min(F a, F b) { return _mm256_min_ps(a, b); }  // b where either is NaN
  // p * 2^k for integral k in [-150, 129]: p * 2^floor(k / 2) (exact) * 2^(k - floor(k / 2)), one
  // rounding (softmax.cc, step 5).
  KVLAB_TARGET_AVX2 static F mul_pow2(F p, F kf) {
    const __m256i k = _mm256_cvttps_epi32(kf);
    const __m256i k1 = _mm256_srai_epi32(k, 1);
    const __m256i bias = _mm256_set1_epi32(127);
    const F s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, bias), 23));
    const F s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(k, k1), bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  }
  // mul_pow2 where p * 2^k is a normal number (p in [0.7, 1.5), k in [-125, 127]): k added to p's
  // exponent field, the same bits (a scaling by a power of 2 of a normal result is exact).
  KVLAB_TARGET_AVX2 static F mul_pow2_normal(F p, F kf) {
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_cvttps_epi32(kf), 23)));
  }
  KVLAB_TARGET_AVX2 static float hmax(F v) {
    __m128 q = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_max_ps(q, _mm_movehl_ps(q, q));
    q = _mm_max_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
  }
  KVLAB_TARGET_AVX2 static float hmin(F v) {
    __m128 q = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_min_ps(q, _mm_movehl_ps(q, q));
    q = _mm_min_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
  }
  // The lanes of `in` whose key position (key_pos[j0 + i], or first_pos + j0 + i) is at most rp.
  KVLAB_TARGET_AVX2 static Lanes at_or_before(Tail in, const int32_t* key_pos, int32_t first_pos, int j0, int32_t rp) {
    const __m256i m = lane_mask(in.count);
    const __m256i kp = key_pos ? _mm256_maskload_epi32(key_pos + j0, m)
                               : _mm256_add_epi32(_mm256_set1_epi32(first_pos + j0), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return {_mm256_andnot_si256(_mm256_cmpgt_epi32(kp, _mm256_set1_epi32(rp)), m)};
  }
  // max(acc, v) in the lanes of m (NaN in v ignored), acc elsewhere.
  KVLAB_TARGET_AVX2 static F max_in(F acc, Lanes m, F v) {
    return _mm256_max_ps(_mm256_blendv_ps(acc, v, _mm256_castsi256_ps(m.mask)), acc);
  }
  KVLAB_TARGET_AVX2 static F min_in(F acc, Lanes m, F v) {  // as max_in
    return _mm256_min_ps(_mm256_blendv_ps(acc, v, _mm256_castsi256_ps(m.mask)), acc);
  }
  KVLAB_TARGET_AVX2 static F zero_outside(Lanes m, F v) { return _mm256_and_ps(_mm256_castsi256_ps(m.mask), v); }
  // kLanes bytes at p, zero- or sign-extended, as floats (exact).
  KVLAB_TARGET_AVX2 static F load_u8(const uint8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  KVLAB_TARGET_AVX2 static F load_i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  // kLanes 4-bit codes as floats: the low (Shift 0) or high (Shift 4) nibbles of the kLanes bytes at p.
  template <int Shift>
  KVLAB_TARGET_AVX2 static F load_u4(const uint8_t* p) {
    const __m128i b = _mm_srli_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), Shift);
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_and_si128(b, _mm_set1_epi8(0x0f))));
  }
  KVLAB_TARGET_AVX2 static F load(const float* p) { return _mm256_loadu_ps(p); }
  KVLAB_TARGET_AVX2 static F load(const float* p, Lanes m) { return _mm256_maskload_ps(p, m.mask); }
  KVLAB_TARGET_AVX2 static F load(const float* p, Tail t) {
    return t.count >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lane_mask(t.count));
  }
  KVLAB_TARGET_AVX2 static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  KVLAB_TARGET_AVX2 static void store(float* p, Tail t, F v) {
    if (t.count >= 8) {
      _mm256_storeu_ps(p, v);
    } else {
      _mm256_maskstore_ps(p, lane_mask(t.count), v);
    }
  }
  KVLAB_TARGET_AVX2 static float h2f(uint16_t h) { return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h))); }

  // The first min(count, 16) bytes at p in an xmm, the rest zero (p + 16 may be unreadable).
  KVLAB_TARGET_AVX2 static __m128i load_partial16(const uint8_t* p, int count) {
    if (count >= 16) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    alignas(16) uint8_t tmp[16] = {};
    if (count > 0) std::memcpy(tmp, p, size_t(count));
    return _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
  }

  // e4m3 bytes -> f32 times 2^-8, exact: the e4m3 bits moved into an f16 (sign to bit 15, the 7
  // magnitude bits to bits 13..7) are the same number with exponent bias 15 instead of 7, normal
  // and subnormal alike; vcvtph2ps widens. 0x7f / 0xff become the f16 NaN.
  KVLAB_TARGET_AVX2 static F e4m3(__m128i bytes) {
    __m128i w = _mm_unpacklo_epi8(_mm_setzero_si128(), bytes);  // s mmmmmmm 0...
    w = _mm_and_si128(_mm_srai_epi16(w, 1), _mm_set1_epi16(short(0xbfff)));
    const __m128i mag = _mm_set1_epi16(0x3f80);
    w = _mm_blendv_epi8(w, _mm_set1_epi16(0x7e00), _mm_cmpeq_epi16(_mm_and_si128(w, mag), mag));
    return _mm256_cvtph_ps(w);
  }

  // e4m3 bytes -> f32 times 2^-120, exact, for bytes that are not NaN (0x7f / 0xff read as 480):
  // the sign-extended byte shifted left by 20 has the 7 magnitude bits at 26..20 (an f32 with
  // the e4m3 exponent under bias 127 instead of 7; subnormals become f32 subnormals) and copies of
  // the sign at 31..27, of which the and keeps bit 31. No conversion instruction.
  KVLAB_TARGET_AVX2 static F e4m3_raw(__m128i bytes) {
    const __m256i x = _mm256_slli_epi32(_mm256_cvtepi8_epi32(bytes), 20);
    return _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(int(0x87f00000u))));
  }

  // Whether any of the n rows of d bytes (stride apart) holds an e4m3 NaN (0x7f or 0xff).
  KVLAB_TARGET_AVX2 static bool any_e4m3_nan(const uint8_t* data, int64_t stride, int n, int d) {
    const __m256i top = _mm256_set1_epi8(char(0x80)), ones = _mm256_set1_epi8(char(0xff));
    __m256i hit = _mm256_setzero_si256();
    bool tail_hit = false;
    for (int j = 0; j < n; ++j) {
      const uint8_t* row = data + j * stride;
      int c = 0;
      for (; c + 32 <= d; c += 32) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c));
        hit = _mm256_or_si256(hit, _mm256_cmpeq_epi8(_mm256_or_si256(x, top), ones));
      }
      for (; c < d; ++c) tail_hit |= e4m3_is_nan(row[c]);
    }
    return tail_hit || !_mm256_testz_si256(hit, hit);
  }

  template <KvFormat Fmt, bool kRaw = false>
  KVLAB_TARGET_AVX2 static F load_dense(const uint8_t* row, int c, Tail t) {
    if constexpr (Fmt == KvFormat::kF32) {
      return load(reinterpret_cast<const float*>(row) + c, t);
    } else if constexpr (Fmt == KvFormat::kF16) {
      return _mm256_cvtph_ps(t.count >= 8 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c))
                                          : load_partial16(row + 2 * c, 2 * t.count));
    } else if constexpr (Fmt == KvFormat::kBF16) {
      const __m128i h = t.count >= 8 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c))
                                     : load_partial16(row + 2 * c, 2 * t.count);
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    } else {
      const __m128i b = t.count >= 8 ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c))
                                     : load_partial16(row + c, t.count);
      return kRaw ? e4m3_raw(b) : e4m3(b);
    }
  }

  KVLAB_TARGET_AVX2 static F codes(const uint8_t* stream, int first, int bits, int64_t stream_bytes) {
    const int64_t b0 = int64_t(first) * bits / 8;
    const int64_t left = stream_bytes - b0;  // 8 codes are `bits` bytes; read 8 where they exist
    uint64_t word = 0;
    if (left >= 8) {
      std::memcpy(&word, stream + b0, 8);  // a constant size: one load, no call
    } else {
      std::memcpy(&word, stream + b0, size_t(std::min<int64_t>(bits, left)));
    }
    const __m128i raw = _mm_cvtsi64_si128(int64_t(word));
    if (bits == 8) return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(raw));
    const ExtractTables& tb = extract_tables(bits);
    __m256i x = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(raw),
                                    _mm256_load_si256(reinterpret_cast<const __m256i*>(tb.shuffle)));
    x = _mm256_srlv_epi32(x, _mm256_load_si256(reinterpret_cast<const __m256i*>(tb.shift)));
    x = _mm256_and_si256(x, _mm256_set1_epi32((1 << bits) - 1));
    return _mm256_cvtepi32_ps(x);
  }

  // Lane i of the result is the sum of the 8 lanes of w[i]: lane l + lane l+4, then l + l+2,
  // then l + l+1.
  KVLAB_TARGET_AVX2 static F reduce8(const F (&w)[8]) {
    F t[4];  // t[p]: [w[p] lanes l + l+4 | w[p + 4] lanes l + l+4]
    KVLAB_UNROLL
    for (int p = 0; p < 4; ++p) {
      t[p] = _mm256_add_ps(_mm256_permute2f128_ps(w[p], w[p + 4], 0x20), _mm256_permute2f128_ps(w[p], w[p + 4], 0x31));
    }
    const F u0 = _mm256_add_ps(_mm256_shuffle_ps(t[0], t[1], 0x44), _mm256_shuffle_ps(t[0], t[1], 0xee));
    const F u1 = _mm256_add_ps(_mm256_shuffle_ps(t[2], t[3], 0x44), _mm256_shuffle_ps(t[2], t[3], 0xee));
    return _mm256_add_ps(_mm256_shuffle_ps(u0, u1, 0x88), _mm256_shuffle_ps(u0, u1, 0xdd));
  }

  template <int N>
  KVLAB_TARGET_AVX2 static void hsums(const F (&v)[N], float* out) {
    static_assert(N <= 16, "at most two reductions of 8");
    alignas(32) float tmp[16];
    KVLAB_UNROLL
    for (int h = 0; h < (N + 7) / 8; ++h) {
      F w[8];
      KVLAB_UNROLL
      for (int i = 0; i < 8; ++i) w[i] = 8 * h + i < N ? v[8 * h + i] : zero();
      _mm256_store_ps(tmp + 8 * h, reduce8(w));
    }
    KVLAB_UNROLL
    for (int i = 0; i < N; ++i) out[i] = tmp[i];
  }

  KVLAB_TARGET_AVX2 static float hsum(F v) {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
  }
};

// ---------------------------------------------------------------------------------------------
// AVX-512

struct Vec16 {
  using F = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kTile = 4;
  static constexpr int kMatmulTokens = 4;

  struct Tail {
    __mmask16 m;
  };
  using Lanes = Tail;
  KVLAB_TARGET_AVX512 static Lanes lanes(Tail t) { return t; }
  KVLAB_TARGET_AVX512 static Tail tail(int count) {
    return {count >= 16 ? __mmask16(0xffff) : (count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1))};
  }

  KVLAB_TARGET_AVX512 static F zero() { return _mm512_setzero_ps(); }
  KVLAB_TARGET_AVX512 static F set1(float x) { return _mm512_set1_ps(x); }
  KVLAB_TARGET_AVX512 static F add(F a, F b) { return _mm512_add_ps(a, b); }
  KVLAB_TARGET_AVX512 static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  KVLAB_TARGET_AVX512 static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }  // a * b + c
  KVLAB_TARGET_AVX512 static void keep(F& v) { __asm__("" : "+v"(v)); }  // as Vec8::keep
  KVLAB_TARGET_AVX512 static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  KVLAB_TARGET_AVX512 static F abs(F a) { return _mm512_abs_ps(a); }
  KVLAB_TARGET_AVX512 static F load_f16(const uint16_t* p, Tail t) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(t.m, p)); }
  KVLAB_TARGET_AVX512 static F fnma(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a * b
  KVLAB_TARGET_AVX512 static F max(F a, F b) { return _mm512_max_ps(a, b); }  // b where either is NaN
  KVLAB_TARGET_AVX512 static F min(F a, F b) { return _mm512_min_ps(a, b); }  // b where either is NaN
  // p * 2^k with one rounding (vscalefps): the result of Vec8::mul_pow2.
  KVLAB_TARGET_AVX512 static F mul_pow2(F p, F kf) { return _mm512_scalef_ps(p, kf); }
  KVLAB_TARGET_AVX512 static F mul_pow2_normal(F p, F kf) { return _mm512_scalef_ps(p, kf); }
  KVLAB_TARGET_AVX512 static float hmax(F v) { return _mm512_reduce_max_ps(v); }
  KVLAB_TARGET_AVX512 static float hmin(F v) { return _mm512_reduce_min_ps(v); }
  // As Vec8::at_or_before.
  KVLAB_TARGET_AVX512 static Lanes at_or_before(Tail in, const int32_t* key_pos, int32_t first_pos, int j0,
                                               int32_t rp) {
    const __m512i kp =
        key_pos ? _mm512_maskz_loadu_epi32(in.m, key_pos + j0)
                : _mm512_add_epi32(_mm512_set1_epi32(first_pos + j0),
                                   _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    return {_mm512_mask_cmple_epi32_mask(in.m, kp, _mm512_set1_epi32(rp))};
  }
  KVLAB_TARGET_AVX512 static F max_in(F acc, Lanes m, F v) { return _mm512_mask_max_ps(acc, m.m, v, acc); }
  KVLAB_TARGET_AVX512 static F min_in(F acc, Lanes m, F v) { return _mm512_mask_min_ps(acc, m.m, v, acc); }
  KVLAB_TARGET_AVX512 static F zero_outside(Lanes m, F v) { return _mm512_maskz_mov_ps(m.m, v); }
  KVLAB_TARGET_AVX512 static F load_u8(const uint8_t* p) {  // as Vec8::load_u8
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  KVLAB_TARGET_AVX512 static F load_i8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  template <int Shift>
  KVLAB_TARGET_AVX512 static F load_u4(const uint8_t* p) {  // as Vec8::load_u4
    const __m128i b = _mm_srli_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), Shift);
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(b, _mm_set1_epi8(0x0f))));
  }
  KVLAB_TARGET_AVX512 static F load(const float* p) { return _mm512_loadu_ps(p); }
  KVLAB_TARGET_AVX512 static F load(const float* p, Tail t) { return _mm512_maskz_loadu_ps(t.m, p); }
  KVLAB_TARGET_AVX512 static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  KVLAB_TARGET_AVX512 static void store(float* p, Tail t, F v) { _mm512_mask_storeu_ps(p, t.m, v); }
  KVLAB_TARGET_AVX512 static float h2f(uint16_t h) {
    return _mm_cvtss_f32(_mm512_castps512_ps128(_mm512_cvtph_ps(_mm256_set1_epi16(short(h)))));
  }

  // e4m3 bytes -> f32 times 2^-8, as Vec8::e4m3.
  KVLAB_TARGET_AVX512 static F e4m3(__m128i bytes) {
    __m256i w = _mm256_slli_epi16(_mm256_cvtepu8_epi16(bytes), 8);  // s mmmmmmm 0...
    w = _mm256_and_si256(_mm256_srai_epi16(w, 1), _mm256_set1_epi16(short(0xbfff)));
    const __m256i mag = _mm256_set1_epi16(0x3f80);
    const __mmask16 nan = _mm256_cmpeq_epi16_mask(_mm256_and_si256(w, mag), mag);
    return _mm512_cvtph_ps(_mm256_mask_mov_epi16(w, nan, _mm256_set1_epi16(0x7e00)));
  }

  // e4m3 bytes -> f32 times 2^-120, as Vec8::e4m3_raw.
  KVLAB_TARGET_AVX512 static F e4m3_raw(__m128i bytes) {
    const __m512i x = _mm512_slli_epi32(_mm512_cvtepi8_epi32(bytes), 20);
    return _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(int(0x87f00000u))));
  }

  // As Vec8::any_e4m3_nan.
  KVLAB_TARGET_AVX512 static bool any_e4m3_nan(const uint8_t* data, int64_t stride, int n, int d) {
    const __m512i top = _mm512_set1_epi8(char(0x80)), ones = _mm512_set1_epi8(char(0xff));
    __mmask64 hit = 0;
    for (int j = 0; j < n; ++j) {
      const uint8_t* row = data + j * stride;
      for (int c = 0; c < d; c += 64) {
        const __mmask64 m = d - c >= 64 ? ~__mmask64(0) : (__mmask64(1) << (d - c)) - 1;
        hit |= _mm512_mask_cmpeq_epi8_mask(m, _mm512_or_si512(_mm512_maskz_loadu_epi8(m, row + c), top), ones);
      }
    }
    return hit != 0;
  }

  template <KvFormat Fmt, bool kRaw = false>
  KVLAB_TARGET_AVX512 static F load_dense(const uint8_t* row, int c, Tail t) {
    if constexpr (Fmt == KvFormat::kF32) {
      return _mm512_maskz_loadu_ps(t.m, row + 4 * c);
    } else if constexpr (Fmt == KvFormat::kF16) {
      return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(t.m, row + 2 * c));
    } else if constexpr (Fmt == KvFormat::kBF16) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(t.m, row + 2 * c)), 16));
    } else {
      const __m128i b = _mm_maskz_loadu_epi8(t.m, row + c);
      return kRaw ? e4m3_raw(b) : e4m3(b);
    }
  }

  KVLAB_TARGET_AVX512 static F codes(const uint8_t* stream, int first, int bits, int64_t stream_bytes) {
    const int64_t b0 = int64_t(first) * bits / 8;
    const __mmask16 m = tail(int(std::min<int64_t>(2 * bits, stream_bytes - b0))).m;
    const __m128i raw = _mm_maskz_loadu_epi8(m, stream + b0);
    if (bits == 8) return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(raw));
    const ExtractTables& tb = extract_tables(bits);
    __m512i x = _mm512_shuffle_epi8(_mm512_broadcast_i32x4(raw), _mm512_load_si512(tb.shuffle));
    x = _mm512_srlv_epi32(x, _mm512_load_si512(tb.shift));
    x = _mm512_and_si512(x, _mm512_set1_epi32((1 << bits) - 1));
    return _mm512_cvtepi32_ps(x);
  }

  // Lane 4m + n of the result is the sum of the 16 lanes of v[4n + m]: lane i + lane i+8, then
  // i + i+4, then i + i+2, then i + i+1 (4 rounds of 2 shuffles and an add halve the vector
  // count).
  KVLAB_TARGET_AVX512 static F reduce16(const F (&v)[16]) {
    F c[8];
    KVLAB_UNROLL
    for (int p = 0; p < 8; ++p) {
      c[p] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0x44),
                           _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0xee));
    }
    F e[4];
    KVLAB_UNROLL
    for (int q = 0; q < 4; ++q) {
      e[q] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * q], c[2 * q + 1], 0x88),
                           _mm512_shuffle_f32x4(c[2 * q], c[2 * q + 1], 0xdd));
    }
    F g[2];
    KVLAB_UNROLL
    for (int s = 0; s < 2; ++s) {
      g[s] = _mm512_add_ps(_mm512_shuffle_ps(e[2 * s], e[2 * s + 1], 0x44),
                           _mm512_shuffle_ps(e[2 * s], e[2 * s + 1], 0xee));
    }
    return _mm512_add_ps(_mm512_shuffle_ps(g[0], g[1], 0x88), _mm512_shuffle_ps(g[0], g[1], 0xdd));
  }

  template <int N>
  KVLAB_TARGET_AVX512 static void hsums(const F (&v)[N], float* out) {
    static_assert(N <= 16, "one reduction of 16");
    F w[16];  // w[4n + m] = v[4m + n], so that lane i of the reduction is the sum of v[i]
    KVLAB_UNROLL
    for (int n = 0; n < 4; ++n) {
      KVLAB_UNROLL
      for (int m = 0; m < 4; ++m) w[4 * n + m] = 4 * m + n < N ? v[4 * m + n] : zero();
    }
    alignas(64) float tmp[16];
    _mm512_store_ps(tmp, reduce16(w));
    KVLAB_UNROLL
    for (int i = 0; i < N; ++i) out[i] = tmp[i];
  }

  // The sum of the 16 lanes by the same tree as reduce16.
  KVLAB_TARGET_AVX512 static float hsum(F v) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
  }
};

}  // namespace kvlab
#endif  // KVLAB_X86
