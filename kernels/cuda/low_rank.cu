// factorize_low_rank of low_rank.h: cuBLAS and cuSOLVER in double, column-major views of the
// row-major arrays (a row-major [rows, cols] array is a column-major [cols, rows] one).
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/low_rank.h"

namespace kvlab::cuda {
namespace {

Status cublas_ok(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return Status::Ok();
  return internal_error(std::string(what) + ": cuBLAS status " + std::to_string(int(s)));
}

Status cusolver_ok(cusolverStatus_t s, const char* what) {
  if (s == CUSOLVER_STATUS_SUCCESS) return Status::Ok();
  return internal_error(std::string(what) + ": cuSOLVER status " + std::to_string(int(s)));
}

// The libraries' handles, destroyed with their owner.
struct Handles {
  cublasHandle_t blas = nullptr;
  cusolverDnHandle_t solver = nullptr;
  ~Handles() {
    if (blas) cublasDestroy(blas);
    if (solver) cusolverDnDestroy(solver);
  }
};

// xd [tokens, width] double, packed (row t at t * width) from x (rows ldx floats apart).
__global__ void widen_kernel(const float* x, int64_t tokens, int width, int64_t ldx, double* xd) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= tokens * width) return;
  xd[i] = x[(i / width) * ldx + i % width];
}

// Component i (largest first) is eigenvector column width - 1 - i of vecs (column-major
// [width, width], ascending) and row r - 1 - i of xw (column-major [r, tokens]: X W_r of the r
// largest, ascending). a [tokens, r], b [r, width], f32, scaled by s_i^-1/2 and s_i^1/2.
__global__ void scale_kernel(const double* vecs, const double* values, const double* xw, int64_t tokens, int width,
                             int r, float* a, float* b) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t n_a = tokens * r;
  if (i < n_a) {
    const int64_t t = i / r;
    const int k = int(i % r);
    const double s = sqrt(fmax(values[width - 1 - k], 0.0));
    a[i] = float(xw[t * r + (r - 1 - k)] * (s > 0 ? 1.0 / sqrt(s) : 1.0));
  } else if (i < n_a + int64_t(r) * width) {
    const int64_t j = i - n_a;
    const int k = int(j / width), c = int(j % width);
    const double s = sqrt(fmax(values[width - 1 - k], 0.0));
    b[j] = float(vecs[int64_t(width - 1 - k) * width + c] * (s > 0 ? sqrt(s) : 1.0));
  }
}

}  // namespace

StatusOr<DeviceLowRank> factorize_low_rank(const float* x, int64_t tokens, int width, int64_t ldx, int rank) {
  if (tokens < 1 || tokens > INT32_MAX || width < 1 || rank < 1 || ldx < width || !x) {  // cuBLAS takes int sizes
    return invalid_argument("GPU low-rank factorization: " + std::to_string(tokens) + " tokens of width " +
                            std::to_string(width) + " (rows " + std::to_string(ldx) + " apart), rank " + std::to_string(rank));
  }
  DeviceLowRank f;
  f.tokens = tokens, f.width = width;
  f.rank = int(std::min<int64_t>({rank, tokens, width}));
  const int r = f.rank;
  Handles h;
  KVLAB_RETURN_IF_ERROR(cublas_ok(cublasCreate(&h.blas), "cublasCreate"));
  KVLAB_RETURN_IF_ERROR(cusolver_ok(cusolverDnCreate(&h.solver), "cusolverDnCreate"));

  auto xd = DeviceBuffer::allocate(size_t(tokens) * width * sizeof(double));
  auto gram = DeviceBuffer::allocate(size_t(width) * width * sizeof(double));
  auto values = DeviceBuffer::allocate(size_t(width) * sizeof(double));
  auto xw = DeviceBuffer::allocate(size_t(tokens) * r * sizeof(double));
  auto info = DeviceBuffer::allocate(sizeof(int));
  for (const auto* b : {&xd, &gram, &values, &xw, &info}) {
    if (!b->ok()) return b->status();
  }
  double* X = static_cast<double*>(xd->data());
  double* M = static_cast<double*>(gram->data());
  double* W = static_cast<double*>(values->data());
  const int64_t n = tokens * width;
  widen_kernel<<<unsigned((n + 255) / 256), 256>>>(x, tokens, width, ldx, X);
  KVLAB_RETURN_IF_ERROR(last_error("widen kernel launch"));

  // M = X^T X: X row-major is Xc = X^T column-major [width, tokens], and M = Xc Xc^T (lower).
  const double one = 1.0, zero = 0.0;
  KVLAB_RETURN_IF_ERROR(cublas_ok(cublasDsyrk(h.blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, width, int(tokens), &one, X,
                                              width, &zero, M, width),
                                  "cublasDsyrk"));
  int lwork = 0;
  KVLAB_RETURN_IF_ERROR(cusolver_ok(cusolverDnDsyevd_bufferSize(h.solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER,
                                                                width, M, width, W, &lwork),
                                    "cusolverDnDsyevd_bufferSize"));
  auto work = DeviceBuffer::allocate(std::max<size_t>(size_t(lwork), 1) * sizeof(double));
  if (!work.ok()) return work.status();
  KVLAB_RETURN_IF_ERROR(cusolver_ok(cusolverDnDsyevd(h.solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, width, M,
                                                     width, W, static_cast<double*>(work->data()), lwork,
                                                     static_cast<int*>(info->data())),
                                    "cusolverDnDsyevd"));
  int solver_info = 0;
  KVLAB_RETURN_IF_ERROR(info->download(&solver_info, sizeof(int)));
  if (solver_info != 0) return internal_error("cusolverDnDsyevd: info " + std::to_string(solver_info));

  // xw = W_r^T Xc: column-major [r, tokens] (row-major [tokens, r]), W_r the last r columns of M.
  KVLAB_RETURN_IF_ERROR(cublas_ok(cublasDgemm(h.blas, CUBLAS_OP_T, CUBLAS_OP_N, r, int(tokens), width, &one,
                                              M + int64_t(width - r) * width, width, X, width, &zero,
                                              static_cast<double*>(xw->data()), r),
                                  "cublasDgemm"));
  auto a = DeviceBuffer::allocate(size_t(tokens) * r * sizeof(float));
  auto b = DeviceBuffer::allocate(size_t(r) * width * sizeof(float));
  if (!a.ok()) return a.status();
  if (!b.ok()) return b.status();
  const int64_t outputs = tokens * r + int64_t(r) * width;
  scale_kernel<<<unsigned((outputs + 255) / 256), 256>>>(M, W, static_cast<const double*>(xw->data()), tokens, width, r,
                                                         static_cast<float*>(a->data()), static_cast<float*>(b->data()));
  KVLAB_RETURN_IF_ERROR(last_error("scale kernel launch"));
  KVLAB_RETURN_IF_ERROR(synchronize("GPU low-rank factorization"));
  std::vector<double> ascending(static_cast<size_t>(width));
  KVLAB_RETURN_IF_ERROR(values->download(ascending.data(), ascending.size() * sizeof(double)));
  f.sq_values.resize(size_t(width));
  for (int i = 0; i < width; ++i) f.sq_values[size_t(i)] = std::max(ascending[size_t(width - 1 - i)], 0.0);
  f.a = std::move(*a);
  f.b = std::move(*b);
  return StatusOr<DeviceLowRank>(std::move(f));
}

}  // namespace kvlab::cuda
