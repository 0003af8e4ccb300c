#include "attention/rope.h"

#include <cmath>

#include "base/check.h"

namespace kvlab {

RopeTable::RopeTable(int head_dim, float theta, RopeStyle style, int max_positions)
    : head_dim_(head_dim), theta_(theta), style_(style), max_positions_(max_positions) {
  KVLAB_CHECK(head_dim > 0 && head_dim % 2 == 0 && max_positions > 0);
  const int half = head_dim / 2;
  cos_.resize(size_t(max_positions) * half);
  sin_.resize(size_t(max_positions) * half);
  for (int p = 0; p < max_positions; ++p) {
    for (int i = 0; i < half; ++i) {
      const double freq = std::pow(double(theta), -2.0 * i / head_dim);
      const double angle = double(p) * freq;
      cos_[size_t(p) * half + i] = float(std::cos(angle));
      sin_[size_t(p) * half + i] = float(std::sin(angle));
    }
  }
}

void RopeTable::rotate(float* x, int64_t n_rows, int n_heads, const int32_t* positions) const {
  apply(x, n_rows, n_heads, positions, 1.0f);
}

void RopeTable::unrotate(float* x, int64_t n_rows, int n_heads, const int32_t* positions) const {
  apply(x, n_rows, n_heads, positions, -1.0f);
}

void RopeTable::apply(float* x, int64_t n_rows, int n_heads, const int32_t* positions,
                      float sign) const {
  const int half = head_dim_ / 2;
  // Element pair i of a head: (2i, 2i+1) interleaved, (i, i+half) for the HF layout.
  const int stride_a = style_ == RopeStyle::kInterleaved ? 2 : 1;
  const int offset_b = style_ == RopeStyle::kInterleaved ? 1 : half;
  for (int64_t r = 0; r < n_rows; ++r) {
    const int32_t pos = positions[r];
    KVLAB_CHECK(pos >= 0 && pos < max_positions_);
    const float* c = &cos_[size_t(pos) * half];
    const float* s = &sin_[size_t(pos) * half];
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + (r * n_heads + h) * head_dim_;
      for (int i = 0; i < half; ++i) {
        float& a = v[i * stride_a];
        float& b = v[i * stride_a + offset_b];
        const float sn = sign * s[i];
        const float a0 = a, b0 = b;
        a = a0 * c[i] - b0 * sn;
        b = a0 * sn + b0 * c[i];
      }
    }
  }
}

}  // namespace kvlab
