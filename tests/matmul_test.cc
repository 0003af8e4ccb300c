// Validator for kernels/cpu/matmul.h and the ISA dispatch in kernels/cpu/cpu_features.h.
//
// Every ISA the CPU supports is checked twice:
//   1. accuracy: against a double-precision reference, over a grid of awkward shapes;
//   2. batch invariance (the contract of matmul.h): bit-identical rows whatever the batch size,
//      the split of a batch into sub-batches, the thread count or the pointer alignment.
#include "kernels/cpu/matmul.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <ostream>
#include <vector>

#include "base/aligned_vector.h"
#include "kernels/cpu/cpu_features.h"
#include "testing/rng.h"

namespace kvlab {

// Test names and failure messages show "avx2" rather than the enum's bytes.
static void PrintTo(Isa isa, std::ostream* os) { *os << isa_name(isa); }

namespace {

using kvlab::testing::Rng;

// A float buffer whose data() is 64-byte aligned plus `offset` floats, so that tests choose the
// alignment rather than inherit malloc's.
class Buffer {
 public:
  explicit Buffer(int64_t n, int offset = 0) : storage_(new float[size_t(n + offset + 16)]), n_(n) {
    const uintptr_t base = reinterpret_cast<uintptr_t>(storage_.get());
    data_ = reinterpret_cast<float*>((base + 63) & ~uintptr_t(63)) + offset;
    // NaN everywhere catches outputs the kernel forgets to write.
    std::fill(data_, data_ + n, std::numeric_limits<float>::quiet_NaN());
  }
  float* data() { return data_; }
  const float* data() const { return data_; }
  int64_t size() const { return n_; }
  float& operator[](int64_t i) { return data_[i]; }

 private:
  std::unique_ptr<float[]> storage_;
  float* data_;
  int64_t n_;
};

// Copy of `src` placed at a chosen alignment offset.
Buffer copy_at(const Buffer& src, int offset) {
  Buffer b(src.size(), offset);
  std::memcpy(b.data(), src.data(), size_t(src.size()) * sizeof(float));
  return b;
}

// True if the first n floats of a and b are the same bits.
::testing::AssertionResult same_bits(const float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) {
      return ::testing::AssertionFailure() << "element " << i << ": " << a[i] << " vs " << b[i];
    }
  }
  return ::testing::AssertionSuccess();
}

// Restores the OpenMP thread count on scope exit.
class ThreadCountGuard {
 public:
  ThreadCountGuard() : saved_(omp_get_max_threads()) {}
  ~ThreadCountGuard() { omp_set_num_threads(saved_); }

 private:
  int saved_;
};

// ---------------------------------------------------------------------------------------------
// Accuracy against a double-precision reference

// Error bound. Each y[t, o] is a sum of k products computed in binary32 (unit roundoff
// u = 2^-24) by some fixed tree of roundings: separately rounded products or FMAs, one or more
// accumulators, a horizontal reduction, zero padding. An operation with an exact zero operand
// adds no rounding, so along the path from any product to the result there are at most k
// roundings (each nontrivial addition merges in at least one more of the k terms). The classic
// bound for such a sum (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed.,
// eq. 3.5 and sec. 4.2) is then
//     |y_computed - y_exact| <= gamma_k * sum_i |x_i * w_i|,   gamma_k = k*u / (1 - k*u).
// The double reference is exact to ~k * 2^-53 relative, far below one more u, so the test uses
// gamma_{k+1} and no fudge factor. A kernel that drops, repeats or misplaces a term errs by a
// whole |x_i w_i| (~0.25 on average here), far above gamma_{k+1} * sum for k <= 1536 in most
// outputs, so a wrong kernel cannot hide in the bound.
double error_bound(int64_t k, double abs_sum) {
  const double u = std::ldexp(1.0, -24);
  const double n = double(k + 1);
  return n * u / (1.0 - n * u) * abs_sum;
}

struct Shape {
  int64_t n_tokens, k, n_out;
};

