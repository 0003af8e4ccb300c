#include "kernels/cpu/convert.h"

#include "base/check.h"
#include "base/half.h"
#include "kernels/cpu/simd.h"

namespace kvlab {
namespace {

void f16_to_f32_scalar(const uint16_t* s, float* d, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = kvlab::f16_to_f32(s[i]);
}
void f32_to_f16_scalar(const float* s, uint16_t* d, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = kvlab::f32_to_f16(s[i]);
}
void bf16_to_f32_scalar(const uint16_t* s, float* d, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = kvlab::bf16_to_f32(s[i]);
}
void f32_to_bf16_scalar(const float* s, uint16_t* d, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = kvlab::f32_to_bf16(s[i]);
}

#ifdef KVLAB_X86
// vcvtph2ps / vcvtps2ph (F16C and AVX-512F) convert exactly as IEEE says, with round to
// nearest even when asked; tails go through the scalar code, which gives the same bits.
KVLAB_TARGET_AVX2 void f16_to_f32_avx2(const uint16_t* s, float* d, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
  }
  f16_to_f32_scalar(s + i, d + i, n - i);
}
KVLAB_TARGET_AVX2 void f32_to_f16_avx2(const float* s, uint16_t* d, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  f32_to_f16_scalar(s + i, d + i, n - i);
}
KVLAB_TARGET_AVX2 void bf16_to_f32_avx2(const uint16_t* s, float* d, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
    _mm256_storeu_ps(d + i, _mm256_castsi256_ps(_mm256_slli_epi32(h, 16)));
  }
  bf16_to_f32_scalar(s + i, d + i, n - i);
}
KVLAB_TARGET_AVX512 void f16_to_f32_avx512(const uint16_t* s, float* d, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(d + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i))));
  }
  f16_to_f32_scalar(s + i, d + i, n - i);
}
KVLAB_TARGET_AVX512 void f32_to_f16_avx512(const float* s, uint16_t* d, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  f32_to_f16_scalar(s + i, d + i, n - i);
}
KVLAB_TARGET_AVX512 void bf16_to_f32_avx512(const uint16_t* s, float* d, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
    _mm512_storeu_ps(d + i, _mm512_castsi512_ps(_mm512_slli_epi32(h, 16)));
  }
  bf16_to_f32_scalar(s + i, d + i, n - i);
}
#endif

}  // namespace

void convert_f16_to_f32_isa(Isa isa, const uint16_t* s, float* d, size_t n) {
  KVLAB_CHECK(int(isa) <= int(detected_isa()));
#ifdef KVLAB_X86
  if (isa == Isa::kAvx512) return f16_to_f32_avx512(s, d, n);
  if (isa == Isa::kAvx2) return f16_to_f32_avx2(s, d, n);
#endif
  f16_to_f32_scalar(s, d, n);
}

void convert_f32_to_f16_isa(Isa isa, const float* s, uint16_t* d, size_t n) {
  KVLAB_CHECK(int(isa) <= int(detected_isa()));
#ifdef KVLAB_X86
  if (isa == Isa::kAvx512) return f32_to_f16_avx512(s, d, n);
  if (isa == Isa::kAvx2) return f32_to_f16_avx2(s, d, n);
#endif
  f32_to_f16_scalar(s, d, n);
}

void convert_bf16_to_f32_isa(Isa isa, const uint16_t* s, float* d, size_t n) {
  KVLAB_CHECK(int(isa) <= int(detected_isa()));
#ifdef KVLAB_X86
  if (isa == Isa::kAvx512) return bf16_to_f32_avx512(s, d, n);
  if (isa == Isa::kAvx2) return bf16_to_f32_avx2(s, d, n);
#endif
  bf16_to_f32_scalar(s, d, n);
}

// Rounding f32 to bf16 is integer arithmetic on the bits; the scalar loop is already cheap next
// to the writes it feeds (one per token), so it serves every ISA.
void convert_f32_to_bf16_isa(Isa isa, const float* s, uint16_t* d, size_t n) {
  KVLAB_CHECK(int(isa) <= int(detected_isa()));
  f32_to_bf16_scalar(s, d, n);
}

void convert_f16_to_f32(const uint16_t* s, float* d, size_t n) { convert_f16_to_f32_isa(active_isa(), s, d, n); }
void convert_f32_to_f16(const float* s, uint16_t* d, size_t n) { convert_f32_to_f16_isa(active_isa(), s, d, n); }
void convert_bf16_to_f32(const uint16_t* s, float* d, size_t n) { convert_bf16_to_f32_isa(active_isa(), s, d, n); }
void convert_f32_to_bf16(const float* s, uint16_t* d, size_t n) { convert_f32_to_bf16_isa(active_isa(), s, d, n); }

}  // namespace kvlab
