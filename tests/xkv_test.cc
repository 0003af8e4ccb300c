// xKV's factorization (kvcache/xkv.h) against an independent SVD (Eigen's JacobiSVD, a different
// algorithm from the Gram eigendecomposition): the factors are the best rank-r approximation, the
// full rank gives X back, the rank is guarded, and a group of identical layers costs one layer.
#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <cmath>
#include <random>
#include <vector>

#include "kvcache/xkv.h"

namespace kvlab {
namespace {

// [tokens, width] with singular values decaying like 0.8^i, rows `ld` floats apart.
std::vector<float> decaying(int tokens, int width, int64_t ld, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd;
  Eigen::MatrixXd u = Eigen::MatrixXd::NullaryExpr(tokens, width, [&] { return nd(rng); });
  Eigen::MatrixXd v = Eigen::MatrixXd::NullaryExpr(width, width, [&] { return nd(rng); });
  Eigen::VectorXd s(width);
  for (int i = 0; i < width; ++i) s(i) = 10.0 * std::pow(0.8, i);
  const Eigen::MatrixXd x = u * s.asDiagonal() * v;
  std::vector<float> out(size_t(tokens) * ld, 1e30f);  // padding that must not be read
  for (int t = 0; t < tokens; ++t) {
    for (int c = 0; c < width; ++c) out[size_t(t) * ld + c] = float(x(t, c));
  }
  return out;
}

Eigen::MatrixXd as_matrix(const std::vector<float>& x, int tokens, int width, int64_t ld) {
  Eigen::MatrixXd m(tokens, width);
  for (int t = 0; t < tokens; ++t) {
    for (int c = 0; c < width; ++c) m(t, c) = x[size_t(t) * ld + c];
  }
  return m;
}

Eigen::MatrixXd product(const LowRankFactors& f) {
  Eigen::MatrixXd a(f.tokens, f.rank), b(f.rank, f.width);
  for (int64_t t = 0; t < f.tokens; ++t) {
    for (int i = 0; i < f.rank; ++i) a(t, i) = f.a[size_t(t) * f.rank + i];
  }
  for (int i = 0; i < f.rank; ++i) {
    for (int c = 0; c < f.width; ++c) b(i, c) = f.b[size_t(i) * f.width + c];
  }
  return a * b;
}

TEST(XkvFactorization, FactorsAreTheBestRankRApproximation) {
  const int tokens = 60, width = 24;
  const int64_t ld = 27;
  const std::vector<float> x = decaying(tokens, width, ld, 1);
  const Eigen::MatrixXd xm = as_matrix(x, tokens, width, ld);
  const Eigen::JacobiSVD<Eigen::MatrixXd> svd(xm);
  const Eigen::VectorXd s = svd.singularValues();
  const double total = xm.squaredNorm();
  for (int r : {1, 3, 8, 16, 24}) {
    const LowRankFactors f = factorize_low_rank(x.data(), tokens, width, ld, r);
    ASSERT_EQ(f.rank, r);
    ASSERT_EQ(f.sq_values.size(), size_t(width));
    for (int i = 0; i < width; ++i) {
      EXPECT_NEAR(std::sqrt(f.sq_values[size_t(i)]), s(i), 1e-9 * s(0)) << "singular value " << i;
    }
    double optimum = 0;  // Eckart-Young: the dropped singular values
    for (int i = r; i < width; ++i) optimum += s(i) * s(i);
    const double err = (xm - product(f)).squaredNorm();
    // The factors are stored in f32: relative rounding of ~1e-7 on each product term.
    EXPECT_NEAR(err, optimum, 1e-10 * total + 1e-6 * optimum) << "rank " << r;
  }
}

TEST(XkvFactorization, FullRankGivesTheInputBack) {
  const int tokens = 40, width = 16;
  const std::vector<float> x = decaying(tokens, width, width, 2);
  const LowRankFactors f = factorize_low_rank(x.data(), tokens, width, width, width);
  const Eigen::MatrixXd xm = as_matrix(x, tokens, width, width);
  EXPECT_LE((xm - product(f)).cwiseAbs().maxCoeff(), 1e-5 * xm.cwiseAbs().maxCoeff());
}

// r_eff = min(r, tokens, width); an X of lower rank than r (two equal layers) is reproduced with
// finite factors.
TEST(XkvFactorization, RankIsGuarded) {
  const int tokens = 10, width = 24;
  const std::vector<float> x = decaying(tokens, width, width, 3);
  const LowRankFactors f = factorize_low_rank(x.data(), tokens, width, width, 100);
  EXPECT_EQ(f.rank, tokens);
  const Eigen::MatrixXd xm = as_matrix(x, tokens, width, width);
  EXPECT_LE((xm - product(f)).cwiseAbs().maxCoeff(), 1e-5 * xm.cwiseAbs().maxCoeff());
  EXPECT_EQ(factorize_low_rank(x.data(), 5, width, width, 100).rank, 5);
  EXPECT_EQ(factorize_low_rank(x.data(), tokens, 4, width, 100).rank, 4);

  const std::vector<float> y = decaying(tokens, 6, 12, 4);  // [Y | Y]: rank 6 in width 12
  std::vector<float> yy(size_t(tokens) * 12);
  for (int t = 0; t < tokens; ++t) {
    for (int c = 0; c < 12; ++c) yy[size_t(t) * 12 + c] = y[size_t(t) * 12 + c % 6];
  }
  const LowRankFactors g = factorize_low_rank(yy.data(), tokens, 12, 12, 12);
  EXPECT_EQ(g.rank, 10);
  for (float v : g.a) ASSERT_TRUE(std::isfinite(v));
  for (float v : g.b) ASSERT_TRUE(std::isfinite(v));
  const Eigen::MatrixXd ym = as_matrix(yy, tokens, 12, 12);
  EXPECT_LE((ym - product(g)).cwiseAbs().maxCoeff(), 1e-5 * ym.cwiseAbs().maxCoeff());
}

// The cross-layer premise at its extreme: G identical layers [K | K] at rank r lose exactly
// what K alone loses at rank r (relatively), and their subspaces overlap fully.
TEST(XkvFactorization, IdenticalLayersCostOneLayer) {
  const int tokens = 50, width = 12, r = 4;
  const std::vector<float> k = decaying(tokens, width, width, 5);
  std::vector<float> kk(size_t(tokens) * 2 * width);
  for (int t = 0; t < tokens; ++t) {
    for (int c = 0; c < 2 * width; ++c) kk[size_t(t) * 2 * width + c] = k[size_t(t) * width + c % width];
  }
  const LowRankFactors one = factorize_low_rank(k.data(), tokens, width, width, r);
  const LowRankFactors two = factorize_low_rank(kk.data(), tokens, 2 * width, 2 * width, r);
  const Eigen::MatrixXd km = as_matrix(k, tokens, width, width), kkm = as_matrix(kk, tokens, 2 * width, 2 * width);
  const double rel_one = (km - product(one)).norm() / km.norm();
  const double rel_two = (kkm - product(two)).norm() / kkm.norm();
  EXPECT_NEAR(rel_one, rel_two, 1e-6);
  // [K | K] spans the same token subspace as K; K and K with its channels permuted share their
  // token subspace but not their channel subspace.
  const SingularSubspaces sk = top_singular_subspaces(k.data(), tokens, width, width, r);
  const SingularSubspaces skk = top_singular_subspaces(kk.data(), tokens, 2 * width, 2 * width, r);
  EXPECT_NEAR(subspace_overlap(sk.left, skk.left, tokens, r), 1.0, 1e-9);
  EXPECT_NEAR(subspace_overlap(sk.right, sk.right, width, r), 1.0, 1e-9);
  std::vector<float> shuffled(k.size());
  for (int t = 0; t < tokens; ++t) {
    for (int c = 0; c < width; ++c) shuffled[size_t(t) * width + c] = k[size_t(t) * width + (c + 5) % width];
  }
  const SingularSubspaces ss = top_singular_subspaces(shuffled.data(), tokens, width, width, r);
  EXPECT_NEAR(subspace_overlap(sk.left, ss.left, tokens, r), 1.0, 1e-9);
  EXPECT_LT(subspace_overlap(sk.right, ss.right, width, r), 0.9);
}

// Overlap is 1 for the same subspace, 0 for orthogonal ones, and measured for a rotation.
TEST(XkvFactorization, SubspaceOverlap) {
  const int width = 6, r = 2;
  auto basis = [&](std::vector<int> axes) {
    std::vector<double> u(size_t(width) * r, 0.0);
    for (int i = 0; i < r; ++i) u[size_t(i) * width + axes[size_t(i)]] = 1.0;
    return u;
  };
  EXPECT_DOUBLE_EQ(subspace_overlap(basis({0, 1}), basis({1, 0}), width, r), 1.0);
  EXPECT_DOUBLE_EQ(subspace_overlap(basis({0, 1}), basis({2, 3}), width, r), 0.0);
  EXPECT_DOUBLE_EQ(subspace_overlap(basis({0, 1}), basis({0, 3}), width, r), 0.5);
  // Axis 1 turned by 60 degrees towards axis 2: cos^2 = 1/4 of it stays.
  std::vector<double> turned = basis({0, 1});
  turned[size_t(1) * width + 1] = 0.5;
  turned[size_t(1) * width + 2] = std::sqrt(0.75);
  EXPECT_NEAR(subspace_overlap(basis({0, 1}), turned, width, r), (1.0 + 0.25) / 2, 1e-12);
}

}  // namespace
}  // namespace kvlab