void expect_close_to_reference(Isa isa, const Shape& s, uint64_t seed) {
  Rng rng(seed);
  Buffer x(s.n_tokens * s.k), w(s.n_out * s.k), y(s.n_tokens * s.n_out);
  rng.fill(x.data(), x.size());
  rng.fill(w.data(), w.size());
  matmul_isa(isa, x.data(), s.n_tokens, s.k, w.data(), s.n_out, y.data());
  int64_t failures = 0;
  for (int64_t t = 0; t < s.n_tokens; ++t) {
    for (int64_t o = 0; o < s.n_out; ++o) {
      double exact = 0.0, abs_sum = 0.0;
      for (int64_t i = 0; i < s.k; ++i) {
        const double p = double(x[t * s.k + i]) * double(w[o * s.k + i]);
        exact += p;
        abs_sum += std::fabs(p);
      }
      const double got = y[t * s.n_out + o];
      const double err = std::fabs(got - exact);
      if (!(err <= error_bound(s.k, abs_sum)) && failures++ < 5) {  // !(<=) also catches NaN
        ADD_FAILURE() << isa_name(isa) << " n_tokens=" << s.n_tokens << " k=" << s.k
                      << " n_out=" << s.n_out << " y[" << t << "," << o << "] = " << got
                      << ", exact " << exact << ", error " << err << " > bound "
                      << error_bound(s.k, abs_sum);
      }
    }
  }
}

class MatmulIsaTest : public ::testing::TestWithParam<Isa> {};

// Every combination of awkward sizes: k below, at and across the 8- and 16-float vector widths
// and the real model sizes (576, 1536); token counts below, at and across the 3- and 4-token
// tiles; output counts below, at and across the 4-row tiles, the 4 decode streams and the
// threading threshold.
TEST_P(MatmulIsaTest, MatchesDoubleReferenceOnAwkwardShapes) {
  const Isa isa = GetParam();
  uint64_t seed = 1;
  for (int64_t k : {1, 3, 7, 8, 15, 16, 17, 64, 172, 575, 576, 1536}) {
    for (int64_t n_tokens : {1, 2, 3, 5, 8, 17, 100}) {
      for (int64_t n_out : {1, 3, 17, 192, 1000}) {
        expect_close_to_reference(isa, {n_tokens, k, n_out}, seed++);
      }
    }
  }
}

// k == 0: every output is an empty sum, exactly zero; n_tokens == 0 touches nothing.
TEST_P(MatmulIsaTest, ZeroLengthDotsGiveZero) {
  const Isa isa = GetParam();
  Buffer y(5 * 7);
  matmul_isa(isa, nullptr, 5, 0, nullptr, 7, y.data());
  for (int64_t i = 0; i < y.size(); ++i) EXPECT_EQ(y[i], 0.0f) << i;
  matmul_isa(isa, nullptr, 0, 16, nullptr, 7, nullptr);  // nothing to do, nothing touched
}

// ---------------------------------------------------------------------------------------------
// Batch invariance

// Shapes that send the same rows through different code paths: serial vs threaded (the
// threshold is 65536 multiply-adds); the decode path (n_tokens <= 3 or 4: rows read as 4
// streams, whose split moves with the row count and the thread count) vs the prefill tiles of
// 4 rows x 3 or 4 tokens vs narrower tiles and single rows; one cache block vs several (at
// k = 576 a token block is 56 tokens: 260 tokens end in a 36-token block, 57 tokens in a
// 1-token block, which takes the decode path inside a prefill).
const Shape kInvarianceShapes[] = {
    {100, 576, 192}, {17, 575, 1000}, {8, 1536, 576}, {5, 17, 17},    {100, 64, 17},
    {3, 7, 3},       {2, 172, 1000},  {100, 16, 3},   {33, 1, 61},    {260, 576, 70},
    {57, 576, 45},   {1, 576, 1000},  {1, 1536, 577}, {4, 576, 1000}, {3, 575, 193},
};

struct Inputs {
  Buffer x, w;
};

