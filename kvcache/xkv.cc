#include "kvcache/xkv.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>

#include "base/check.h"

namespace kvlab {
namespace {

using MatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

MatrixD to_double(const float* x, int64_t tokens, int width, int64_t ldx) {
  KVLAB_CHECK(tokens >= 1 && width >= 1 && ldx >= width);
  MatrixD m(tokens, width);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int c = 0; c < width; ++c) m(t, c) = x[t * ldx + c];
  }
  return m;
}

// Eigenvalues of X^T X, largest first, and the matching eigenvectors as columns.
struct Spectrum {
  Eigen::VectorXd values;
  Eigen::MatrixXd vectors;
};

Spectrum gram_spectrum(const MatrixD& x) {
  Eigen::MatrixXd gram = Eigen::MatrixXd::Zero(x.cols(), x.cols());
  gram.selfadjointView<Eigen::Lower>().rankUpdate(x.transpose());
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> solver(gram.selfadjointView<Eigen::Lower>());
  KVLAB_CHECK(solver.info() == Eigen::Success);
  // Ascending from the solver: reversed. Rounding may leave tiny negative eigenvalues: 0.
  Spectrum s;
  s.values = solver.eigenvalues().reverse().cwiseMax(0.0);
  s.vectors = solver.eigenvectors().rowwise().reverse();
  return s;
}

}  // namespace

LowRankFactors factorize_low_rank(const float* x, int64_t tokens, int width, int64_t ldx, int rank) {
  KVLAB_CHECK(rank >= 1);
  const MatrixD xd = to_double(x, tokens, width, ldx);
  const Spectrum sp = gram_spectrum(xd);
  LowRankFactors f;
  f.tokens = tokens;
  f.width = width;
  f.rank = int(std::min<int64_t>({rank, tokens, width}));
  f.sq_values.assign(sp.values.data(), sp.values.data() + sp.values.size());
  const Eigen::MatrixXd w = sp.vectors.leftCols(f.rank);  // [width, r]
  const Eigen::MatrixXd xw = xd * w;                       // [tokens, r] = U_r S_r
  f.a.resize(size_t(tokens) * f.rank);
  f.b.resize(size_t(f.rank) * width);
  for (int i = 0; i < f.rank; ++i) {
    const double s = std::sqrt(sp.values(i));
    // A = U S^1/2 = X W S^-1/2, B = S^1/2 W^T; a zero component keeps A = X w (= 0), B = w^T.
    const double a_scale = s > 0 ? 1.0 / std::sqrt(s) : 1.0, b_scale = s > 0 ? std::sqrt(s) : 1.0;
    for (int64_t t = 0; t < tokens; ++t) f.a[size_t(t) * f.rank + i] = float(xw(t, i) * a_scale);
    for (int c = 0; c < width; ++c) f.b[size_t(i) * width + c] = float(w(c, i) * b_scale);
  }
  return f;
}

SingularSubspaces top_singular_subspaces(const float* x, int64_t tokens, int width, int64_t ldx, int rank) {
  KVLAB_CHECK(rank >= 1 && rank <= width && rank <= tokens);
  const MatrixD xd = to_double(x, tokens, width, ldx);
  const Spectrum sp = gram_spectrum(xd);
  const Eigen::MatrixXd w = sp.vectors.leftCols(rank);
  const Eigen::MatrixXd xw = xd * w;  // U_r S_r
  SingularSubspaces s;
  s.left.assign(size_t(tokens) * rank, 0.0);
  s.right.resize(size_t(width) * rank);
  for (int i = 0; i < rank; ++i) {
    const double sv = std::sqrt(sp.values(i));
    for (int64_t t = 0; sv > 0 && t < tokens; ++t) s.left[size_t(i) * tokens + t] = xw(t, i) / sv;
    for (int c = 0; c < width; ++c) s.right[size_t(i) * width + c] = w(c, i);
  }
  return s;
}

double subspace_overlap(const std::vector<double>& u, const std::vector<double>& v, int64_t dim, int rank) {
  KVLAB_CHECK(u.size() == size_t(dim) * rank && v.size() == u.size());
  double sum = 0;
  for (int i = 0; i < rank; ++i) {
    for (int j = 0; j < rank; ++j) {
      double dot = 0;
      for (int64_t c = 0; c < dim; ++c) dot += u[size_t(i) * dim + c] * v[size_t(j) * dim + c];
      sum += dot * dot;
    }
  }
  return sum / rank;
}

}  // namespace kvlab
