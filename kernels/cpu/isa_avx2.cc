// The kernels written once over the vector width (isa_entry.inc), compiled for AVX2 + FMA + F16C: 8 lanes,
// register tiles of 4 rows x 2. The integer dot products for 2/3/4-bit codes are in kv_int_avx2.cc.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kernels/cpu/kv_kernels_internal.h"
#include "kernels/cpu/simd_vec.h"

#ifdef KVLAB_X86
// The feature set of KVLAB_TARGET_AVX2 (simd.h): the kernels inline Vec8's members.
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define KVLAB_ISA_NS avx2
#define KVLAB_ISA_VEC Vec8
#define KVLAB_ISA_INT(name) avx2_int_##name
#include "kernels/cpu/isa_entry.inc"
#pragma GCC pop_options
#endif  // KVLAB_X86