Inputs random_inputs(const Shape& s, uint64_t seed) {
  Inputs in{Buffer(s.n_tokens * s.k), Buffer(s.n_out * s.k)};
  Rng rng(seed);
  rng.fill(in.x.data(), in.x.size());
  rng.fill(in.w.data(), in.w.size());
  return in;
}

// Rows of the batched product equal the same rows computed one token at a time, and computed
// in uneven sub-batches.
TEST_P(MatmulIsaTest, BatchRowsEqualSingleTokenRows) {
  const Isa isa = GetParam();
  uint64_t seed = 100;
  for (const Shape& s : kInvarianceShapes) {
    SCOPED_TRACE(::testing::Message() << isa_name(isa) << " n_tokens=" << s.n_tokens << " k=" << s.k
                                      << " n_out=" << s.n_out);
    Inputs in = random_inputs(s, seed++);
    Buffer batch(s.n_tokens * s.n_out);
    matmul_isa(isa, in.x.data(), s.n_tokens, s.k, in.w.data(), s.n_out, batch.data());

    Buffer one(s.n_tokens * s.n_out);
    for (int64_t t = 0; t < s.n_tokens; ++t) {
      matmul_isa(isa, in.x.data() + t * s.k, 1, s.k, in.w.data(), s.n_out,
                 one.data() + t * s.n_out);
    }
    EXPECT_TRUE(same_bits(batch.data(), one.data(), batch.size())) << "one token at a time";

    // Sub-batches of 1, 2, 3, ... tokens.
    Buffer split(s.n_tokens * s.n_out);
    for (int64_t t = 0, len = 1; t < s.n_tokens; t += len, ++len) {
      const int64_t n = std::min(len, s.n_tokens - t);
      matmul_isa(isa, in.x.data() + t * s.k, n, s.k, in.w.data(), s.n_out,
                 split.data() + t * s.n_out);
    }
    EXPECT_TRUE(same_bits(batch.data(), split.data(), batch.size())) << "uneven sub-batches";
  }
}

// 1, 2 and 3 threads (3 gives uneven splits on any machine) produce the same bits.
TEST_P(MatmulIsaTest, ResultIndependentOfThreadCount) {
  const Isa isa = GetParam();
  ThreadCountGuard guard;
  uint64_t seed = 200;
  for (const Shape& s : kInvarianceShapes) {
    SCOPED_TRACE(::testing::Message() << isa_name(isa) << " n_tokens=" << s.n_tokens << " k=" << s.k
                                      << " n_out=" << s.n_out);
    Inputs in = random_inputs(s, seed++);
    Buffer ref(s.n_tokens * s.n_out);
    omp_set_num_threads(1);
    matmul_isa(isa, in.x.data(), s.n_tokens, s.k, in.w.data(), s.n_out, ref.data());
    for (int threads : {2, 3}) {
      omp_set_num_threads(threads);
      Buffer y(s.n_tokens * s.n_out);
      matmul_isa(isa, in.x.data(), s.n_tokens, s.k, in.w.data(), s.n_out, y.data());
      EXPECT_TRUE(same_bits(ref.data(), y.data(), y.size())) << threads << " threads";
    }
  }
}

