// xKV's factorization on the GPU (the CPU one: kvcache/xkv.h, same definition and scaling):
// X [tokens, width] -> A [tokens, r] and B [r, width] with X ~ A B, the best rank-r
// approximation, A = U_r S_r^1/2, B = S_r^1/2 W_r^T. The Gram matrix X^T X is formed by cuBLAS
// (dsyrk, in double), its eigendecomposition by cuSOLVER (dsyevd), A = X W_r by cuBLAS (dgemm);
// a kernel applies the scaling and writes f32. Components with s_i = 0 keep A = 0 and B = w_i^T
// as on the CPU. Eigenvector signs are the solver's: A and B may differ from the CPU's by the
// sign of a component, their product does not.
#pragma once

#include <cstdint>
#include <vector>

#include "base/status.h"
#include "kernels/cuda/device.h"

namespace kvlab::cuda {

struct DeviceLowRank {
  int64_t tokens = 0;
  int width = 0;
  int rank = 0;                   // min(r, tokens, width)
  DeviceBuffer a;                 // f32 [tokens, rank]
  DeviceBuffer b;                 // f32 [rank, width]
  std::vector<double> sq_values;  // all eigenvalues of X^T X (s_i^2), largest first, [width]
};

// x: device f32 [tokens, width], rows ldx floats apart. Synchronous: returns when the factors are
// written. Errors: shapes (tokens, width, rank >= 1, ldx >= width), the libraries' failures.
StatusOr<DeviceLowRank> factorize_low_rank(const float* x, int64_t tokens, int width, int64_t ldx, int rank);

}  // namespace kvlab::cuda
