// xKV's factorization (../shared/research/algorithms.md section 2): the pre-RoPE keys (or the
// values) of G adjacent layers, concatenated horizontally, X = [X_l0 | ... | X_l0+G-1]
// (tokens x G * kv_dim), are replaced by a shared token basis A (tokens x r) and per-layer blocks
// B_l (r x kv_dim) with X_l ~ A B_l: the best rank-r approximation of X (Eckart-Young).
//
// Method: Gram matrix M = X^T X and its eigendecomposition (Eigen's SelfAdjointEigenSolver), in
// double; W_r = the eigenvectors of the r largest eigenvalues s_i^2 (s_i: singular values of X).
// The singular values are split evenly between the factors, A = X W_r S_r^-1/2 = U_r S_r^1/2 and
// B = S_r^1/2 W_r^T, so that both have entries of similar range (f16 or integer storage).
// Components with s_i = 0 (X of rank below r) keep A = X w_i = 0 and B = w_i^T. The rank is
// guarded: r_eff = min(r, tokens, width). Cost: tokens * width^2 for M, width^3 for the
// eigensolver (no dependence on r).
#pragma once

#include <cstdint>
#include <vector>

namespace kvlab {

struct LowRankFactors {
  int64_t tokens = 0;
  int width = 0;
  int rank = 0;                   // r_eff
  std::vector<float> a;           // [tokens, rank]
  std::vector<float> b;           // [rank, width]
  std::vector<double> sq_values;  // all eigenvalues of X^T X (s_i^2), largest first, [width]
};

// X: [tokens, width] f32, rows ldx floats apart. REQUIRES tokens >= 1, width >= 1, rank >= 1.
LowRankFactors factorize_low_rank(const float* x, int64_t tokens, int width, int64_t ldx, int rank);

// The top-`rank` singular vectors of X, in double, column after column: left (token space,
// [rank][tokens], what xKV's shared basis A spans) and right (channel space, [rank][width]).
// Left vectors of zero singular values are left 0.
struct SingularSubspaces {
  std::vector<double> left, right;
};
SingularSubspaces top_singular_subspaces(const float* x, int64_t tokens, int width, int64_t ldx, int rank);

// How much two r-dimensional subspaces of R^dim share: ||U^T V||_F^2 / r, in [0, 1] (1: the same
// subspace; r / dim on average for random ones). u, v: [r][dim] orthonormal columns.
double subspace_overlap(const std::vector<double>& u, const std::vector<double>& v, int64_t dim, int rank);

}  // namespace kvlab