// x, w and y each moved off 64-byte alignment by one float (alone and together) change nothing.
TEST_P(MatmulIsaTest, ResultIndependentOfPointerAlignment) {
  const Isa isa = GetParam();
  uint64_t seed = 300;
  for (const Shape& s : kInvarianceShapes) {
    SCOPED_TRACE(::testing::Message() << isa_name(isa) << " n_tokens=" << s.n_tokens << " k=" << s.k
                                      << " n_out=" << s.n_out);
    Inputs in = random_inputs(s, seed++);
    Buffer ref(s.n_tokens * s.n_out);
    matmul_isa(isa, in.x.data(), s.n_tokens, s.k, in.w.data(), s.n_out, ref.data());
    for (int mask = 1; mask < 8; ++mask) {  // bit 0: x, bit 1: w, bit 2: y misaligned
      const Buffer x = copy_at(in.x, mask & 1);
      const Buffer w = copy_at(in.w, (mask >> 1) & 1);
      Buffer y(s.n_tokens * s.n_out, (mask >> 2) & 1);
      matmul_isa(isa, x.data(), s.n_tokens, s.k, w.data(), s.n_out, y.data());
      EXPECT_TRUE(same_bits(ref.data(), y.data(), y.size())) << "misalignment mask " << mask;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Block-format weights (BlockMatrix): the product over the packed rows is bit for bit the f32
// product over the same rows dequantized, whatever the path (decode streams dequantized in
// registers, prefill blocks through scratch, threads).

// A random BlockMatrix with its planes. Scales are f16 values widened (as a file's are), some
// negative, some subnormal in f16; Q4_1 minima likewise.
struct RandomBlocks {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  BlockMatrix m;
};

// The value of a random f16 with its exponent field in [e_lo, e_hi] (0: subnormal).
float random_f16_value(Rng& rng, int e_lo, int e_hi) {
  const uint32_t u = rng.next();
  const float mant = float(u & 0x3ff), sign = (u >> 10) & 1 ? -1.0f : 1.0f;
  const int e = e_lo + int((u >> 11) % uint32_t(e_hi - e_lo + 1));
  return sign * (e == 0 ? std::ldexp(mant, -24) : std::ldexp(1024.0f + mant, e - 25));
}

RandomBlocks random_blocks(BlockFormat f, int64_t n_out, int64_t k, uint64_t seed) {
  Rng rng(seed);
  RandomBlocks r;
  r.codes.resize(size_t(n_out * block_code_bytes(f, k)));
  r.scales.resize(size_t(n_out * block_scale_floats(f, k)));
  for (uint8_t& c : r.codes) c = uint8_t(rng.next() >> 23);
  // Mostly scales near 2^-6; every 7th anywhere in f16's range, subnormals included.
  for (size_t i = 0; i < r.scales.size(); ++i) r.scales[i] = i % 7 == 0 ? random_f16_value(rng, 0, 30) : random_f16_value(rng, 8, 11);
  r.m = BlockMatrix{f, r.codes.data(), r.scales.data(), k};
  return r;
}

TEST_P(MatmulIsaTest, BlockWeightsGiveTheBitsOfTheirF32Rows) {
  const Isa isa = GetParam();
  ThreadCountGuard guard;
  uint64_t seed = 400;
  for (BlockFormat f : {BlockFormat::kQ4_1, BlockFormat::kQ8_0}) {
    for (int64_t k : {32, 64, 576, 1536}) {
      for (int64_t n_out : {1, 3, 5, 67, 300}) {
        const RandomBlocks blocks = random_blocks(f, n_out, k, seed++);
        std::vector<float> dense(size_t(n_out * k));
        dequantize_rows(blocks.m, 0, n_out, dense.data());
        for (int64_t n_tokens : {1, 2, 3, 4, 5, 16, 70}) {
          SCOPED_TRACE(::testing::Message() << isa_name(isa) << (f == BlockFormat::kQ4_1 ? " q4_1" : " q8_0")
                                            << " n_tokens=" << n_tokens << " k=" << k << " n_out=" << n_out);
          Rng rng(seed++);
          Buffer x(n_tokens * k), ref(n_tokens * n_out);
          rng.fill(x.data(), x.size());
          matmul_isa(isa, x.data(), n_tokens, k, dense.data(), n_out, ref.data());
          for (int threads : {1, 2, 3}) {
            omp_set_num_threads(threads);
            Buffer y(n_tokens * n_out);
            matmul_isa(isa, x.data(), n_tokens, blocks.m, n_out, y.data());
            ASSERT_TRUE(same_bits(ref.data(), y.data(), y.size())) << threads << " threads";
          }
        }
      }
    }
  }
}

// The planes' meaning, element by element: w = d * q + m (Q4_1, low nibbles first) and w = d * q
// (Q8_0), computed here in double (exact) and compared with what dequantize_rows gives.
TEST(MatmulTest, DequantizeRowsFollowsTheBlockLayout) {
  for (BlockFormat f : {BlockFormat::kQ4_1, BlockFormat::kQ8_0}) {
    const int64_t n_out = 3, k = 64;
    const RandomBlocks b = random_blocks(f, n_out, k, 7);
    std::vector<float> got(size_t(n_out * k));
    dequantize_rows(b.m, 0, n_out, got.data());
    for (int64_t r = 0; r < n_out; ++r) {
      for (int64_t i = 0; i < k; ++i) {
        const int64_t blk = r * (k / 32) + i / 32, j = i % 32;
        double want;
        if (f == BlockFormat::kQ4_1) {
          const uint8_t byte = b.codes[size_t(blk * 16 + j % 16)];
          const int q = j < 16 ? byte & 0x0f : byte >> 4;
          want = double(float(double(b.scales[size_t(2 * blk)]) * q + double(b.scales[size_t(2 * blk + 1)])));
        } else {
          want = double(b.scales[size_t(blk)]) * double(int8_t(b.codes[size_t(blk * 32 + j)]));
        }
        ASSERT_EQ(double(got[size_t(r * k + i)]), want) << "row " << r << " element " << i;
      }
    }
    // A row range starts where the whole-matrix rows do.
    std::vector<float> last_row(static_cast<size_t>(k));
    dequantize_rows(b.m, 2, 3, last_row.data());
    EXPECT_TRUE(same_bits(last_row.data(), got.data() + 2 * k, k));
  }
}

INSTANTIATE_TEST_SUITE_P(SupportedIsas, MatmulIsaTest, ::testing::ValuesIn(supported_isas()),
                         [](const ::testing::TestParamInfo<Isa>& info) {
                           return isa_name(info.param);
                         });

// matmul() is matmul_isa() with the active ISA.
TEST(MatmulTest, DispatchUsesActiveIsa) {
  const Shape s{5, 575, 17};
  Inputs in = random_inputs(s, 400);
  Buffer a(s.n_tokens * s.n_out), b(s.n_tokens * s.n_out);
  matmul(in.x.data(), s.n_tokens, s.k, in.w.data(), s.n_out, a.data());
  matmul_isa(active_isa(), in.x.data(), s.n_tokens, s.k, in.w.data(), s.n_out, b.data());
  EXPECT_TRUE(same_bits(a.data(), b.data(), a.size()));
}

// The decoder keeps its matrices and activations in AlignedVector (base/aligned_vector.h) so
// that the products' vector loads never straddle two cache lines: its storage starts on 64 bytes
// at every size, after growth and after a copy.
TEST(AlignedVectorTest, StorageStartsOnACacheLine) {
  for (size_t n : {size_t(1), size_t(3), size_t(17), size_t(4096), size_t(1) << 20}) {
    AlignedVector<float> v(n, 1.0f);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data()) % 64, 0u) << n;
    v.insert(v.end(), n + 5, 2.0f);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data()) % 64, 0u) << n << " after growth";
    const AlignedVector<float> c = v;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(c.data()) % 64, 0u) << n << " copied";
    EXPECT_EQ(c.back(), 2.0f);
  }
}

