// The tests' random numbers: a fixed-seed LCG of our own, so that inputs are the same with every
// standard library.
#pragma once

#include <cstdint>

namespace kvlab::testing {

class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed * 0x9e3779b97f4a7c15ull + 1) {}
  float uniform() {  // [-1, 1)
    s_ = s_ * 6364136223846793005ull + 1442695040888963407ull;
    return float(int32_t(s_ >> 32)) * (1.0f / 2147483648.0f);
  }
  uint32_t next() {
    s_ = s_ * 6364136223846793005ull + 1442695040888963407ull;
    return uint32_t(s_ >> 33);
  }
  void fill(float* p, int64_t n) {
    for (int64_t i = 0; i < n; ++i) p[i] = uniform();
  }

 private:
  uint64_t s_;
};

}  // namespace kvlab::testing
