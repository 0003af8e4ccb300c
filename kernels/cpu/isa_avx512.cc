// The kernels written once over the vector width (isa_entry.inc), compiled for AVX-512 (F, BW, VL, DQ): 16 lanes,
// register tiles of 4 rows x 4. The integer dot products for 2/3/4-bit codes are in kv_int_vnni.cc.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kernels/cpu/kv_kernels_internal.h"
#include "kernels/cpu/simd_vec.h"

#ifdef KVLAB_X86
// The feature set of KVLAB_TARGET_AVX512 (simd.h): the kernels inline Vec16's members.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#define KVLAB_ISA_NS avx512
#define KVLAB_ISA_VEC Vec16
#define KVLAB_ISA_INT(name) vnni_##name
#include "kernels/cpu/isa_entry.inc"
#pragma GCC pop_options
#endif  // KVLAB_X86
