#include "base/half.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace kvlab {
namespace {

// Every f16 bit pattern survives f16 -> f32 -> f16, and the f32 value is the one IEEE defines.
TEST(HalfTest, F16RoundTripsEveryPattern) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(uint16_t(h));
    const uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0x1f && mant != 0) {
      EXPECT_TRUE(std::isnan(f));
      continue;
    }
    EXPECT_EQ(f32_to_f16(f), h) << "pattern " << h;
    double expect = exp == 0 ? std::ldexp(double(mant), -24)
                             : (exp == 0x1f ? INFINITY : std::ldexp(1.0 + mant / 1024.0, int(exp) - 15));
    if (h & 0x8000) expect = -expect;
    EXPECT_EQ(double(f), expect) << "pattern " << h;
  }
}

// f32 -> f16 rounds to nearest, ties to even, against a double-precision reference.
TEST(HalfTest, F16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_f16(1.0f + 1.0f / 2048.0f), 0x3c00);  // tie, even is 1.0
  EXPECT_EQ(f32_to_f16(1.0f + 3.0f / 2048.0f), 0x3c02);  // tie, even is up
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // rounds to infinity
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie between 0 and the smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.5f, -25)), 0x0001);
  // Random values: the result is the nearest f16 (checked against its neighbours).
  uint32_t s = 12345;
  for (int i = 0; i < 200000; ++i) {
    s = s * 1664525u + 1013904223u;
    const float f = f32_from_bits((s & 0x8fffffffu) | 0x30000000u);  // magnitudes ~1e-9 .. 1e4
    const uint16_t h = f32_to_f16(f);
    const double err = std::fabs(double(f16_to_f32(h)) - f);
    const double up = std::fabs(double(f16_to_f32(uint16_t(h + 1))) - f);
    const double down = (h & 0x7fff) ? std::fabs(double(f16_to_f32(uint16_t(h - 1))) - f) : 1e30;
    EXPECT_LE(err, up);
    EXPECT_LE(err, down);
  }
}

TEST(HalfTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3f808000u)), 0x3f80);  // tie, even down
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3f818000u)), 0x3f82);  // tie, even up
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3f808001u)), 0x3f81);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  for (uint32_t h = 0; h < 65536; ++h) {
    if (((h >> 7) & 0xff) == 0xff && (h & 0x7f)) continue;  // nan
    EXPECT_EQ(f32_to_bf16(bf16_to_f32(uint16_t(h))), h);
  }
}

}  // namespace
}  // namespace kvlab
