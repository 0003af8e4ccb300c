// What every SIMD kernel file includes: the x86 intrinsics and the per-function target
// attributes that let one binary carry AVX2 and AVX-512 code and pick at run time
// (kernels/cpu/cpu_features.h). The library itself is compiled for baseline x86-64.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
// GCC 12's AVX-512 headers initialise their "undefined" vectors from themselves, and
// -W(maybe-)uninitialized then fires on every inlined intrinsic (GCC bug 105593, fixed in GCC
// 13). The diagnostic is attributed to the header's lines, so silencing it around the include
// is enough.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#pragma GCC diagnostic pop
#define KVLAB_X86 1
#define KVLAB_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define KVLAB_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#endif
