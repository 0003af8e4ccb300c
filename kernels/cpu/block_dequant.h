// Blocks of a BlockMatrix (matmul.h) -> f32: the scalar reference and the version written once
// over the vector width V (simd_vec.h), which isa_entry.inc compiles for each ISA. Every version
// gives the same floats (d * q is exact, matmul.h); tests/matmul_test.cc checks it bit for bit.
// GCC's vectorizer, left with the scalar loops, converted Q4_1 nibbles element by element (3.6x
// slower than Q8_0 per block), and its generic vectors did the same for both formats.
#pragma once

#include <cstdint>

#include "kernels/cpu/kv_kernels_internal.h"
#include "kernels/cpu/matmul.h"

namespace kvlab {
namespace {

// out[32 * n_blocks] = the n_blocks blocks whose codes start at `codes` and scales at `scales`.
inline void dequantize_blocks_scalar(BlockFormat f, const uint8_t* codes, const float* scales, int64_t n_blocks,
                                     float* out) {
  for (int64_t b = 0; b < n_blocks; ++b) {
    float* y = out + 32 * b;
    if (f == BlockFormat::kQ4_1) {
      const uint8_t* q = codes + 16 * b;
      const float d = scales[2 * b], m = scales[2 * b + 1];
      for (int j = 0; j < 16; ++j) {
        y[j] = d * float(q[j] & 0x0f) + m;
        y[j + 16] = d * float(q[j] >> 4) + m;
      }
    } else {
      const int8_t* q = reinterpret_cast<const int8_t*>(codes) + 32 * b;
      for (int j = 0; j < 32; ++j) y[j] = scales[b] * float(q[j]);
    }
  }
}

#ifdef KVLAB_X86
template <class V>
void dequantize_blocks_simd(BlockFormat f, const uint8_t* codes, const float* scales, int64_t n_blocks,
                            float* out) {
  constexpr int L = V::kLanes;
  for (int64_t b = 0; b < n_blocks; ++b) {
    float* y = out + 32 * b;
    if (f == BlockFormat::kQ4_1) {
      // The block's 32 nibbles as bytes, in element order.
      alignas(16) uint8_t n[32];
      const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16 * b));
      const __m128i low = _mm_set1_epi8(0x0f);
      _mm_store_si128(reinterpret_cast<__m128i*>(n), _mm_and_si128(q, low));
      _mm_store_si128(reinterpret_cast<__m128i*>(n + 16), _mm_and_si128(_mm_srli_epi16(q, 4), low));
      const typename V::F d = V::set1(scales[2 * b]), m = V::set1(scales[2 * b + 1]);
      KVLAB_UNROLL
      for (int j = 0; j < 32; j += L) V::store(y + j, V::fma(d, V::load_u8(n + j), m));
    } else {
      const int8_t* q = reinterpret_cast<const int8_t*>(codes) + 32 * b;
      const typename V::F d = V::set1(scales[b]);
      KVLAB_UNROLL
      for (int j = 0; j < 32; j += L) V::store(y + j, V::mul(d, V::load_i8(q + j)));
    }
  }
}
#endif  // KVLAB_X86

}  // namespace
}  // namespace kvlab
