// The K/V writers and the reference reader (kernels/cpu/kv_quantize.h) against the layouts of
// kernels/cpu/kv_format.h, with references written here independently of the library:
//   - e4m3 against a decoder built from sign / exponent / mantissa and a brute-force nearest
//     search over all finite e4m3 values;
//   - bit streams against hand-computed bytes and a bit-by-bit reader;
//   - every integer format, bit width, group and size against int_quant_error_bound on several
//     data distributions, with guard bytes around everything the writers may touch, and a check
//     that the bound is not loose.
#include "kernels/cpu/kv_quantize.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "base/half.h"

namespace kvlab {
namespace {

constexpr uint8_t kGuard = 0xa5;
constexpr uint16_t kGuard16 = 0xa5a5;

// ---------------------------------------------------------------------------------------------
// Independent references

// e4m3 by its definition: (-1)^s * 2^(e - 7) * (1 + m / 8), subnormal (-1)^s * 2^-6 * (m / 8),
// S.1111.111 NaN.
double e4m3_reference(uint8_t b) {
  const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7) return std::numeric_limits<double>::quiet_NaN();
  const double mag = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return s ? -mag : mag;
}

// The nearest finite e4m3 to x by exhaustive search, ties to the even code; beyond 448: 448.
uint8_t e4m3_nearest(double x) {
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  const double a = std::fabs(x);
  if (a >= 448.0) return sign | 0x7e;
  static const std::vector<double> values = [] {
    std::vector<double> v;
    for (int b = 0; b <= 0x7e; ++b) v.push_back(e4m3_reference(uint8_t(b)));
    return v;
  }();
  uint8_t best = 0;
  double best_err = INFINITY;
  for (int b = 0; b <= 0x7e; ++b) {
    const double err = std::fabs(values[size_t(b)] - a);
    if (err < best_err || (err == best_err && (b & 1) == 0)) best = uint8_t(b), best_err = err;
  }
  return sign | best;
}

// Half the e4m3 spacing around t >= 0 (t <= 448): spacing 2^(e - 3) in [2^e, 2^(e + 1)), and
// 2^-9 in the subnormal range, i.e. below 2^-6.
double e4m3_half_step(double t) {
  const int e = t < std::ldexp(1.0, -6) ? -6 : int(std::floor(std::log2(t)));
  return std::ldexp(1.0, e - 4);
}

// Code i of a bit stream, read one bit at a time (a different route from the library's).
uint32_t read_code_bitwise(const uint8_t* stream, int64_t i, int bits) {
  uint32_t v = 0;
  for (int b = 0; b < bits; ++b) {
    const int64_t bit = i * bits + b;
    v |= uint32_t((stream[bit / 8] >> (bit % 8)) & 1) << b;
  }
  return v;
}

// The unused high bits of the last byte of a stream of `count` codes are zero.
bool padding_bits_zero(const uint8_t* stream, int64_t count, int bits) {
  const int used = int((count * bits) % 8);
  return used == 0 || (stream[packed_bytes(count, bits) - 1] >> used) == 0;
}

// ---------------------------------------------------------------------------------------------
// fp8 e4m3

TEST(E4m3Test, DecodesEveryPattern) {
  for (int b = 0; b < 256; ++b) {
    const double want = e4m3_reference(uint8_t(b));
    const float got = e4m3_to_f32(uint8_t(b));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << b;
      continue;
    }
    EXPECT_EQ(double(got), want) << "pattern " << b;
    EXPECT_EQ(std::signbit(got), bool(b & 0x80)) << "pattern " << b;
  }
  EXPECT_EQ(e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(e4m3_to_f32(0xfe), -448.0f);
  EXPECT_EQ(e4m3_to_f32(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(e4m3_to_f32(0x07), std::ldexp(7.0f, -9));
  EXPECT_EQ(e4m3_to_f32(0x08), std::ldexp(1.0f, -6));
  EXPECT_EQ(e4m3_to_f32(0x38), 1.0f);
  EXPECT_TRUE(std::isnan(e4m3_to_f32(0x7f)));
  EXPECT_TRUE(std::isnan(e4m3_to_f32(0xff)));
}

TEST(E4m3Test, RoundTripsEveryNonNanPattern) {
  for (int b = 0; b < 256; ++b) {
    if ((b & 0x7f) == 0x7f) continue;
    EXPECT_EQ(f32_to_e4m3(e4m3_to_f32(uint8_t(b))), b) << "pattern " << b;
  }
}

// The midpoint of two neighbours goes to the even code (mantissa lsb 0); a hair either side
// goes to the nearer one. Covers subnormal -> subnormal, subnormal -> normal and binade edges.
TEST(E4m3Test, TiesRoundToEven) {
  for (int b = 0; b < 0x7e; ++b) {
    const double lo = e4m3_reference(uint8_t(b)), hi = e4m3_reference(uint8_t(b + 1));
    const float mid = float((lo + hi) / 2);  // exact: 5 significant bits
    ASSERT_EQ(double(mid), (lo + hi) / 2);
    const uint8_t even = (b & 1) ? uint8_t(b + 1) : uint8_t(b);
    for (const uint8_t sign : {uint8_t(0x00), uint8_t(0x80)}) {
      const float m = sign ? -mid : mid;
      EXPECT_EQ(f32_to_e4m3(m), sign | even) << "midpoint of " << b << " and " << b + 1;
      EXPECT_EQ(f32_to_e4m3(std::nextafter(m, 0.0f)), sign | b) << "just below midpoint " << b;
      EXPECT_EQ(f32_to_e4m3(std::nextafter(m, sign ? -INFINITY : INFINITY)), sign | (b + 1))
          << "just above midpoint " << b;
    }
  }
  EXPECT_EQ(f32_to_e4m3(std::ldexp(1.0f, -10)), 0x00);   // half of the smallest subnormal: to 0
  EXPECT_EQ(f32_to_e4m3(std::ldexp(3.0f, -10)), 0x02);   // 1.5 * 2^-9: to 2 * 2^-9
  EXPECT_EQ(f32_to_e4m3(1.0625f), 0x38);                 // 1 + 1/16: to 1.0
  EXPECT_EQ(f32_to_e4m3(1.1875f), 0x3a);                 // 1 + 3/16: to 1.25
  EXPECT_EQ(f32_to_e4m3(-std::ldexp(1.0f, -10)), 0x80);  // -0 keeps its sign
}

TEST(E4m3Test, SaturatesFiniteOverflowAndInfinity) {
  for (float x : {448.0f, 448.5f, 463.99f, 464.0f, 480.0f, 1000.0f, 65504.0f, 1e30f,
                  std::numeric_limits<float>::max(), INFINITY}) {
    EXPECT_EQ(f32_to_e4m3(x), 0x7e) << x;
    EXPECT_EQ(f32_to_e4m3(-x), 0xfe) << -x;
  }
  EXPECT_EQ(f32_to_e4m3(432.0f), 0x7e);  // midpoint of 416 and 448: even is 448
  EXPECT_EQ(f32_to_e4m3(431.9f), 0x7d);
}

TEST(E4m3Test, NanBecomes0x7f) {
  EXPECT_EQ(f32_to_e4m3(std::numeric_limits<float>::quiet_NaN()), 0x7f);
  EXPECT_EQ(f32_to_e4m3(-std::numeric_limits<float>::quiet_NaN()), 0x7f);
  EXPECT_EQ(f32_to_e4m3(std::numeric_limits<float>::signaling_NaN()), 0x7f);
  EXPECT_EQ(f32_to_e4m3(f32_from_bits(0xffc00001u)), 0x7f);
}

// Every f32 of a dense sample of bit patterns (all binades from far below the smallest
// subnormal to beyond 448, both signs) rounds to the exhaustively found nearest value.
TEST(E4m3Test, RoundsEveryF32OfADenseSampleToNearest) {
  int checked = 0;
  for (uint32_t u = 0x30000000u; u <= 0x44400000u; u += 331) {  // 4.7e-10 .. 768
    for (const uint32_t sign : {0u, 0x80000000u}) {
      const float x = f32_from_bits(u | sign);
      ASSERT_EQ(f32_to_e4m3(x), e4m3_nearest(x)) << "x=" << x << " bits=" << (u | sign);
      ++checked;
    }
  }
  // Denser where the subnormal and first normal codes are: 2^-11 .. 2^-4.
  for (uint32_t u = 0x3a000000u; u <= 0x3d800000u; u += 17) {
    const float x = f32_from_bits(u);
    ASSERT_EQ(f32_to_e4m3(x), e4m3_nearest(x)) << "x=" << x;
    ++checked;
  }
  EXPECT_GT(checked, 500000);
}

// ---------------------------------------------------------------------------------------------
// Bit streams

std::vector<uint8_t> pack_with_guard(const std::vector<uint8_t>& codes, int bits, int guard = 4) {
  std::vector<uint8_t> out(size_t(packed_bytes(int64_t(codes.size()), bits) + guard), kGuard);
  pack_codes(codes.data(), int64_t(codes.size()), bits, out.data());
  return out;
}

TEST(BitStreamTest, PacksKnownCodesToExactBytes) {
  // 2 bits: code i at bits 2i..2i+1, lowest first.
  EXPECT_EQ(pack_with_guard({0, 1, 2, 3, 3, 2, 1, 0}, 2, 0), (std::vector<uint8_t>{0xe4, 0x1b}));
  // 3 bits: 5 + 3<<3 + 7<<6 + 1<<9 + 6<<12 + 2<<15 + 4<<18 = 0x1163dd; code 2 straddles bytes 0-1
  // (bits 6..8), code 5 straddles bytes 1-2 (bits 15..17).
  EXPECT_EQ(pack_with_guard({5, 3, 7, 1, 6, 2, 4, 0}, 3, 0), (std::vector<uint8_t>{0xdd, 0x63, 0x11}));
  // 4 bits: low nibble = even code.
  EXPECT_EQ(pack_with_guard({1, 10, 15, 0}, 4, 0), (std::vector<uint8_t>{0xa1, 0x0f}));
  // 8 bits: the codes themselves.
  EXPECT_EQ(pack_with_guard({0, 7, 200, 255}, 8, 0), (std::vector<uint8_t>{0, 7, 200, 255}));
  // Partial last bytes: unused bits are 0, the guard byte after them is untouched.
  EXPECT_EQ(pack_with_guard({7, 7, 7, 7, 7}, 3, 1), (std::vector<uint8_t>{0xff, 0x7f, kGuard}));
  EXPECT_EQ(pack_with_guard({3, 3, 3}, 2, 1), (std::vector<uint8_t>{0x3f, kGuard}));
  EXPECT_EQ(pack_with_guard({9}, 4, 1), (std::vector<uint8_t>{0x09, kGuard}));
  EXPECT_EQ(pack_with_guard({1}, 3, 1), (std::vector<uint8_t>{0x01, kGuard}));
}

// Random codes of every width and count 1..70: unpack inverts pack, the bitwise reader agrees,
// padding bits are 0, the bytes after the stream are never written, and stale bytes in the
// destination do not leak into the stream.
TEST(BitStreamTest, RoundTripsAndNeverWritesPastTheStream) {
  std::mt19937 rng(7);
  for (int bits : {2, 3, 4, 8}) {
    for (int count = 1; count <= 70; ++count) {
      std::vector<uint8_t> codes(static_cast<size_t>(count));
      for (auto& c : codes) c = uint8_t(rng() & ((1u << bits) - 1));
      const int64_t bytes = packed_bytes(count, bits);
      std::vector<uint8_t> out(size_t(bytes + 8), 0xff);  // stale ones everywhere
      pack_codes(codes.data(), count, bits, out.data());
      for (int64_t i = bytes; i < bytes + 8; ++i) ASSERT_EQ(out[size_t(i)], 0xff) << bits << " " << count;
      ASSERT_TRUE(padding_bits_zero(out.data(), count, bits)) << bits << " " << count;
      std::vector<uint8_t> back(static_cast<size_t>(count));
      unpack_codes(out.data(), count, bits, back.data());
      ASSERT_EQ(back, codes) << bits << " " << count;
      for (int i = 0; i < count; ++i) ASSERT_EQ(read_code_bitwise(out.data(), i, bits), codes[size_t(i)]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Integer formats

enum class Dist { kUniform, kGaussianOutliers, kConstant, kTiny, kHuge, kNegative };

const char* dist_name(Dist d) {
  switch (d) {
    case Dist::kUniform: return "uniform";
    case Dist::kGaussianOutliers: return "gaussian+outliers";
    case Dist::kConstant: return "constant";
    case Dist::kTiny: return "tiny";
    case Dist::kHuge: return "huge";
    case Dist::kNegative: return "negative";
  }
  return "?";
}

constexpr Dist kDists[] = {Dist::kUniform, Dist::kTiny,  Dist::kGaussianOutliers,
                           Dist::kConstant, Dist::kHuge, Dist::kNegative};

// x: [n, ldx]. Constant data is constant per quantization group: per (token, group of channels)
// for kIntToken, per channel for kIntChannel, with both f16-representable and non-representable
// constants (scale 0 and a tiny nonzero scale).
std::vector<float> make_data(Dist dist, KvFormat format, int n, int d, int64_t ldx, int group, std::mt19937& rng) {
  std::vector<float> x(size_t(n * ldx), std::numeric_limits<float>::quiet_NaN());  // padding poisoned
  std::uniform_real_distribution<float> u01(0.0f, 1.0f);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::vector<float> constants(size_t(n * d));
  const float kConstants[] = {0.0f, 1.0f, -2.5f, 0.1f, -1000.3f, 3.3e-7f, 12345.678f, -0.7f};
  for (auto& c : constants) c = (rng() & 1) ? kConstants[rng() % 8] : gauss(rng) * 10.0f;
  for (int j = 0; j < n; ++j) {
    for (int c = 0; c < d; ++c) {
      float v = 0.0f;
      switch (dist) {
        case Dist::kUniform: v = -2.0f + 5.0f * u01(rng); break;
        case Dist::kGaussianOutliers: v = gauss(rng) * ((rng() % 64) == 0 ? 40.0f : 1.0f); break;
        case Dist::kConstant:
          v = format == KvFormat::kIntChannel ? constants[size_t(c)] : constants[size_t(j * d + c / group)];
          break;
        case Dist::kTiny: v = 1e-6f * (2.0f * u01(rng) - 1.0f); break;
        case Dist::kHuge: v = 1e4f * (0.5f + 1.5f * u01(rng)) * ((rng() & 1) ? 1.0f : -1.0f); break;
        case Dist::kNegative: v = -0.5f - 3.0f * u01(rng); break;
      }
      x[size_t(j * ldx + c)] = v;
    }
  }
  return x;
}

struct IntCase {
  KvFormat format;
  int bits, group, d, n;
  std::string name() const {
    return std::string(format == KvFormat::kIntToken ? "token" : "channel") + " bits=" + std::to_string(bits) +
           " group=" + std::to_string(group) + " d=" + std::to_string(d) + " n=" + std::to_string(n);
  }
};

// A quantized block in buffers with guard bytes after every stream and every scale / zero
// array, so stray writes are visible.
struct IntBlock {
  IntCase k;
  int64_t stride = 0, stream_bytes = 0;
  int64_t n_params = 0;  // f16 scales (and zeros)
  std::vector<uint8_t> data;
  std::vector<uint16_t> scale, zero;

  explicit IntBlock(const IntCase& c) : k(c) {
    const bool tok = c.format == KvFormat::kIntToken;
    stream_bytes = packed_bytes(tok ? c.d : c.n, c.bits);
    stride = stream_bytes + 3;
    data.assign(size_t((tok ? c.n : c.d) * stride), kGuard);
    n_params = tok ? int64_t(c.n) * (c.d / c.group) : c.d;
    scale.assign(size_t(n_params + 4), kGuard16);
    zero.assign(size_t(n_params + 4), kGuard16);
  }
  void write(const float* x, int64_t ldx) {
    if (k.format == KvFormat::kIntChannel) {
      quantize_channels(k.bits, x, k.n, ldx, k.d, data.data(), stride, scale.data(), zero.data());
      return;
    }
    const int groups = k.d / k.group;
    for (int j = 0; j < k.n; ++j) {
      quantize_token(KvFormat::kIntToken, k.bits, k.group, x + j * ldx, k.d, data.data() + j * stride,
                     scale.data() + j * groups, zero.data() + j * groups);
    }
  }
  KvBlock view() const {
    KvBlock b;
    b.format = k.format;
    b.n = k.n;
    b.d = k.d;
    b.bits = k.bits;
    b.group = k.group;
    b.data = data.data();
    b.stride = stride;
    b.scale = scale.data();
    b.zero = zero.data();
    return b;
  }
  int streams() const { return k.format == KvFormat::kIntToken ? k.n : k.d; }
  int codes_per_stream() const { return k.format == KvFormat::kIntToken ? k.d : k.n; }
  // Guards intact and unused stream bits zero.
  void expect_no_stray_writes() const {
    for (int s = 0; s < streams(); ++s) {
      const uint8_t* st = data.data() + s * stride;
      for (int64_t i = stream_bytes; i < stride; ++i) ASSERT_EQ(st[i], kGuard) << k.name() << " stream " << s;
      ASSERT_TRUE(padding_bits_zero(st, codes_per_stream(), k.bits)) << k.name() << " stream " << s;
    }
    for (int64_t i = n_params; i < n_params + 4; ++i) {
      ASSERT_EQ(scale[size_t(i)], kGuard16) << k.name();
      ASSERT_EQ(zero[size_t(i)], kGuard16) << k.name();
    }
  }
  // Code of element (j, c), and the index of its scale / zero, by the layout of kv_format.h.
  uint32_t code(int j, int c) const {
    return k.format == KvFormat::kIntToken ? read_code_bitwise(data.data() + j * stride, c, k.bits)
                                           : read_code_bitwise(data.data() + c * stride, j, k.bits);
  }
  int64_t param(int j, int c) const {
    return k.format == KvFormat::kIntToken ? int64_t(j) * (k.d / k.group) + c / k.group : c;
  }
};

std::vector<IntCase> int_cases() {
  std::vector<IntCase> cases;
  for (KvFormat f : {KvFormat::kIntToken, KvFormat::kIntChannel}) {
    for (int bits : {2, 3, 4, 8}) {
      for (int d : {8, 64, 128}) {
        for (int n : {1, 17, 32, 128}) {
          if (f == KvFormat::kIntChannel) {
            cases.push_back({f, bits, 0, d, n});
            continue;
          }
          for (int group : {8, 16, 32, 64, 128}) {
            if (group <= d && d % group == 0) cases.push_back({f, bits, group, d, n});
          }
        }
      }
    }
  }
  return cases;
}

// dequantize(quantize(x)) is within int_quant_error_bound of x for every group of every
// format, width, group size, head size and block size on every distribution; the reader is the
// spec's f32(code) * scale + zero; no byte outside the layout is written; and on uniform data
// the worst error reaches at least 40% of the bound (for 2 bits as asked, and for every width
// where the block has enough elements to make that certain).
TEST(IntQuantTest, ErrorWithinBoundForEveryFormatAndShape) {
  std::mt19937 rng(11);
  int blocks = 0;
  for (const IntCase& k : int_cases()) {
    for (Dist dist : kDists) {
      SCOPED_TRACE(k.name() + " " + dist_name(dist));
      const int64_t ldx = k.d + 3;
      const std::vector<float> x = make_data(dist, k.format, k.n, k.d, ldx, k.group, rng);
      IntBlock blk(k);
      blk.write(x.data(), ldx);
      blk.expect_no_stray_writes();
      std::vector<float> out(size_t(k.n * k.d), -12345.0f);
      dequantize_block(blk.view(), out.data());

      // Group ranges, by the same indexing as the scales.
      std::vector<float> lo(size_t(blk.n_params), INFINITY), hi(size_t(blk.n_params), -INFINITY);
      for (int j = 0; j < k.n; ++j) {
        for (int c = 0; c < k.d; ++c) {
          const int64_t p = blk.param(j, c);
          lo[size_t(p)] = std::min(lo[size_t(p)], x[size_t(j * ldx + c)]);
          hi[size_t(p)] = std::max(hi[size_t(p)], x[size_t(j * ldx + c)]);
        }
      }
      double worst_ratio = 0.0;
      for (int j = 0; j < k.n; ++j) {
        for (int c = 0; c < k.d; ++c) {
          const int64_t p = blk.param(j, c);
          const uint32_t code = blk.code(j, c);
          ASSERT_LT(code, 1u << k.bits);
          const float s = f16_to_f32(blk.scale[size_t(p)]), z = f16_to_f32(blk.zero[size_t(p)]);
          const float want = float(code) * s + z;
          const float got = out[size_t(j * k.d + c)];
          ASSERT_EQ(f32_bits(got), f32_bits(want)) << "reader differs from the spec at " << j << "," << c;
          const double bound = int_quant_error_bound(lo[size_t(p)], hi[size_t(p)], k.bits);
          const double err = std::fabs(double(got) - double(x[size_t(j * ldx + c)]));
          ASSERT_LE(err, bound) << "j=" << j << " c=" << c << " x=" << x[size_t(j * ldx + c)] << " lo=" << lo[size_t(p)]
                                << " hi=" << hi[size_t(p)];
          worst_ratio = std::max(worst_ratio, err / bound);
        }
      }
      if (dist == Dist::kConstant) {
        // An f16-representable constant is stored exactly with scale 0.
        for (int64_t p = 0; p < blk.n_params; ++p) {
          if (double(f16_to_f32(f32_to_f16(lo[size_t(p)]))) == double(lo[size_t(p)])) {
            EXPECT_EQ(blk.scale[size_t(p)], 0) << "constant " << lo[size_t(p)];
            EXPECT_EQ(f16_to_f32(blk.zero[size_t(p)]), lo[size_t(p)]);
          }
        }
      }
      const int per_group = k.format == KvFormat::kIntToken ? k.group : k.n;
      if (dist == Dist::kUniform && per_group >= 8 && (k.bits == 2 || int64_t(k.n) * k.d >= 512) &&
          int64_t(k.n) * k.d >= 64) {
        EXPECT_GE(worst_ratio, 0.4) << "the bound is loose";
      }
      ++blocks;
    }
  }
  EXPECT_EQ(blocks, 6 * (4 * 4 * (1 + 4 + 5) + 4 * 3 * 4));
}

// Data that are exactly the codes (0..L with both ends present) give scale 1, zero 0, and the
// stream bytes are exactly the packed codes: the writer uses the layout of kv_format.h.
TEST(IntQuantTest, IntegerDataGiveTheirOwnCodes) {
  std::mt19937 rng(5);
  for (int bits : {2, 3, 4, 8}) {
    const int levels = (1 << bits) - 1;
    const int d = 64, group = 16;
    std::vector<float> x(d);
    std::vector<uint8_t> codes(d);
    for (int c = 0; c < d; ++c) {
      codes[size_t(c)] = uint8_t(c % group == 0 ? 0 : (c % group == 1 ? levels : int(rng() % (levels + 1))));
      x[size_t(c)] = float(codes[size_t(c)]);
    }
    std::vector<uint8_t> data(size_t(packed_bytes(d, bits) + 2), kGuard);
    std::vector<uint16_t> scale(d / group), zero(d / group);
    quantize_token(KvFormat::kIntToken, bits, group, x.data(), d, data.data(), scale.data(), zero.data());
    EXPECT_EQ(std::vector<uint8_t>(data.begin(), data.end() - 2), pack_with_guard(codes, bits, 0)) << bits;
    EXPECT_EQ(data[data.size() - 2], kGuard);
    for (int g = 0; g < d / group; ++g) {
      EXPECT_EQ(scale[size_t(g)], 0x3c00) << bits;  // 1.0
      EXPECT_EQ(zero[size_t(g)], 0x0000) << bits;
    }
    // The same codes per channel: channel c holds codes[c + 8 t]-like columns; here every
    // channel gets the column (0, L, random...) over n = 16 tokens.
    const int n = 16, dc = 4;
    std::vector<float> xc(size_t(n * dc));
    std::vector<std::vector<uint8_t>> col(dc, std::vector<uint8_t>(n));
    for (int c = 0; c < dc; ++c) {
      for (int j = 0; j < n; ++j) {
        col[size_t(c)][size_t(j)] = codes[size_t(c * n + j)];
        xc[size_t(j * dc + c)] = float(codes[size_t(c * n + j)]);
      }
    }
    const int64_t stride = packed_bytes(n, bits) + 1;
    std::vector<uint8_t> cdata(size_t(dc * stride), kGuard);
    std::vector<uint16_t> cs(dc), cz(dc);
    quantize_channels(bits, xc.data(), n, dc, dc, cdata.data(), stride, cs.data(), cz.data());
    for (int c = 0; c < dc; ++c) {
      const auto begin = cdata.begin() + c * stride;
      EXPECT_EQ(std::vector<uint8_t>(begin, begin + stride - 1), pack_with_guard(col[size_t(c)], bits, 0));
      EXPECT_EQ(cdata[size_t(c * stride + stride - 1)], kGuard);
      EXPECT_EQ(cs[size_t(c)], 0x3c00);
      EXPECT_EQ(cz[size_t(c)], 0x0000);
    }
  }
}

// Known values of the bound: exactly half the step the writer uses (plus rounding terms of
// relative size 2^-24), never below half the ideal step (hi - lo) / L, and monotone in [lo, hi].
TEST(IntQuantTest, BoundValues) {
  EXPECT_NEAR(int_quant_error_bound(0.0, 3.0, 2), 0.5, 1e-6);      // s = 1
  EXPECT_NEAR(int_quant_error_bound(-8.0, 7.0, 4), 0.5, 1e-6);     // s = 1
  EXPECT_NEAR(int_quant_error_bound(0.0, 255.0, 8), 0.5, 2e-5);    // s = 1 (+ 256 * 2^-24)
  EXPECT_NEAR(int_quant_error_bound(2.0, 2.0, 3), 0.0, 1e-6);      // constant, exact
  EXPECT_EQ(int_quant_error_bound(0.0, 0.0, 2), 0.0);
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> u(-100.0, 100.0);
  for (int i = 0; i < 20000; ++i) {
    double a = float(u(rng)), b = float(u(rng));
    if (a > b) std::swap(a, b);
    for (int bits : {2, 3, 4, 8}) {
      const double L = (1 << bits) - 1, e = int_quant_error_bound(a, b, bits);
      ASSERT_GE(e, (b - a) / (2 * L));
      // s is within one f16 step of (b - floor_f16(a)) / L; floor_f16 moves a by < 2^-10 |a|.
      ASSERT_LE(e, ((b - a) + std::ldexp(std::fabs(a), -10) + 1e-7) / (2 * L) * (1 + std::ldexp(1.0, -9)) +
                       std::ldexp(std::max(std::fabs(a), std::fabs(b)) + 2 * e, -24) + 1e-7);
      const double a2 = a + (b - a) * 0.3, b2 = b - (b - a) * 0.2;
      ASSERT_LE(int_quant_error_bound(float(a2), float(b2), bits), e);
    }
  }
  // Values beyond the f16 range are clamped: the bound grows by the distance.
  EXPECT_NEAR(int_quant_error_bound(0.0, 70000.0, 8) - int_quant_error_bound(0.0, 65504.0, 8), 70000.0 - 65504.0, 1e-3);
}

// NaN takes no part in the range and reads back as the group's zero point; +-inf are clamped
// to +-65504; a group of only NaN is the constant 0. The finite values keep their bound.
TEST(IntQuantTest, NonFiniteInputs) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int bits : {2, 3, 4, 8}) {
    const int d = 32, group = 8;
    std::vector<float> x = {1.0f, 2.0f, nan, 3.0f, -1.0f, 0.5f, 2.5f, 0.0f,  // finite range [-1, 3]
                            nan,  nan,  nan, nan,  nan,   nan,  nan,  nan,   // only NaN
                            INFINITY, 0.0f, 1.0f, 2.0f, -3.0f, nan, 7.0f, 1.0f,
                            -INFINITY, 5.0f, 6.0f, 7.0f, 8.0f, 9.0f, 10.0f, 11.0f};
    std::vector<uint8_t> data(size_t(packed_bytes(d, bits)));
    std::vector<uint16_t> scale(4), zero(4);
    quantize_token(KvFormat::kIntToken, bits, group, x.data(), d, data.data(), scale.data(), zero.data());
    KvBlock b;
    b.format = KvFormat::kIntToken;
    b.n = 1;
    b.d = d;
    b.bits = bits;
    b.group = group;
    b.data = data.data();
    b.stride = int64_t(data.size());
    b.scale = scale.data();
    b.zero = zero.data();
    std::vector<float> out(d);
    dequantize_block(b, out.data());
    const float lo[4] = {-1.0f, 0.0f, -3.0f, -65504.0f}, hi[4] = {3.0f, 0.0f, 65504.0f, 11.0f};
    for (int c = 0; c < d; ++c) {
      const int g = c / group;
      ASSERT_FALSE(std::isnan(out[size_t(c)])) << c;
      if (std::isnan(x[size_t(c)])) {
        EXPECT_EQ(out[size_t(c)], f16_to_f32(zero[size_t(g)])) << bits << " " << c;
        continue;
      }
      const double want = std::isinf(x[size_t(c)]) ? std::copysign(65504.0, x[size_t(c)]) : x[size_t(c)];
      EXPECT_LE(std::fabs(out[size_t(c)] - want), int_quant_error_bound(lo[g], hi[g], bits)) << bits << " " << c;
    }
    EXPECT_EQ(scale[1], 0);
    EXPECT_EQ(zero[1], 0);
  }
}

// The reader's f32(code) * scale + zero equals fmaf(code, scale, zero) bit for bit: the product
// is exact in f32 (up to 8 + 11 significant bits), so the fused readers may use either.
TEST(IntQuantTest, ReaderEqualsFusedMultiplyAdd) {
  std::mt19937 rng(9);
  uint8_t data[1];
  for (int i = 0; i < 20000; ++i) {
    uint16_t s = uint16_t(rng() & 0x7bff), z = uint16_t(rng() & 0xfbff);  // finite f16, s >= 0
    const uint8_t code = uint8_t(rng());
    data[0] = code;
    KvBlock b;
    b.format = KvFormat::kIntChannel;
    b.n = 1;
    b.d = 1;
    b.bits = 8;
    b.data = data;
    b.stride = 1;
    b.scale = &s;
    b.zero = &z;
    float out;
    dequantize_block(b, &out);
    ASSERT_EQ(f32_bits(out), f32_bits(std::fmaf(float(code), f16_to_f32(s), f16_to_f32(z))))
        << "code " << int(code) << " scale " << s << " zero " << z;
  }
}

// ---------------------------------------------------------------------------------------------
// Dense formats

std::vector<float> interesting_floats(std::mt19937& rng, int count) {
  std::vector<float> x;
  for (float v : {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65520.0f, 1e-8f, 6e-8f, 3.0e38f, 1.0f + 1.0f / 2048.0f,
                  1.0f + 3.0f / 2048.0f, 1.0f + 1.0f / 256.0f, std::ldexp(1.0f, -140)}) {
    x.push_back(v);
  }
  std::normal_distribution<float> g(0.0f, 3.0f);
  while (int(x.size()) < count) {
    x.push_back((rng() & 1) ? g(rng) : f32_from_bits((rng() & 0x8fffffffu) | 0x30000000u));
  }
  return x;
}

// kF32 is bitwise, kF16 / kBF16 are exactly the element type's rounding of x (base/half.h);
// the padding after each row is never written.
TEST(DenseFormatTest, F32F16Bf16RoundTripExactly) {
  std::mt19937 rng(17);
  for (KvFormat f : {KvFormat::kF32, KvFormat::kF16, KvFormat::kBF16}) {
    for (int d : {8, 64, 128}) {
      const int n = 17;
      const std::vector<float> x = interesting_floats(rng, n * d);
      const int64_t row = element_bytes(f) * d, stride = row + 5;
      std::vector<uint8_t> data(size_t(n * stride), kGuard);
      for (int j = 0; j < n; ++j) {
        quantize_token(f, 0, 0, x.data() + j * d, d, data.data() + j * stride, nullptr, nullptr);
      }
      for (int j = 0; j < n; ++j) {
        for (int64_t i = row; i < stride; ++i) ASSERT_EQ(data[size_t(j * stride + i)], kGuard);
      }
      KvBlock b;
      b.format = f;
      b.n = n;
      b.d = d;
      b.data = data.data();
      b.stride = stride;
      std::vector<float> out(size_t(n * d));
      dequantize_block(b, out.data());
      for (int i = 0; i < n * d; ++i) {
        const float want = f == KvFormat::kF32 ? x[size_t(i)]
                           : f == KvFormat::kF16 ? f16_to_f32(f32_to_f16(x[size_t(i)]))
                                                 : bf16_to_f32(f32_to_bf16(x[size_t(i)]));
        ASSERT_EQ(f32_bits(out[size_t(i)]), f32_bits(want)) << int(f) << " x=" << x[size_t(i)];
      }
    }
  }
}

// kFp8: scale = f16(max|x| / 448) (never 0 for a nonzero token), every element within half an
// e4m3 step (at its own magnitude) times the scale, saturation only where rounding the scale
// down pushed |x| / scale past 448 and then by less than 16 scales, the whole token within
// fp8_quant_error_bound, the reader = e4m3 * scale exactly.
TEST(DenseFormatTest, Fp8ErrorWithinHalfStepTimesScale) {
  std::mt19937 rng(23);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  int saturated = 0;
  for (int d : {8, 64, 128}) {
    for (float magnitude : {1e-7f, 1e-6f, 1e-3f, 0.02f, 0.3f, 1.0f, 17.0f, 1e4f}) {
      for (int rep = 0; rep < 40; ++rep) {
        std::vector<float> x(d);
        for (auto& v : x) v = magnitude * ((rep & 1) ? u(rng) : g(rng) * ((rng() % 32) == 0 ? 20.0f : 1.0f));
        std::vector<uint8_t> data(size_t(d + 3), kGuard);
        uint16_t scale[2] = {kGuard16, kGuard16};
        quantize_token(KvFormat::kFp8, 0, 0, x.data(), d, data.data(), scale, nullptr);
        for (int i = d; i < d + 3; ++i) ASSERT_EQ(data[size_t(i)], kGuard);
        ASSERT_EQ(scale[1], kGuard16);
        float max_abs = 0.0f;
        for (float v : x) max_abs = std::max(max_abs, std::fabs(v));
        // Nearest even, never 0, one step up where rounding down left max / scale > 464.
        uint16_t want_scale = std::max(f32_to_f16(max_abs / 448.0f), uint16_t(1));
        if (max_abs / f16_to_f32(want_scale) > 464.0) ++want_scale;
        ASSERT_EQ(scale[0], want_scale) << "max " << max_abs;
        if (max_abs >= 448.0f * std::ldexp(1.0f, -14)) {
          ASSERT_EQ(scale[0], f32_to_f16(max_abs / 448.0f)) << "normal scales are plain nearest-even";
        }
        const double s = f16_to_f32(scale[0]);
        KvBlock b;
        b.format = KvFormat::kFp8;
        b.n = 1;
        b.d = d;
        b.data = data.data();
        b.stride = d;
        b.scale = scale;
        std::vector<float> out(d);
        dequantize_block(b, out.data());
        const double token_bound = fp8_quant_error_bound(max_abs);
        for (int c = 0; c < d; ++c) {
          ASSERT_EQ(double(out[size_t(c)]), double(e4m3_to_f32(data[size_t(c)])) * s);
          const double t = std::fabs(double(x[size_t(c)])) / s, err = std::fabs(double(out[size_t(c)]) - x[size_t(c)]);
          const double slack = s * std::ldexp(std::min(t, 464.0), -23);  // the f32 quotient
          if (t <= 448.0) {
            ASSERT_LE(err, s * e4m3_half_step(t) + slack) << "x=" << x[size_t(c)] << " s=" << s;
          } else {
            ++saturated;
            ASSERT_EQ(data[size_t(c)] & 0x7f, 0x7e);
            ASSERT_LE(t - 448.0, 16.0 + 1e-9) << "saturation beyond half a top step";
            ASSERT_LE(err, s * (t - 448.0) + slack);
          }
          ASSERT_LE(err, token_bound) << "x=" << x[size_t(c)];
        }
      }
    }
  }
  EXPECT_GT(saturated, 0) << "no token exercised a scale rounded down";
}

// A zero token has scale 0 and codes 0; NaN reads back as NaN and does not set the scale;
// infinities saturate to +-448 scales.
TEST(DenseFormatTest, Fp8ZeroAndNonFinite) {
  std::vector<float> x(8, 0.0f);
  uint8_t data[8];
  uint16_t scale = kGuard16;
  quantize_token(KvFormat::kFp8, 0, 0, x.data(), 8, data, &scale, nullptr);
  EXPECT_EQ(scale, 0);
  for (uint8_t b : data) EXPECT_EQ(b, 0);

  x = {1.0f, -2.0f, std::numeric_limits<float>::quiet_NaN(), INFINITY, -INFINITY, 0.5f, 0.0f, 4.48f};
  quantize_token(KvFormat::kFp8, 0, 0, x.data(), 8, data, &scale, nullptr);
  EXPECT_EQ(scale, f32_to_f16(4.48f / 448.0f));
  EXPECT_EQ(data[2], 0x7f);
  EXPECT_EQ(data[3], 0x7e);
  EXPECT_EQ(data[4], 0xfe);
  EXPECT_TRUE(std::isnan(e4m3_to_f32(data[2]) * f16_to_f32(scale)));
}

// kv_block_bytes against the layouts: streams and f16 parameters.
TEST(DenseFormatTest, BlockBytes) {
  EXPECT_EQ(kv_block_bytes(KvFormat::kF32, 3, 64), 3 * 64 * 4);
  EXPECT_EQ(kv_block_bytes(KvFormat::kBF16, 3, 64), 3 * 64 * 2);
  EXPECT_EQ(kv_block_bytes(KvFormat::kFp8, 3, 64), 3 * (64 + 2));
  EXPECT_EQ(kv_block_bytes(KvFormat::kIntToken, 5, 64, 3, 32), 5 * (24 + 2 * 2 * 2));
  EXPECT_EQ(kv_block_bytes(KvFormat::kIntChannel, 17, 64, 3, 0), 64 * (7 + 4));
  EXPECT_EQ(kv_block_bytes(KvFormat::kIntChannel, 17, 64, 3, 8), 64 * (7 + 3 * 4));  // 3 token groups
}

}  // namespace
}  // namespace kvlab
