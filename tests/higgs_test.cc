// The HIGGS quantizer (kvcache/higgs.h) against references written here:
//   - each grid's MSE on fresh N(0, 1) pairs against the generator's figure and scalar Lloyd-Max;
//   - the table search against brute force on Gaussian, far, bordering and tied inputs;
//   - rotations orthogonal (double-precision products), the Hadamard block layout;
//   - codes against an encoder in double precision, bit packing against hand-packed bytes;
//   - round trips of Gaussian and unequally scaled vectors, zero vectors, norm saturation;
//   - create() errors.
// HiggsTest.RotationComparison prints the relative MSE of both rotations at every width.
#include "kvcache/higgs.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "base/half.h"

namespace kvlab {
namespace {

using Rotation = HiggsQuantizer::Rotation;

constexpr double kLloydMax[3] = {0.1175, 0.03454, 0.009497};  // scalar, 2 / 3 / 4 bits

HiggsQuantizer make(int dim, int bits, Rotation rotation, int block = 0) {
  auto q = HiggsQuantizer::create(dim, bits, rotation, block);
  EXPECT_TRUE(q.ok()) << q.status().to_string();
  return std::move(q).value();
}

std::vector<float> gaussian(size_t n, uint64_t seed, double sigma = 1.0) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> nd(0.0, sigma);
  std::vector<float> v(n);
  for (float& x : v) x = float(nd(gen));
  return v;
}

double sq(double v) { return v * v; }

// ---------------------------------------------------------------------------------------------
// Grids

TEST(HiggsTest, GridMseMatchesGeneratorAndBeatsScalar) {
  EXPECT_EQ(higgs_grids_version(), 1);
  for (int bits = 2; bits <= 4; ++bits) {
    const HiggsGrid& g = higgs_grid(bits);
    ASSERT_EQ(g.bits, bits);
    ASSERT_EQ(g.n_points, 1 << (2 * bits));
    EXPECT_LT(g.mse, kLloydMax[bits - 2]);
    for (int i = 0; i < 2 * g.n_points; ++i) ASSERT_TRUE(std::isfinite(g.points[i]));

    const int n_pairs = 200000;
    const std::vector<float> y = gaussian(2 * n_pairs, 1000 + bits);
    double err = 0.0;
    for (int i = 0; i < n_pairs; ++i) {
      const int p = HiggsNearest::brute_force(g, y[2 * i], y[2 * i + 1]);
      err += sq(y[2 * i] - g.points[2 * p]) + sq(y[2 * i + 1] - g.points[2 * p + 1]);
    }
    const double mse = err / (2.0 * n_pairs);
    EXPECT_NEAR(mse / g.mse, 1.0, 0.03) << bits << " bits: measured " << mse << ", generator " << g.mse;
    EXPECT_LT(mse, kLloydMax[bits - 2]) << bits << " bits";
  }
}

// The points are distinct and the grids are centred (mean ~0 for a Gaussian-optimal grid).
TEST(HiggsTest, GridPointsDistinctAndCentred) {
  for (int bits = 2; bits <= 4; ++bits) {
    const HiggsGrid& g = higgs_grid(bits);
    double m0 = 0.0, m1 = 0.0;
    for (int i = 0; i < g.n_points; ++i) {
      m0 += g.points[2 * i];
      m1 += g.points[2 * i + 1];
      for (int j = 0; j < i; ++j) {
        ASSERT_GT(sq(g.points[2 * i] - g.points[2 * j]) + sq(g.points[2 * i + 1] - g.points[2 * j + 1]), 1e-6);
      }
    }
    EXPECT_NEAR(m0 / g.n_points, 0.0, 0.05);
    EXPECT_NEAR(m1 / g.n_points, 0.0, 0.05);
  }
}

// ---------------------------------------------------------------------------------------------
// Nearest-point search

TEST(HiggsTest, TableSearchEqualsBruteForce) {
  for (int bits = 2; bits <= 4; ++bits) {
    const HiggsNearest& t = HiggsNearest::of(bits);
    const HiggsGrid& g = t.grid();
    EXPECT_LT(t.mean_candidates(), 8.0) << bits << " bits";  // the table must actually prune
    const float e = t.extent();
    const int cells = t.cells_per_side();
    const float h = 2.0f * e / float(cells);
    std::mt19937_64 gen(77 + bits);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
    std::uniform_int_distribution<int> cell(0, cells);
    std::uniform_int_distribution<int> point(0, g.n_points - 1);
    std::vector<std::pair<float, float>> ys;
    for (int i = 0; i < 40000; ++i) {  // Gaussian at several scales
      const float s = (i % 4 == 0) ? 0.3f : (i % 4 == 1 ? 1.0f : (i % 4 == 2 ? 2.0f : 4.0f));
      ys.push_back({s * nd(gen), s * nd(gen)});
    }
    for (int i = 0; i < 20000; ++i) {  // exactly on cell borders, one or both coordinates
      const float b0 = -e + float(cell(gen)) * h, b1 = -e + float(cell(gen)) * h;
      ys.push_back({b0, (i % 2) ? b1 : e * uni(gen)});
      ys.push_back({e * uni(gen), b1});
    }
    for (int i = 0; i < 10000; ++i) {  // midpoints of two grid points (ties) and grid points
      const int p = point(gen), q = point(gen);
      ys.push_back({0.5f * (g.points[2 * p] + g.points[2 * q]), 0.5f * (g.points[2 * p + 1] + g.points[2 * q + 1])});
      ys.push_back({g.points[2 * p], g.points[2 * p + 1]});
    }
    for (int i = 0; i < 10000; ++i) {  // the table's edge and far outliers
      const float far = (i % 3 == 0) ? e : (i % 3 == 1 ? 1e3f : 1e30f);
      ys.push_back({far * uni(gen), (i % 2 ? -1.0f : 1.0f) * (i % 5 == 0 ? e : far)});
      ys.push_back({std::nextafter(e, 0.0f) * (i % 2 ? -1.0f : 1.0f), nd(gen)});
    }
    ys.push_back({0.0f, 0.0f});
    ys.push_back({-e, -e});
    ys.push_back({INFINITY, 0.0f});
    ys.push_back({NAN, 1.0f});
    ASSERT_GE(ys.size(), 100000u);
    int mismatches = 0;
    for (const auto& [y0, y1] : ys) {
      const int fast = t.nearest(y0, y1), brute = HiggsNearest::brute_force(g, y0, y1);
      if (fast != brute && ++mismatches <= 10) {
        ADD_FAILURE() << bits << " bits: (" << y0 << ", " << y1 << ") table " << fast << " brute " << brute;
      }
    }
    EXPECT_EQ(mismatches, 0) << bits << " bits";
  }
}

// ---------------------------------------------------------------------------------------------
// Rotations

void expect_orthogonal(const HiggsQuantizer& q) {
  const int d = q.dim();
  const std::vector<float>& r = q.rotation();
  ASSERT_EQ(r.size(), size_t(d) * d);
  double worst = 0.0;
  for (int i = 0; i < d; ++i) {
    for (int j = 0; j <= i; ++j) {
      double dot = 0.0;
      for (int c = 0; c < d; ++c) dot += double(r[size_t(i) * d + c]) * r[size_t(j) * d + c];
      worst = std::max(worst, std::fabs(dot - (i == j ? 1.0 : 0.0)));
    }
  }
  EXPECT_LT(worst, 1e-5) << "dim " << d;
}

TEST(HiggsTest, RotationsAreOrthogonal) {
  for (int d : {2, 6, 64, 192, 288}) expect_orthogonal(make(d, 2, Rotation::kOrthogonal));
  for (int b : {2, 32, 64}) expect_orthogonal(make(192, 3, Rotation::kHadamard, b));
  expect_orthogonal(make(1024, 4, Rotation::kHadamard, 1024));
}

TEST(HiggsTest, OrthogonalIsFixedAndDense) {
  const HiggsQuantizer a = make(192, 2, Rotation::kOrthogonal), b = make(192, 4, Rotation::kOrthogonal);
  EXPECT_EQ(a.rotation(), b.rotation());  // the seed is fixed; bits do not matter
  EXPECT_EQ(a.n_norms(), 1);
  EXPECT_EQ(a.group(), 192);
  int small = 0;
  for (float v : a.rotation()) small += std::fabs(v) < 1e-6f;
  EXPECT_LT(small, 10);
}

TEST(HiggsTest, HadamardBlockStructure) {
  const int d = 192, blk = 64;
  const HiggsQuantizer q = make(d, 2, Rotation::kHadamard, blk);
  EXPECT_EQ(q.n_norms(), 3);
  EXPECT_EQ(q.group(), blk);
  const std::vector<float>& r = q.rotation();
  const float v = 1.0f / 8.0f;
  for (int i = 0; i < d; ++i) {
    for (int j = 0; j < d; ++j) {
      const float x = r[size_t(i) * d + j];
      if (i / blk != j / blk) {
        ASSERT_EQ(x, 0.0f) << i << "," << j;
      } else {
        // Sylvester: H[i][j] = (-1)^popcount(i & j); identical in every block.
        const int a = i % blk, b = j % blk;
        ASSERT_EQ(x, (__builtin_popcount(unsigned(a & b)) & 1) ? -v : v) << i << "," << j;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Sizes and bit packing

TEST(HiggsTest, SizesAndNorms) {
  const int expect_bytes[3] = {48, 72, 96};
  for (int bits = 2; bits <= 4; ++bits) {
    EXPECT_EQ(make(192, bits, Rotation::kOrthogonal).code_bytes(), expect_bytes[bits - 2]);
    EXPECT_EQ(make(192, bits, Rotation::kHadamard, 64).code_bytes(), expect_bytes[bits - 2]);
    EXPECT_EQ(make(192, bits, Rotation::kOrthogonal).n_norms(), 1);
    EXPECT_EQ(make(192, bits, Rotation::kHadamard, 64).n_norms(), 3);
    EXPECT_EQ(make(192, bits, Rotation::kHadamard, 32).n_norms(), 6);
  }
  EXPECT_EQ(make(6, 3, Rotation::kOrthogonal).code_bytes(), 3);  // 3 pairs x 6 bits = 18 bits
  EXPECT_EQ(make(2, 2, Rotation::kOrthogonal).code_bytes(), 1);  // 4 bits
  EXPECT_EQ(make(2, 3, Rotation::kOrthogonal).code_bytes(), 1);  // 6 bits
  EXPECT_EQ(make(10, 3, Rotation::kHadamard, 2).code_bytes(), 4);  // 30 bits
}

// Hand-packed codes decode to the grid points they name: dim 6 at 3 bits, pairs i0, i1, i2 of 6
// bits LSB-first: byte0 = i0 | i1 << 6, byte1 = i1 >> 2 | i2 << 4, byte2 = i2 >> 4.
TEST(HiggsTest, BitPackingByHand) {
  const HiggsQuantizer q = make(6, 3, Rotation::kOrthogonal);
  const HiggsGrid& g = higgs_grid(3);
  const int idx[3] = {45, 22, 59};
  const uint8_t codes[3] = {uint8_t(idx[0] | (idx[1] << 6)), uint8_t((idx[1] >> 2) | (idx[2] << 4)),
                            uint8_t(idx[2] >> 4)};
  const uint16_t norm = f32_to_f16(2.0f);  // scale 2 / sqrt(6)
  float out[6];
  q.dequantize_rotated(codes, &norm, 1, out);
  const float scale = 2.0f * (1.0f / std::sqrt(6.0f));
  for (int i = 0; i < 3; ++i) {
    EXPECT_FLOAT_EQ(out[2 * i], g.points[2 * idx[i]] * scale);
    EXPECT_FLOAT_EQ(out[2 * i + 1], g.points[2 * idx[i] + 1] * scale);
  }
}

int unpack(const uint8_t* codes, int pair, int width) {
  int v = 0;
  for (int b = 0; b < width; ++b) {
    const int bit = pair * width + b;
    v |= ((codes[bit / 8] >> (bit % 8)) & 1) << b;
  }
  return v;
}

// quantize() against an encoder written here in double precision: per group the f16 norm of R x,
// then the nearest point of each scaled pair. The library rotates in f32, so a pair may land on
// a different point only when the two are tied to within rounding. Guard bytes catch writes
// past each output, and unused high bits must be 0.
TEST(HiggsTest, CodesMatchReferenceEncoder) {
  struct Case { int dim, bits; Rotation rot; int block; };
  const Case cases[] = {{6, 3, Rotation::kOrthogonal, 0}, {2, 2, Rotation::kOrthogonal, 0},
                        {192, 2, Rotation::kOrthogonal, 0}, {192, 3, Rotation::kHadamard, 64},
                        {192, 4, Rotation::kHadamard, 32}, {10, 3, Rotation::kHadamard, 2},
                        {70, 4, Rotation::kOrthogonal, 0}};
  for (const Case& c : cases) {
    const HiggsQuantizer q = make(c.dim, c.bits, c.rot, c.block);
    const HiggsGrid& g = q.grid();
    const int n = 300, d = c.dim, nb = q.code_bytes(), nn = q.n_norms(), width = 2 * c.bits;
    const std::vector<float> x = gaussian(size_t(n) * d, 5 + d + c.bits, 3.0);
    std::vector<uint8_t> codes(size_t(n) * nb + 16, 0xa5);
    std::vector<uint16_t> norms(size_t(n) * nn + 4, 0xa5a5);
    q.quantize(x.data(), n, codes.data(), norms.data());
    for (size_t i = size_t(n) * nb; i < codes.size(); ++i) ASSERT_EQ(codes[i], 0xa5);
    for (size_t i = size_t(n) * nn; i < norms.size(); ++i) ASSERT_EQ(norms[i], 0xa5a5);

    const std::vector<float>& r = q.rotation();
    int differ = 0;
    for (int t = 0; t < n; ++t) {
      const uint8_t* ct = codes.data() + size_t(t) * nb;
      const int used = (d / 2 * width) % 8;
      if (used != 0) {
        ASSERT_EQ(ct[nb - 1] >> used, 0) << "unused bits set";
      }
      std::vector<double> y(d);
      for (int i = 0; i < d; ++i) {
        for (int k = 0; k < d; ++k) y[i] += double(r[size_t(i) * d + k]) * x[size_t(t) * d + k];
      }
      for (int gi = 0; gi < nn; ++gi) {
        const int gs = q.group();
        double ss = 0.0;
        for (int k = 0; k < gs; ++k) ss += sq(y[gi * gs + k]);
        const uint16_t h = norms[size_t(t) * nn + gi];
        EXPECT_NEAR(f16_to_f32(h), std::sqrt(ss), std::sqrt(ss) * 1e-3);
        const double scale = std::sqrt(double(gs)) / f16_to_f32(h);
        for (int k = 0; k < gs; k += 2) {
          const double y0 = y[gi * gs + k] * scale, y1 = y[gi * gs + k + 1] * scale;
          double best = INFINITY;
          for (int p = 0; p < g.n_points; ++p) best = std::min(best, sq(y0 - g.points[2 * p]) + sq(y1 - g.points[2 * p + 1]));
          const int got = unpack(ct, (gi * gs + k) / 2, width);
          ASSERT_LT(got, g.n_points);
          const double dist = sq(y0 - g.points[2 * got]) + sq(y1 - g.points[2 * got + 1]);
          ASSERT_LE(dist, best + 1e-4) << "dim " << d << " row " << t << " pair " << (gi * gs + k) / 2;
          differ += dist > best;
        }
      }
    }
    EXPECT_LE(differ, n * d / 2 / 1000) << "dim " << d;  // near ties only
  }
}

// Quantizing rows in one call, in odd chunks or one at a time gives the same bytes (the rotation
// product is batch invariant), and so does dequantization.
TEST(HiggsTest, IndependentOfBatching) {
  const HiggsQuantizer q = make(192, 3, Rotation::kOrthogonal);
  const int n = 700, d = 192, nb = q.code_bytes();
  const std::vector<float> x = gaussian(size_t(n) * d, 9);
  std::vector<uint8_t> all(size_t(n) * nb), one(size_t(n) * nb);
  std::vector<uint16_t> na(n), n1(n);
  q.quantize(x.data(), n, all.data(), na.data());
  for (int t = 0; t < n;) {
    const int m = std::min(n - t, 1 + (t % 37));
    q.quantize(x.data() + size_t(t) * d, m, one.data() + size_t(t) * nb, n1.data() + t);
    t += m;
  }
  EXPECT_EQ(all, one);
  EXPECT_EQ(na, n1);
  std::vector<float> da(size_t(n) * d), d1(size_t(n) * d);
  q.dequantize(all.data(), na.data(), n, da.data());
  for (int t = 0; t < n; ++t) q.dequantize(all.data() + size_t(t) * nb, na.data() + t, 1, d1.data() + size_t(t) * d);
  EXPECT_EQ(da, d1);
}

// ---------------------------------------------------------------------------------------------
// Round trips

struct RoundTrip {
  double rel_mse;                 // sum |x - x_hat|^2 / sum |x|^2
  std::vector<double> head_rel;   // the same per head of 64 channels
};

RoundTrip round_trip(const HiggsQuantizer& q, const std::vector<float>& x, int head = 64) {
  const int d = q.dim();
  const int64_t n = int64_t(x.size()) / d;
  std::vector<uint8_t> codes(size_t(n) * q.code_bytes());
  std::vector<uint16_t> norms(size_t(n) * q.n_norms());
  q.quantize(x.data(), n, codes.data(), norms.data());
  std::vector<float> xr(x.size()), rot(x.size());
  q.dequantize(codes.data(), norms.data(), n, xr.data());
  q.dequantize_rotated(codes.data(), norms.data(), n, rot.data());
  // dequantize == R^T dequantize_rotated, against a double-precision product.
  const std::vector<float>& r = q.rotation();
  double worst = 0.0;
  for (int64_t t = 0; t < std::min<int64_t>(n, 50); ++t) {
    double norm2 = 0.0;
    for (int i = 0; i < d; ++i) norm2 += sq(rot[t * d + i]);
    for (int i = 0; i < d; ++i) {
      double v = 0.0;
      for (int o = 0; o < d; ++o) v += double(r[size_t(o) * d + i]) * rot[t * d + o];
      worst = std::max(worst, std::fabs(v - xr[t * d + i]) / std::sqrt(norm2));
    }
  }
  EXPECT_LT(worst, 1e-5);
  RoundTrip rt;
  const int heads = d / head;
  std::vector<double> err_h(heads), sig_h(heads);
  for (size_t i = 0; i < x.size(); ++i) {
    const int h = int(i % d) / head;
    err_h[h] += sq(x[i] - xr[i]);
    sig_h[h] += sq(x[i]);
  }
  double err = 0.0, sig = 0.0;
  for (int h = 0; h < heads; ++h) {
    err += err_h[h], sig += sig_h[h];
    rt.head_rel.push_back(err_h[h] / sig_h[h]);
  }
  rt.rel_mse = err / sig;
  return rt;
}

std::vector<float> scaled_heads(int n, const std::vector<float>& scales, uint64_t seed) {
  const int d = 64 * int(scales.size());
  std::vector<float> x = gaussian(size_t(n) * d, seed);
  for (size_t i = 0; i < x.size(); ++i) x[i] *= scales[(i % d) / 64];
  return x;
}

TEST(HiggsTest, RoundTripGaussian) {
  for (int bits = 2; bits <= 4; ++bits) {
    const double ref = higgs_grid(bits).mse;
    const std::vector<float> x = gaussian(size_t(2000) * 192, 31 + bits, 0.7);
    const RoundTrip o = round_trip(make(192, bits, Rotation::kOrthogonal), x);
    EXPECT_NEAR(o.rel_mse / ref, 1.0, 0.05) << bits << " bits orthogonal";
    const RoundTrip h = round_trip(make(192, bits, Rotation::kHadamard, 64), x);
    EXPECT_NEAR(h.rel_mse / ref, 1.0, 0.05) << bits << " bits hadamard";
  }
}

// One head 100x larger than the others: one orthogonal rotation spreads the error over the whole
// vector, so the total relative error stays at the grid's figure (the small heads lose); Hadamard
// blocks of one head keep every head at the grid's figure.
TEST(HiggsTest, RoundTripUnequalScales) {
  for (int bits = 2; bits <= 4; ++bits) {
    const double ref = higgs_grid(bits).mse;
    const std::vector<float> x = scaled_heads(2000, {1.0f, 100.0f, 1.0f}, 41 + bits);
    const RoundTrip o = round_trip(make(192, bits, Rotation::kOrthogonal), x);
    EXPECT_NEAR(o.rel_mse / ref, 1.0, 0.05) << bits << " bits orthogonal";
    const RoundTrip h = round_trip(make(192, bits, Rotation::kHadamard, 64), x);
    EXPECT_NEAR(h.rel_mse / ref, 1.0, 0.05) << bits << " bits hadamard";
    for (double v : h.head_rel) EXPECT_NEAR(v / ref, 1.0, 0.08) << bits << " bits hadamard head";
    EXPECT_GT(o.head_rel[0], 100.0 * ref) << "the small heads carry the big head's error";
  }
}

TEST(HiggsTest, ZeroVectorsAndZeroBlocks) {
  for (Rotation rot : {Rotation::kOrthogonal, Rotation::kHadamard}) {
    const HiggsQuantizer q = make(192, 3, rot, rot == Rotation::kHadamard ? 64 : 0);
    std::vector<float> x(2 * 192, 0.0f);
    for (int i = 64; i < 128; ++i) x[192 + i] = 0.5f;  // row 1: only the middle head
    std::vector<uint8_t> codes(2 * q.code_bytes());
    std::vector<uint16_t> norms(2 * q.n_norms());
    q.quantize(x.data(), 2, codes.data(), norms.data());
    for (int i = 0; i < q.n_norms(); ++i) EXPECT_EQ(norms[i], 0);
    std::vector<float> out(2 * 192, 1.0f);
    q.dequantize(codes.data(), norms.data(), 2, out.data());
    for (int i = 0; i < 192; ++i) ASSERT_EQ(out[i], 0.0f) << i;
    if (rot == Rotation::kHadamard) {
      EXPECT_EQ(norms[q.n_norms() + 0], 0);
      EXPECT_EQ(norms[q.n_norms() + 2], 0);
      for (int i = 0; i < 64; ++i) ASSERT_EQ(out[192 + i], 0.0f);
      for (int i = 128; i < 192; ++i) ASSERT_EQ(out[192 + i], 0.0f);
    }
  }
}

// Norms beyond the f16 range saturate at 65504 instead of becoming infinity.
TEST(HiggsTest, HugeNormSaturates) {
  const HiggsQuantizer q = make(64, 4, Rotation::kOrthogonal);
  std::vector<float> x = gaussian(64, 3, 1e5);
  std::vector<uint8_t> codes(q.code_bytes());
  uint16_t norm = 0;
  q.quantize(x.data(), 1, codes.data(), &norm);
  EXPECT_EQ(norm, 0x7bff);
  std::vector<float> out(64);
  q.dequantize(codes.data(), &norm, 1, out.data());
  for (float v : out) ASSERT_TRUE(std::isfinite(v));
}

TEST(HiggsTest, CreateErrors) {
  struct Bad { int dim, bits; Rotation rot; int block; const char* why; };
  const Bad bad[] = {
      {192, 1, Rotation::kOrthogonal, 0, "bits"},     {192, 5, Rotation::kOrthogonal, 0, "bits"},
      {192, 8, Rotation::kHadamard, 64, "bits"},      {0, 2, Rotation::kOrthogonal, 0, "dim"},
      {1, 2, Rotation::kOrthogonal, 0, "dim"},        {7, 2, Rotation::kOrthogonal, 0, "dim"},
      {-4, 2, Rotation::kOrthogonal, 0, "dim"},       {8192, 2, Rotation::kOrthogonal, 0, "dim"},
      {192, 2, Rotation::kOrthogonal, 64, "block"},   {192, 2, Rotation::kHadamard, 0, "block"},
      {192, 2, Rotation::kHadamard, 1, "block"},      {192, 2, Rotation::kHadamard, 48, "block"},
      {192, 2, Rotation::kHadamard, 128, "block"},    {192, 2, Rotation::kHadamard, -64, "block"},
      {193, 2, Rotation::kHadamard, 64, "dim"},
  };
  for (const Bad& b : bad) {
    auto q = HiggsQuantizer::create(b.dim, b.bits, b.rot, b.block);
    ASSERT_FALSE(q.ok()) << b.dim << " " << b.bits << " " << b.block;
    EXPECT_EQ(q.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(q.status().message().find(b.why), std::string::npos) << q.status().message();
  }
  EXPECT_TRUE(HiggsQuantizer::create(192, 2, Rotation::kHadamard, 192 / 3).ok());
  EXPECT_TRUE(HiggsQuantizer::create(2, 4, Rotation::kHadamard, 2).ok());
}

// The figures that choose the rotation: relative MSE of dim-192 vectors (3 heads of 64) for
// N(0, 1) and for heads scaled 1, 3, 10, total and per head. Printed; the bounds are loose.
TEST(HiggsTest, RotationComparison) {
  std::printf("bits  data       rotation        rel_mse   head0     head1     head2     norm bits/value\n");
  for (int bits = 2; bits <= 4; ++bits) {
    for (int data = 0; data < 2; ++data) {
      const std::vector<float> x = data == 0 ? gaussian(size_t(4000) * 192, 51 + bits)
                                             : scaled_heads(4000, {1.0f, 3.0f, 10.0f}, 61 + bits);
      for (int kind = 0; kind < 2; ++kind) {
        const HiggsQuantizer q = kind == 0 ? make(192, bits, Rotation::kOrthogonal)
                                           : make(192, bits, Rotation::kHadamard, 64);
        const RoundTrip rt = round_trip(q, x);
        std::printf("%d     %-10s %-15s %.5f   %.5f   %.5f   %.5f   %.3f\n", bits,
                    data == 0 ? "N(0,1)" : "1/3/10", kind == 0 ? "orthogonal" : "hadamard-64",
                    rt.rel_mse, rt.head_rel[0], rt.head_rel[1], rt.head_rel[2], 16.0 * q.n_norms() / 192);
        EXPECT_LT(rt.rel_mse, 1.1 * higgs_grid(bits).mse);
      }
    }
  }
}

}  // namespace
}  // namespace kvlab
