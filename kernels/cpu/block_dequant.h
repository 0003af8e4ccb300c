// Blocks of a BlockMatrix (matmul.h) -> f32: the scalar reference and the version written once
// over the vector width V (simd_vec.h), which isa_entry.inc compiles for each ISA. Every version
// gives the same floats (d * q is exact, matmul.h); tests/matmul_test.cc checks it bit for bit.
// GCC's vectorizer, left with the scalar loops, converted Q4_1 nibbles element by element (3.6x
// slower than Q8_0 per block), and its generic vectors did the same for both formats.
#pragma once

#include <cstdint>
#include <utility>

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
// Vector U (elements [32 b + U * kLanes, + kLanes)) of block b of a row of blocks in format Fmt,
// as f32: the values of dequantize_blocks_scalar. The matmul's decode path reads its weights
// through this, in registers; dequantize_blocks_simd below writes them out. U is a template
// argument so that the vectors of one block share their code load and scale broadcasts.
template <class V, BlockFormat Fmt, int U>
inline typename V::F block_vec(const uint8_t* codes, const float* scales, int64_t b) {
  constexpr int j = U * V::kLanes;  // first element within the block
  static_assert(j < kWeightBlock);
  if constexpr (Fmt == BlockFormat::kQ4_1) {
    // Element j < 16 of a block is the low nibble of byte j, element 16 + j its high nibble.
    return V::fma(V::set1(scales[2 * b]), V::template load_u4<j < 16 ? 0 : 4>(codes + 16 * b + j % 16),
                  V::set1(scales[2 * b + 1]));
  } else {
    return V::mul(V::set1(scales[b]), V::load_i8(reinterpret_cast<const int8_t*>(codes) + 32 * b + j));
  }
}

// Calls f.template operator()<U>() for U = 0 .. N-1, in order.
template <int N, class F>
inline void for_each_index(F&& f) {
  [&]<int... U>(std::integer_sequence<int, U...>) { (f.template operator()<U>(), ...); }(std::make_integer_sequence<int, N>{});
}

template <class V, BlockFormat Fmt>
void dequantize_blocks_as(const uint8_t* codes, const float* scales, int64_t n_blocks, float* out) {
  for (int64_t b = 0; b < n_blocks; ++b) {
    for_each_index<kWeightBlock / V::kLanes>(
        [&]<int U>() { V::store(out + 32 * b + U * V::kLanes, block_vec<V, Fmt, U>(codes, scales, b)); });
  }
}

template <class V>
void dequantize_blocks_simd(BlockFormat f, const uint8_t* codes, const float* scales, int64_t n_blocks,
                            float* out) {
  if (f == BlockFormat::kQ4_1) {
    dequantize_blocks_as<V, BlockFormat::kQ4_1>(codes, scales, n_blocks, out);
  } else {
    dequantize_blocks_as<V, BlockFormat::kQ8_0>(codes, scales, n_blocks, out);
  }
}
#endif  // KVLAB_X86

}  // namespace
}  // namespace kvlab
