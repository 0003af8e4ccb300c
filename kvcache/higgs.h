// HIGGS vector quantizer (AQUA-KV's quantizer, ../shared/research/algorithms.md section 1.3):
// rotate a vector, scale each rotation group to unit mean square, and map consecutive pairs of
// rotated values to the nearest point of a Gaussian-optimal 2-D grid.
//
// For one vector x [dim] and each rotation group g (size G: dim for kOrthogonal, block for
// kHadamard):
//   s_g      = ||(R x)_g||_2, stored as f16 (saturating at 65504); the f16 value is used below
//   y_g      = (R x)_g * sqrt(G) / s_g                           entries ~ N(0, 1)
//   code_i   = nearest grid point to (y[2i], y[2i+1])            2 * bits bits per pair
//   x_hat    = R^T ( grid[code] * s_g / sqrt(G) )
// A group whose stored norm is 0 (a zero vector, or a norm below the f16 range) decodes to 0.
//
// Codes are bit-packed LSB-first: pair i occupies bits [i * 2 * bits, (i + 1) * 2 * bits) of the
// vector's code bytes, bit b of the stream being bit (b % 8) of byte b / 8; unused high bits of
// the last byte are 0. The grids are generated once by scripts/gen_higgs_grids.py
// (kvcache/higgs_grids.inc, format version higgs_grids_version()).
#pragma once

#include <cstdint>
#include <vector>

#include "base/status.h"

namespace kvlab {

// One 2-D grid: `n_points` = 2^(2 * bits) points, [n_points][2] row-major.
struct HiggsGrid {
  int bits;
  int n_points;
  const float* points;
  double mse;  // MSE per dimension on N(0, 1) pairs, as measured by the generator
};

// REQUIRES: bits is 2, 3 or 4.
const HiggsGrid& higgs_grid(int bits);
int higgs_grids_version();

// Exact nearest-point search on one grid: the point with the smallest squared distance
// (y0 - p0)^2 + (y1 - p1)^2 computed in f32, the lowest index on ties; the same answer as
// brute_force(). A uniform table of cells over [-extent, extent]^2 holds, per cell, the few
// points that can be nearest somewhere in it (with a margin for rounding); inputs outside it,
// and NaN, go to brute force.
class HiggsNearest {
 public:
  explicit HiggsNearest(const HiggsGrid& grid);
  // The table of higgs_grid(bits), built once. REQUIRES: bits is 2, 3 or 4.
  static const HiggsNearest& of(int bits);

  int nearest(float y0, float y1) const;
  static int brute_force(const HiggsGrid& grid, float y0, float y1);

  const HiggsGrid& grid() const { return grid_; }
  float extent() const { return extent_; }
  int cells_per_side() const { return cells_; }
  double mean_candidates() const;  // average candidate list length over the cells

 private:
  HiggsGrid grid_;
  float extent_ = 0.0f;
  float inv_cell_ = 0.0f;  // cells / (2 * extent)
  int cells_ = 0;
  std::vector<uint32_t> cell_begin_;  // [cells * cells + 1] offsets into candidates_
  std::vector<uint16_t> candidates_;  // point indices, increasing within a cell
};

class HiggsQuantizer {
 public:
  // kOrthogonal: one fixed-seed random orthogonal dim x dim matrix (Gram-Schmidt of Gaussian
  // rows, i.e. the QR factor with a positive diagonal: unique for the seed), one norm per vector.
  // kHadamard: normalised Sylvester-Hadamard blocks H_block / sqrt(block) on consecutive
  // channels, one norm per block.
  enum class Rotation { kOrthogonal, kHadamard };

  // dim: vector length (e.g. 192 = 3 kv heads x 64), even, 2..4096. bits: 2, 3 or 4.
  // block: kHadamard only (0 for kOrthogonal), a power of two >= 2 dividing dim.
  static StatusOr<HiggsQuantizer> create(int dim, int bits, Rotation rotation, int block = 0);

  int dim() const { return dim_; }
  int bits() const { return bits_; }
  Rotation rotation_kind() const { return rotation_kind_; }
  int group() const { return group_; }      // rotation group size: dim or block
  int n_norms() const { return dim_ / group_; }  // norms per vector
  int code_bytes() const { return (dim_ * bits_ + 7) / 8; }  // packed code bytes per vector
  const HiggsGrid& grid() const { return nearest_->grid(); }
  // R, [dim][dim] row-major, orthogonal: y = R x.
  const std::vector<float>& rotation() const { return r_; }

  // x: [n, dim] f32 -> codes [n, code_bytes()], norms [n, n_norms()] as f16 bits.
  // Rows are processed in parallel (OpenMP); the result does not depend on the thread count.
  void quantize(const float* x, int64_t n, uint8_t* codes, uint16_t* norms) const;
  // The reconstruction in the rotated domain: out [n, dim] = per group g: grid[code] * s_g /
  // sqrt(group()), s_g the stored f16 norm; x_hat = R^T out.
  void dequantize_rotated(const uint8_t* codes, const uint16_t* norms, int64_t n, float* out) const;
  // x_hat = R^T dequantize_rotated(...), [n, dim] f32.
  void dequantize(const uint8_t* codes, const uint16_t* norms, int64_t n, float* out) const;

 private:
  HiggsQuantizer() = default;

  int dim_ = 0, bits_ = 0, group_ = 0;
  Rotation rotation_kind_ = Rotation::kOrthogonal;
  const HiggsNearest* nearest_ = nullptr;
  std::vector<float> r_;   // R   [dim][dim]
  std::vector<float> rt_;  // R^T [dim][dim]
};

}  // namespace kvlab
