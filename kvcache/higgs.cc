// HIGGS quantizer: grids, exact nearest-point tables, rotations, bit packing (see higgs.h).
#include "kvcache/higgs.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "base/check.h"
#include "base/half.h"
#include "kernels/cpu/matmul.h"

namespace kvlab {

namespace {

#include "kvcache/higgs_grids.inc"

// The only distance the search uses, so the table and brute force agree to the bit.
inline float distance2(float y0, float y1, const float* p) {
  const float dx = y0 - p[0];
  const float dy = y1 - p[1];
  return dx * dx + dy * dy;
}

constexpr int kMaxDim = 4096;
constexpr uint64_t kOrthogonalSeed = 0x4849474753ull;  // "HIGGS"
constexpr int64_t kRowsPerChunk = 256;                // rows rotated per matmul call

bool is_power_of_two(int v) { return v > 0 && (v & (v - 1)) == 0; }

// Fixed-seed standard normals from mt19937_64 (fully specified by the standard) and Box-Muller,
// so the matrix does not depend on the library's std::normal_distribution.
class Gaussian {
 public:
  explicit Gaussian(uint64_t seed) : gen_(seed) {}
  double next() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = (double(gen_() >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
    const double u2 = double(gen_() >> 11) * 0x1.0p-53;          // [0, 1)
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2.0 * M_PI * u2);
    has_spare_ = true;
    return r * std::cos(2.0 * M_PI * u2);
  }

