// The f32 decode-attention kernels (kv_dense.h, kv_int_f32.h) on AVX-512 (F, BW, VL, DQ): 16 lanes,
// register tiles of 4 rows x 4. The integer dot products for 2/3/4-bit codes (VNNI) are in
// kv_int_vnni.cc.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/kv_kernels_internal.h"
#include "kernels/cpu/simd_vec.h"

#ifdef KVLAB_X86
// The same feature set as KVLAB_TARGET_AVX512 (simd.h): the kernels below inline Vec16's members.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#include "kernels/cpu/kv_dense.h"
#include "kernels/cpu/kv_int_f32.h"

namespace kvlab::avx512 {

void scores(const KvBlock& k, const float* q, int rows, float* s) {
  scores_simd<Vec16>(k, q, rows, s, vnni_scores_take, vnni_scores);
}

void accumulate(const KvBlock& v, const float* p, int rows, float* acc) {
  accumulate_simd<Vec16>(v, p, rows, acc, vnni_accumulate_take, vnni_accumulate);
}

}  // namespace kvlab::avx512
#pragma GCC pop_options
#endif  // KVLAB_X86
