// Rotary position embedding. One table of cos/sin per (position, pair), computed once per model
// in double precision (an f32 angle pos * freq loses ~1e-3 rad at position 8192) and stored f32.
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"

namespace kvlab {

class RopeTable {
 public:
  // Pair i of a head turns by pos * theta^(-2i / head_dim), pos in [0, max_positions).
  RopeTable(int head_dim, float theta, RopeStyle style, int max_positions);

  int head_dim() const { return head_dim_; }
  int max_positions() const { return max_positions_; }
  RopeStyle style() const { return style_; }
  float theta() const { return theta_; }

  // Rotates every head of every row in place.
  //   x: [n_rows, n_heads * head_dim], positions: [n_rows], each in [0, max_positions).
  void rotate(float* x, int64_t n_rows, int n_heads, const int32_t* positions) const;
  // Rotates by -angle: undoes rotate() up to rounding.
  void unrotate(float* x, int64_t n_rows, int n_heads, const int32_t* positions) const;

 private:
  void apply(float* x, int64_t n_rows, int n_heads, const int32_t* positions, float sign) const;

  int head_dim_;
  float theta_;
  RopeStyle style_;
  int max_positions_;
  std::vector<float> cos_;  // [max_positions, head_dim / 2]
  std::vector<float> sin_;  // [max_positions, head_dim / 2]
};

}  // namespace kvlab