 private:
  std::mt19937_64 gen_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

// Rows of a Gaussian matrix orthonormalised in order by Gram-Schmidt (two passes, double): the Q
// of a QR factorisation with a positive diagonal, hence unique for the seed.
std::vector<float> random_orthogonal(int dim) {
  Gaussian gauss(kOrthogonalSeed);
  std::vector<double> q(size_t(dim) * dim);
  for (double& v : q) v = gauss.next();
  for (int i = 0; i < dim; ++i) {
    double* qi = &q[size_t(i) * dim];
    for (int pass = 0; pass < 2; ++pass) {
      for (int j = 0; j < i; ++j) {
        const double* qj = &q[size_t(j) * dim];
        double dot = 0.0;
        for (int c = 0; c < dim; ++c) dot += qi[c] * qj[c];
        for (int c = 0; c < dim; ++c) qi[c] -= dot * qj[c];
      }
    }
    double norm2 = 0.0;
    for (int c = 0; c < dim; ++c) norm2 += qi[c] * qi[c];
    const double inv = 1.0 / std::sqrt(norm2);
    for (int c = 0; c < dim; ++c) qi[c] *= inv;
  }
  return std::vector<float>(q.begin(), q.end());
}

// Block diagonal of H_block / sqrt(block), H the Sylvester-Hadamard matrix:
// H[i][j] = (-1)^popcount(i & j).
std::vector<float> block_hadamard(int dim, int block) {
  std::vector<float> r(size_t(dim) * dim, 0.0f);
  const float v = float(1.0 / std::sqrt(double(block)));
  for (int b0 = 0; b0 < dim; b0 += block) {
    for (int i = 0; i < block; ++i) {
      for (int j = 0; j < block; ++j) {
        r[size_t(b0 + i) * dim + (b0 + j)] = (__builtin_popcount(unsigned(i & j)) & 1) ? -v : v;
      }
    }
  }
  return r;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Grids

const HiggsGrid& higgs_grid(int bits) {
  static const HiggsGrid grids[3] = {
      {2, 16, &kHiggsGrid2[0][0], kHiggsGrid2Mse},
      {3, 64, &kHiggsGrid3[0][0], kHiggsGrid3Mse},
      {4, 256, &kHiggsGrid4[0][0], kHiggsGrid4Mse},
  };
  KVLAB_CHECK(bits >= 2 && bits <= 4);
  return grids[bits - 2];
}

int higgs_grids_version() { return kHiggsGridsFormatVersion; }

// ---------------------------------------------------------------------------------------------
// Nearest-point tables
//
// For a cell C (widened by 1e-3 of its width so that rounding in the cell index cannot leave a
// point outside the cell it is looked up in), let M = min_q max_{y in C} |y - q|^2. Every y in C
// has a point within M, so its nearest point p has min_{y in C} |y - p|^2 <= M. The f32 distances
// of distance2() are within a relative 1e-6 of the exact ones, so the point brute force picks,
// and every point tied with it, satisfies the same bound with M (1 + 1e-6); the table keeps
// every point with min distance <= M (1 + 1e-4) and scans them in index order like brute force.

HiggsNearest::HiggsNearest(const HiggsGrid& grid) : grid_(grid) {
  const int n = grid.n_points;
  const float* pts = grid.points;
  float max_abs = 0.0f;
  for (int i = 0; i < 2 * n; ++i) max_abs = std::max(max_abs, std::fabs(pts[i]));
  extent_ = std::ceil(max_abs) + 1.0f;
  cells_ = 8 * int(std::lround(std::sqrt(double(n))));  // 32, 64, 128
  inv_cell_ = float(cells_) / (2.0f * extent_);

  const double h = 2.0 * double(extent_) / cells_;
  const double widen = 1e-3 * h;
  cell_begin_.reserve(size_t(cells_) * cells_ + 1);
  cell_begin_.push_back(0);
  for (int i = 0; i < cells_; ++i) {  // y0 (first coordinate) index
    const double lo0 = -double(extent_) + i * h - widen, hi0 = -double(extent_) + (i + 1) * h + widen;
    for (int j = 0; j < cells_; ++j) {  // y1 index
      const double lo1 = -double(extent_) + j * h - widen, hi1 = -double(extent_) + (j + 1) * h + widen;
      auto max_d2 = [&](double p0, double p1) {
        const double d0 = std::max(std::fabs(p0 - lo0), std::fabs(p0 - hi0));
        const double d1 = std::max(std::fabs(p1 - lo1), std::fabs(p1 - hi1));
        return d0 * d0 + d1 * d1;
      };
      auto min_d2 = [&](double p0, double p1) {
        const double d0 = p0 < lo0 ? lo0 - p0 : (p0 > hi0 ? p0 - hi0 : 0.0);
        const double d1 = p1 < lo1 ? lo1 - p1 : (p1 > hi1 ? p1 - hi1 : 0.0);
        return d0 * d0 + d1 * d1;
      };
      double m = INFINITY;
      for (int p = 0; p < n; ++p) m = std::min(m, max_d2(pts[2 * p], pts[2 * p + 1]));
      const double bound = m * (1.0 + 1e-4);
      for (int p = 0; p < n; ++p) {
        if (min_d2(pts[2 * p], pts[2 * p + 1]) <= bound) candidates_.push_back(uint16_t(p));
      }
      cell_begin_.push_back(uint32_t(candidates_.size()));
    }
  }
}

const HiggsNearest& HiggsNearest::of(int bits) {
  static const HiggsNearest tables[3] = {HiggsNearest(higgs_grid(2)), HiggsNearest(higgs_grid(3)),
                                         HiggsNearest(higgs_grid(4))};
  KVLAB_CHECK(bits >= 2 && bits <= 4);
  return tables[bits - 2];
}

int HiggsNearest::brute_force(const HiggsGrid& grid, float y0, float y1) {
  int best = 0;
  float best_d = distance2(y0, y1, grid.points);
  for (int p = 1; p < grid.n_points; ++p) {
    const float d = distance2(y0, y1, grid.points + 2 * p);
    if (d < best_d) best = p, best_d = d;
  }
  return best;
}

int HiggsNearest::nearest(float y0, float y1) const {
  // Written so that NaN fails the test and goes to brute force.
  if (!(std::fabs(y0) < extent_ && std::fabs(y1) < extent_)) return brute_force(grid_, y0, y1);
  const int i = std::min(int((y0 + extent_) * inv_cell_), cells_ - 1);
  const int j = std::min(int((y1 + extent_) * inv_cell_), cells_ - 1);
  const size_t cell = size_t(i) * cells_ + j;
  const uint16_t* c = candidates_.data() + cell_begin_[cell];
  const uint16_t* end = candidates_.data() + cell_begin_[cell + 1];
  int best = *c;
  float best_d = distance2(y0, y1, grid_.points + 2 * best);
  for (++c; c < end; ++c) {
    const float d = distance2(y0, y1, grid_.points + 2 * *c);
    if (d < best_d) best = *c, best_d = d;
  }
  return best;
}

double HiggsNearest::mean_candidates() const {
  return double(candidates_.size()) / (double(cells_) * cells_);
}

// ---------------------------------------------------------------------------------------------
// Quantizer

StatusOr<HiggsQuantizer> HiggsQuantizer::create(int dim, int bits, Rotation rotation, int block) {
  if (bits < 2 || bits > 4) {
    return invalid_argument("higgs: bits must be 2, 3 or 4 (got " + std::to_string(bits) + ")");
  }
  if (dim < 2 || dim > kMaxDim || dim % 2 != 0) {
    return invalid_argument("higgs: dim must be even and in [2, " + std::to_string(kMaxDim) + "] (got " +
                            std::to_string(dim) + ")");
  }
  HiggsQuantizer q;
  q.dim_ = dim;
  q.bits_ = bits;
  q.rotation_kind_ = rotation;
  q.nearest_ = &HiggsNearest::of(bits);
  if (rotation == Rotation::kOrthogonal) {
    if (block != 0) {
      return invalid_argument("higgs: block applies to the Hadamard rotation only (got block " +
                              std::to_string(block) + " with the orthogonal rotation)");
    }
    q.group_ = dim;
    q.r_ = random_orthogonal(dim);
  } else {
    if (block < 2 || !is_power_of_two(block) || dim % block != 0) {
      return invalid_argument("higgs: the Hadamard block must be a power of two >= 2 that divides dim " +
                              std::to_string(dim) + " (got " + std::to_string(block) + ")");
    }
    q.group_ = block;
    q.r_ = block_hadamard(dim, block);
  }
  q.rt_.resize(q.r_.size());
  for (int i = 0; i < dim; ++i) {
    for (int j = 0; j < dim; ++j) q.rt_[size_t(j) * dim + i] = q.r_[size_t(i) * dim + j];
  }
  return q;
}

void HiggsQuantizer::quantize(const float* x, int64_t n, uint8_t* codes, uint16_t* norms) const {
  const int width = 2 * bits_;  // bits per pair
  const int n_groups = n_norms(), n_bytes = code_bytes();
  const float sqrt_group = std::sqrt(float(group_));
  std::vector<float> y(size_t(std::min(n, kRowsPerChunk)) * dim_);
  for (int64_t r0 = 0; r0 < n; r0 += kRowsPerChunk) {
    const int64_t m = std::min(kRowsPerChunk, n - r0);
    matmul(x + r0 * dim_, m, dim_, r_.data(), dim_, y.data());  // y = x R^T: rows R x
#pragma omp parallel for schedule(static) if (m * dim_ >= 16384)
    for (int64_t t = 0; t < m; ++t) {
      const float* yt = y.data() + t * dim_;
      uint8_t* out = codes + (r0 + t) * n_bytes;
      uint16_t* nt = norms + (r0 + t) * n_groups;
      uint64_t acc = 0;
      int n_acc = 0;
      for (int g = 0; g < n_groups; ++g) {
        const float* yg = yt + size_t(g) * group_;
        double ss = 0.0;
        for (int c = 0; c < group_; ++c) ss += double(yg[c]) * yg[c];
        const float s = std::min(float(std::sqrt(ss)), 65504.0f);  // saturate at the f16 maximum
        nt[g] = f32_to_f16(s);
        const float s16 = f16_to_f32(nt[g]);
        const float scale = s16 > 0.0f ? sqrt_group / s16 : 0.0f;
        for (int c = 0; c < group_; c += 2) {
          acc |= uint64_t(nearest_->nearest(yg[c] * scale, yg[c + 1] * scale)) << n_acc;
          n_acc += width;
          while (n_acc >= 8) {
            *out++ = uint8_t(acc);
            acc >>= 8;
            n_acc -= 8;
          }
        }
      }
      if (n_acc > 0) *out = uint8_t(acc);
    }
  }
}

void HiggsQuantizer::dequantize_rotated(const uint8_t* codes, const uint16_t* norms, int64_t n,
                                        float* out) const {
  const int width = 2 * bits_;
  const uint64_t mask = (uint64_t(1) << width) - 1;
  const int n_groups = n_norms(), n_bytes = code_bytes();
  const float inv_sqrt_group = 1.0f / std::sqrt(float(group_));
  const float* pts = grid().points;
#pragma omp parallel for schedule(static) if (n * dim_ >= 16384)
  for (int64_t t = 0; t < n; ++t) {
    const uint8_t* in = codes + t * n_bytes;
    const uint16_t* nt = norms + t * n_groups;
    float* ot = out + t * dim_;
    uint64_t acc = 0;
    int n_acc = 0;
    for (int g = 0; g < n_groups; ++g) {
      const float scale = f16_to_f32(nt[g]) * inv_sqrt_group;
      float* og = ot + size_t(g) * group_;
      for (int c = 0; c < group_; c += 2) {
        while (n_acc < width) {
          acc |= uint64_t(*in++) << n_acc;
          n_acc += 8;
        }
        const float* p = pts + 2 * (acc & mask);
        acc >>= width;
        n_acc -= width;
        og[c] = p[0] * scale;
        og[c + 1] = p[1] * scale;
      }
    }
  }
}

void HiggsQuantizer::dequantize(const uint8_t* codes, const uint16_t* norms, int64_t n, float* out) const {
  std::vector<float> rotated(size_t(std::min(n, kRowsPerChunk)) * dim_);
  for (int64_t r0 = 0; r0 < n; r0 += kRowsPerChunk) {
    const int64_t m = std::min(kRowsPerChunk, n - r0);
    dequantize_rotated(codes + r0 * code_bytes(), norms + r0 * n_norms(), m, rotated.data());
    matmul(rotated.data(), m, dim_, rt_.data(), dim_, out + r0 * dim_);  // rows R^T out
  }
}

}  // namespace kvlab