// ---------------------------------------------------------------------------------------------
// ISA names and selection

TEST(CpuFeaturesTest, ParseIsaAcceptsExactNames) {
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    StatusOr<Isa> parsed = parse_isa(isa_name(isa));
    ASSERT_TRUE(parsed.ok()) << isa_name(isa);
    EXPECT_EQ(*parsed, isa);
  }
}

TEST(CpuFeaturesTest, ParseIsaRejectsBadNames) {
  for (const char* bad : {"", "avx", "AVX2", "avx512f", "sse4", "neon", "scalar ", "avx2,fma"}) {
    StatusOr<Isa> parsed = parse_isa(bad);
    ASSERT_FALSE(parsed.ok()) << "'" << bad << "'";
    EXPECT_EQ(parsed.status().code(), ErrorCode::kInvalidArgument);
  }
  EXPECT_FALSE(parse_isa(nullptr).ok());
}

TEST(CpuFeaturesTest, ActiveIsaIsNoWiderThanDetected) {
  EXPECT_LE(int(active_isa()), int(detected_isa()));
}

// The ISA $KVLAB_ISA names is the active one, else the widest. The line printed lets
// scripts/run_tests.sh check that its narrower-ISA reruns reach the tests through ctest.
TEST(CpuFeaturesTest, ActiveIsaIsTheEnvironmentsOrTheWidest) {
  const Isa active = active_isa();  // the process exits with code 2 on a bad $KVLAB_ISA
  const char* env = std::getenv("KVLAB_ISA");
  EXPECT_EQ(active, env && env[0] != '\0' ? *parse_isa(env) : detected_isa());
  std::printf("active ISA: %s\n", isa_name(active));
}

