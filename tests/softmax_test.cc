// Validator for kernels/cpu/softmax.h on every ISA the CPU supports: exp accuracy in ulp over a
// dense sweep of the f32 range and at the special values, identical bits for any length and
// alignment; online_softmax_block over several blocks against a one-shot softmax in double,
// masking by positions, fully masked rows, and batch invariance across rows.
#include "kernels/cpu/softmax.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <ostream>
#include <vector>

#include "base/half.h"
#include "kernels/cpu/cpu_features.h"
#include "testing/rng.h"

namespace kvlab {

static void PrintTo(Isa isa, std::ostream* os) { *os << isa_name(isa); }

namespace {

using kvlab::testing::Rng;

constexpr float kInf = std::numeric_limits<float>::infinity();

// |got - exact| in units of the f32 ulp at exact (the spacing of f32 numbers around it; 2^-149
// in the subnormal range).
double ulp_error(float got, double exact) {
  // Beyond the largest float (plus half an ulp) the correctly rounded result is infinity.
  if (std::isinf(got) && std::isinf(float(exact)) && (got > 0) == (exact > 0)) return 0;
  const double a = std::fabs(exact);
  int e;
  std::frexp(a, &e);  // a in [2^(e-1), 2^e)
  const double ulp = std::ldexp(1.0, std::max(e - 24, -149));
  return std::fabs(double(got) - exact) / ulp;
}

class SoftmaxTest : public ::testing::TestWithParam<Isa> {};

TEST_P(SoftmaxTest, ExpUlpSweep) {
  const Isa isa = GetParam();
  // Every 61st f32 between -104 and 89 (about 37 million values, every binade, both signs).
  std::vector<float> x;
  for (uint32_t b = 0; b < f32_bits(89.0f); b += 61) x.push_back(f32_from_bits(b));
  for (uint32_t b = 0x80000000u; b < f32_bits(-104.0f); b += 61) x.push_back(f32_from_bits(b));
  std::vector<float> y = x;
  exp_inplace_isa(isa, y.data(), int64_t(y.size()));
  double worst = 0;
  float worst_x = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double e = ulp_error(y[i], std::exp(double(x[i])));
    if (e > worst) worst = e, worst_x = x[i];
  }
  RecordProperty("max_ulp", std::to_string(worst));
  std::printf("%s: max exp error %.3f ulp at x = %.9g\n", isa_name(isa), worst, worst_x);
  EXPECT_LE(worst, 2.0) << "at x = " << worst_x;
}

TEST_P(SoftmaxTest, ExpSpecialValues) {
  const Isa isa = GetParam();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> x = {0.0f, -0.0f, kInf, -kInf, nan, 88.72283f, 88.7229f, 89.0f, 1000.0f, -87.33654f,
                          -103.0f, -103.98f, -104.0f, -1000.0f, 1.0f, -1.0f,
                          std::numeric_limits<float>::denorm_min()};
  std::vector<float> y = x;
  exp_inplace_isa(isa, y.data(), int64_t(y.size()));
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], 1.0f);
  EXPECT_EQ(y[2], kInf);
  EXPECT_EQ(y[3], 0.0f);
  EXPECT_TRUE(std::isnan(y[4]));
  EXPECT_TRUE(std::isfinite(y[5]));  // just below log(FLT_MAX)
  EXPECT_EQ(y[6], kInf);
  EXPECT_EQ(y[7], kInf);
  EXPECT_EQ(y[8], kInf);
  EXPECT_GT(y[9], 0.0f);
  EXPECT_GT(y[10], 0.0f);  // subnormal results are kept
  EXPECT_EQ(y[12], 0.0f);
  EXPECT_EQ(y[13], 0.0f);
  EXPECT_LE(ulp_error(y[14], std::exp(1.0)), 2.0);
  EXPECT_LE(ulp_error(y[15], std::exp(-1.0)), 2.0);
  EXPECT_EQ(y[16], 1.0f);
}

// The same bits for any length and alignment: every element goes through the same operations.
TEST_P(SoftmaxTest, ExpSameBitsAnyLengthAndOffset) {
  const Isa isa = GetParam();
  Rng rng(3);
  std::vector<float> x(300);
  for (float& v : x) v = 40.0f * rng.uniform();
  std::vector<float> whole = x;
  exp_inplace_isa(isa, whole.data(), int64_t(whole.size()));
  for (int off : {0, 1, 3, 7, 15}) {
    for (int n : {1, 5, 8, 15, 16, 17, 33, 100}) {
      std::vector<float> part(x.begin() + off, x.begin() + off + n);
      exp_inplace_isa(isa, part.data(), n);
      ASSERT_EQ(0, std::memcmp(part.data(), whole.data() + off, sizeof(float) * n)) << off << " " << n;
    }
  }
}

