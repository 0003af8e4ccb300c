// KVLAB_HD marks the small scalar functions that are compiled for the host and, under nvcc, for
// the GPU as well (the f16 conversions, the packed formats' codecs), so that both sides run one
// source and the host tests check what the GPU computes.
#pragma once

#if defined(__CUDACC__)
#define KVLAB_HD __host__ __device__ __forceinline__
#else
#define KVLAB_HD inline
#endif