// Every supported ISA is accepted and becomes active; an ISA the CPU lacks is refused with
// kUnsupported and leaves the active ISA alone (on a CPU with every ISA there is none to refuse).
TEST(CpuFeaturesTest, SetActiveIsaAcceptsSupportedAndRejectsOthers) {
  const Isa saved = active_isa();
  for (Isa isa : supported_isas()) {
    EXPECT_TRUE(set_active_isa(isa).ok()) << isa_name(isa);
    EXPECT_EQ(active_isa(), isa);
  }
  ASSERT_TRUE(set_active_isa(saved).ok());
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (int(isa) <= int(detected_isa())) continue;
    const Status st = set_active_isa(isa);
    EXPECT_EQ(st.code(), ErrorCode::kUnsupported) << isa_name(isa);
    EXPECT_EQ(active_isa(), saved);
  }
}

// $KVLAB_ISA is read at first use, so each case runs in a fresh process ("threadsafe" death
// tests re-execute the binary) that sets it before anything asks for the active ISA.
TEST(CpuFeaturesDeathTest, BadIsaEnvironmentExitsWithCode2) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        setenv("KVLAB_ISA", "avx9000", 1);
        (void)active_isa();
      },
      ::testing::ExitedWithCode(2), "KVLAB_ISA.*unknown ISA 'avx9000'");
}

TEST(CpuFeaturesDeathTest, EnvironmentIsaTheCpuLacksExitsWithCode2) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  if (detected_isa() == Isa::kAvx512) {
    GTEST_SKIP() << "this CPU supports every ISA; nothing to refuse";
  }
  EXPECT_EXIT(
      {
        setenv("KVLAB_ISA", "avx512", 1);
        (void)active_isa();
      },
      ::testing::ExitedWithCode(2), "KVLAB_ISA=avx512 but this CPU");
}

// Body of EnvironmentSelectsIsa's child process: exit code 0 if $KVLAB_ISA=isa made `isa` the
// active ISA and matmul() runs it.
[[noreturn]] void exit_zero_if_environment_selects(Isa isa) {
  setenv("KVLAB_ISA", isa_name(isa), 1);
  const Shape s{3, 33, 9};
  Inputs in = random_inputs(s, 500);
  Buffer a(s.n_tokens * s.n_out), b(s.n_tokens * s.n_out);
  matmul(in.x.data(), s.n_tokens, s.k, in.w.data(), s.n_out, a.data());
  matmul_isa(isa, in.x.data(), s.n_tokens, s.k, in.w.data(), s.n_out, b.data());
  std::exit(active_isa() == isa && same_bits(a.data(), b.data(), a.size()) ? 0 : 1);
}

// Each supported ISA named in $KVLAB_ISA becomes the active one and matmul() uses it.
TEST(CpuFeaturesDeathTest, EnvironmentSelectsIsa) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  for (Isa isa : supported_isas()) {
    EXPECT_EXIT(exit_zero_if_environment_selects(isa), ::testing::ExitedWithCode(0), "")
        << isa_name(isa);
  }
}

}  // namespace
}  // namespace kvlab