// Streams blocks of scores through online_softmax_block, accumulating p * v in double, and
// compares softmax(s) v with the one-shot result.
TEST_P(SoftmaxTest, OnlineEqualsOneShot) {
  const Isa isa = GetParam();
  const int d = 5;
  for (int total : {1, 17, 97, 300}) {
    for (int block : {1, 16, 33, 128}) {
      for (int rows : {1, 3, 8}) {
        Rng rng(uint64_t(total) * 131 + block * 7 + rows);
        std::vector<float> s(size_t(rows) * total), v(size_t(total) * d);
        for (int r = 0; r < rows; ++r) {
          for (int j = 0; j < total; ++j) s[r * total + j] = 8.0f * rng.uniform() + 0.05f * float(j);
        }
        for (float& x : v) x = rng.uniform();
        std::vector<float> m(rows, -kInf), l(rows, 0.0f), acc(size_t(rows) * d, 0.0f);
        for (int b0 = 0; b0 < total; b0 += block) {
          const int n = std::min(block, total - b0);
          std::vector<float> sb(size_t(rows) * n);
          for (int r = 0; r < rows; ++r) std::copy_n(&s[r * total + b0], n, &sb[r * n]);
          online_softmax_block_isa(isa, sb.data(), rows, n, nullptr, b0, nullptr, m.data(), l.data(), acc.data(), d);
          for (int r = 0; r < rows; ++r) {
            for (int c = 0; c < d; ++c) {
              double a = acc[r * d + c];
              for (int j = 0; j < n; ++j) a += double(sb[r * n + j]) * v[(b0 + j) * d + c];
              acc[r * d + c] = float(a);
            }
          }
        }
        for (int r = 0; r < rows; ++r) {
          double mx = -INFINITY;
          for (int j = 0; j < total; ++j) mx = std::max(mx, double(s[r * total + j]));
          EXPECT_EQ(m[r], float(mx));
          double den = 0;
          std::vector<double> w(total);
          for (int j = 0; j < total; ++j) den += (w[j] = std::exp(double(s[r * total + j]) - mx));
          // Each probability is exp(s - m) of the f32 difference (rounding u |s - m|) within
          // 1.2 ulp (< 2^-22 relative), times at most `blocks` rescale factors, each within 2^-22
          // and rounded once more (u): relative error eta per weight. l adds the sums' rounding
          // (u per term and block). o = acc / l moves by at most eta / (1 - eta) max|v - o|
          // plus the f32 roundings of acc (u per block) and of the division.
          const int blocks = (total + block - 1) / block;
          double smax = 0;
          for (int j = 0; j < total; ++j) smax = std::max(smax, std::fabs(double(s[r * total + j]) - mx));
          const double u = std::ldexp(1.0, -24);
          const double eta = 2 * u * smax + (blocks + 1) * (std::ldexp(1.0, -22) + u);
          EXPECT_NEAR(l[r], den, (eta + (total + blocks + 2) * u) * den);
          for (int c = 0; c < d; ++c) {
            double num = 0, vdev = 0;
            for (int j = 0; j < total; ++j) num += w[j] * v[j * d + c];
            for (int j = 0; j < total; ++j) vdev = std::max(vdev, std::fabs(v[j * d + c] - num / den));
            const double o = num / den;
            const double budget = eta / (1 - eta) * vdev + (total + blocks + 4) * u * (std::fabs(o) + vdev) + (blocks + 2) * u;
            EXPECT_NEAR(acc[r * d + c] / l[r], o, budget);
          }
        }
      }
    }
  }
}

TEST_P(SoftmaxTest, MaskingByPositions) {
  const Isa isa = GetParam();
  const int rows = 4, n = 37, d = 3;
  Rng rng(5);
  std::vector<float> s0(size_t(rows) * n);
  for (float& x : s0) x = 4.0f * rng.uniform();
  std::vector<int32_t> key_pos(n);
  for (int j = 0; j < n; ++j) key_pos[j] = 100 + 2 * j;
  const std::vector<int32_t> row_pos = {99, 100, 130, 1000};  // none, one, some, all visible
  for (bool explicit_keys : {false, true}) {
    std::vector<float> s = s0;
    std::vector<float> m = {-kInf, 2.0f, -kInf, -kInf}, l = {0.0f, 3.0f, 0.0f, 0.0f};
    std::vector<float> acc(size_t(rows) * d, 1.0f);
    const int32_t first_pos = 100;
    std::vector<int32_t> kp = key_pos;
    if (!explicit_keys) {
      for (int j = 0; j < n; ++j) kp[j] = first_pos + j;
    }
    online_softmax_block_isa(isa, s.data(), rows, n, explicit_keys ? key_pos.data() : nullptr, first_pos,
                             row_pos.data(), m.data(), l.data(), acc.data(), d);
    // Row 0 sees nothing: unchanged state, zero probabilities.
    EXPECT_EQ(m[0], -kInf);
    EXPECT_EQ(l[0], 0.0f);
    for (int c = 0; c < d; ++c) EXPECT_EQ(acc[c], 1.0f);
    for (int r = 0; r < rows; ++r) {
      double mx = r == 1 ? 2.0 : -INFINITY;
      for (int j = 0; j < n; ++j) {
        if (kp[j] <= row_pos[r]) mx = std::max(mx, double(s0[r * n + j]));
      }
      for (int j = 0; j < n; ++j) {
        const bool vis = kp[j] <= row_pos[r];
        if (!vis) {
          EXPECT_EQ(s[r * n + j], 0.0f) << r << " " << j;
        } else {
          EXPECT_NEAR(s[r * n + j], std::exp(s0[r * n + j] - mx), 3e-7) << r << " " << j;
        }
      }
    }
  }
}

