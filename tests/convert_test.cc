// SIMD f16/bf16 conversions against the scalar ones of base/half.h, bit for bit, on every ISA
// the CPU has, for every f16/bf16 pattern and for random f32 values incl. subnormals, overflow
// and ties; lengths cover the vector tails.
#include "kernels/cpu/convert.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "base/half.h"

namespace kvlab {
namespace {

TEST(ConvertTest, HalfToFloatEveryPattern) {
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < all.size(); ++i) all[i] = uint16_t(i);
  for (Isa isa : supported_isas()) {
    for (size_t n : {size_t(65536), size_t(65535 - 16), size_t(7), size_t(17)}) {
      std::vector<float> f16(n), bf16(n);
      convert_f16_to_f32_isa(isa, all.data(), f16.data(), n);
      convert_bf16_to_f32_isa(isa, all.data(), bf16.data(), n);
      for (size_t i = 0; i < n; ++i) {
        const float want16 = f16_to_f32(all[i]), wantb = bf16_to_f32(all[i]);
        if (std::isnan(want16)) EXPECT_TRUE(std::isnan(f16[i])) << isa_name(isa) << " " << i;
        else EXPECT_EQ(f32_bits(f16[i]), f32_bits(want16)) << isa_name(isa) << " " << i;
        if (std::isnan(wantb)) EXPECT_TRUE(std::isnan(bf16[i])) << isa_name(isa) << " " << i;
        else EXPECT_EQ(f32_bits(bf16[i]), f32_bits(wantb)) << isa_name(isa) << " " << i;
      }
    }
  }
}

TEST(ConvertTest, FloatToHalfRoundsLikeScalar) {
  std::mt19937 rng(3);
  std::vector<float> x;
  for (int i = 0; i < 200000; ++i) {
    // Random bit patterns over the whole exponent range, plus exact ties of both formats.
    x.push_back(f32_from_bits(rng()));
    x.push_back(f16_to_f32(uint16_t(rng())) + std::ldexp(1.0f, -11) * f16_to_f32(0x3c00));
    x.push_back(f32_from_bits((rng() & 0xffff0000u) | 0x8000u));
  }
  x.push_back(65519.0f);
  x.push_back(65520.0f);
  x.push_back(std::ldexp(1.0f, -25));
  x.push_back(-std::ldexp(1.5f, -25));
  for (Isa isa : supported_isas()) {
    for (size_t n : {x.size(), size_t(15), size_t(33)}) {
      std::vector<uint16_t> h(n), b(n);
      convert_f32_to_f16_isa(isa, x.data(), h.data(), n);
      convert_f32_to_bf16_isa(isa, x.data(), b.data(), n);
      for (size_t i = 0; i < n; ++i) {
        if (std::isnan(x[i])) {
          EXPECT_TRUE(std::isnan(f16_to_f32(h[i])));
          EXPECT_TRUE(std::isnan(bf16_to_f32(b[i])));
          continue;
        }
        ASSERT_EQ(h[i], f32_to_f16(x[i])) << isa_name(isa) << " x=" << x[i];
        ASSERT_EQ(b[i], f32_to_bf16(x[i])) << isa_name(isa) << " x=" << x[i];
      }
    }
  }
}

}  // namespace
}  // namespace kvlab
