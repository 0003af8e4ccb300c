// The f32 decode-attention kernels (kv_dense.h, kv_int_f32.h) on AVX2 + FMA + F16C: 8 lanes,
// register tiles of 4 rows x 2. The integer dot products for 2/3/4-bit codes are in
// kv_int_avx2.cc.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/kv_kernels_internal.h"
#include "kernels/cpu/simd_vec.h"

#ifdef KVLAB_X86
// The same feature set as KVLAB_TARGET_AVX2 (simd.h): the kernels below inline Vec8's members.
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include "kernels/cpu/kv_dense.h"
#include "kernels/cpu/kv_int_f32.h"

namespace kvlab::avx2 {

void scores(const KvBlock& k, const float* q, int rows, float* s) {
  scores_simd<Vec8>(k, q, rows, s, avx2_int_scores_take, avx2_int_scores);
}

void accumulate(const KvBlock& v, const float* p, int rows, float* acc) {
  accumulate_simd<Vec8>(v, p, rows, acc, avx2_int_accumulate_take, avx2_int_accumulate);
}

}  // namespace kvlab::avx2
#pragma GCC pop_options
#endif  // KVLAB_X86