TEST_P(SoftmaxTest, RowsAreIndependent) {
  const Isa isa = GetParam();
  const int rows = 9, n = 45, d = 19;
  Rng rng(9);
  std::vector<float> s(size_t(rows) * n), acc(size_t(rows) * d);
  for (float& x : s) x = 10.0f * rng.uniform();
  for (float& x : acc) x = rng.uniform();
  std::vector<float> m(rows), l(rows);
  for (int r = 0; r < rows; ++r) m[r] = 3.0f * rng.uniform(), l[r] = 1.0f + std::fabs(rng.uniform());
  std::vector<int32_t> row_pos(rows);
  for (int r = 0; r < rows; ++r) row_pos[r] = 10 + 5 * r;
  std::vector<float> s_all = s, m_all = m, l_all = l, acc_all = acc;
  online_softmax_block_isa(isa, s_all.data(), rows, n, nullptr, 7, row_pos.data(), m_all.data(), l_all.data(),
                           acc_all.data(), d);
  for (int r = 0; r < rows; ++r) {
    std::vector<float> s1(s.begin() + r * n, s.begin() + (r + 1) * n), acc1(acc.begin() + r * d, acc.begin() + (r + 1) * d);
    float m1 = m[r], l1 = l[r];
    online_softmax_block_isa(isa, s1.data(), 1, n, nullptr, 7, &row_pos[r], &m1, &l1, acc1.data(), d);
    EXPECT_EQ(0, std::memcmp(s1.data(), &s_all[r * n], sizeof(float) * n)) << r;
    EXPECT_EQ(0, std::memcmp(acc1.data(), &acc_all[r * d], sizeof(float) * d)) << r;
    EXPECT_EQ(f32_bits(m1), f32_bits(m_all[r]));
    EXPECT_EQ(f32_bits(l1), f32_bits(l_all[r]));
  }
}

// The probabilities are exp_inplace's bits of s - m on the same ISA, whether every visible
// s - m lies in the range where the kernel takes its shorter exp (row 0) or not (rows 1 and 2:
// a score 100 below the max, -inf), and whether such rows share the call or not.
TEST_P(SoftmaxTest, ProbabilitiesAreTheBitsOfExp) {
  const Isa isa = GetParam();
  const int rows = 3, n = 77;
  Rng rng(13);
  std::vector<float> s(size_t(rows) * n);
  for (float& x : s) x = 43.0f * rng.uniform() - 37.0f;  // [-80, 6)
  s[size_t(1) * n + 40] = -100.0f;
  s[size_t(2) * n + 3] = -kInf;
  auto expected = [&](int r) {
    float mx = -kInf;
    for (int j = 0; j < n; ++j) mx = std::max(mx, s[size_t(r) * n + j]);
    std::vector<float> e(n);
    for (int j = 0; j < n; ++j) e[size_t(j)] = s[size_t(r) * n + j] - mx;
    exp_inplace_isa(isa, e.data(), n);
    return e;
  };
  float no_acc = 0;
  std::vector<float> all = s, m(rows, -kInf), l(rows, 0.0f);
  online_softmax_block_isa(isa, all.data(), rows, n, nullptr, 0, nullptr, m.data(), l.data(), &no_acc, 0);
  for (int r = 0; r < rows; ++r) {
    std::vector<float> alone(s.begin() + r * n, s.begin() + (r + 1) * n);
    float m1 = -kInf, l1 = 0;
    online_softmax_block_isa(isa, alone.data(), 1, n, nullptr, 0, nullptr, &m1, &l1, &no_acc, 0);
    const std::vector<float> e = expected(r);
    for (int j = 0; j < n; ++j) {
      EXPECT_EQ(f32_bits(alone[size_t(j)]), f32_bits(e[size_t(j)])) << "row " << r << " j " << j;
      EXPECT_EQ(f32_bits(all[size_t(r) * n + j]), f32_bits(e[size_t(j)])) << "row " << r << " j " << j;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllIsas, SoftmaxTest, ::testing::ValuesIn(supported_isas()),
                         [](const ::testing::TestParamInfo<Isa>& i) { return std::string(isa_name(i.param)); });

}  // namespace
}  // namespace kvlab
