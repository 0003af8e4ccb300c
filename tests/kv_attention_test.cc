// Validator for the fused packed-block kernels of kernels/cpu/kv_attention.h.
//
// Blocks are packed by the library's writers (kernels/cpu/kv_quantize.h) and read back by an
// independent reference reader of kernels/cpu/kv_format.h in double precision (itself checked
// against dequantize_block). Every ISA the CPU supports is checked:
//   1. accuracy: kv_scores / kv_accumulate against sum_c q * K(j, c) and acc + sum_j p * V(j, c)
//      computed in double from the SAME packed bytes, for every format and bit width, on awkward
//      shapes; the budget is the f32 rounding of the kernel's own sums (see f32_budget());
//   2. batch invariance: rows computed together are bit-identical to rows computed one at a time;
//   3. whole contexts through scores + online softmax + accumulate, against a one-shot softmax in
//      double.
#include "kernels/cpu/kv_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "base/half.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/kv_format.h"
#include "kernels/cpu/kv_quantize.h"
#include "kernels/cpu/softmax.h"
#include "testing/packed_blocks.h"

namespace kvlab {

namespace {

using namespace kvlab::testing;  // NOLINT: the packed-block helpers

// The largest |kv_scores - exact| for row q and token j of block k on `isa`: the f32 budget of the
// d-term dot product, plus, where the kernel quantizes the scale-folded query to int8 (int16 for
// 8-bit codes: the AVX2 integer paths, which AVX-512 uses too) (kv_scores_quantize_query), the
// bound derived in kv_attention.h:
//   qs = max_c |q[c] * scale[c]| / 127 (8-bit codes: / 32767),
//   |error| <= (qs / 2) * sum_c |code(j, c) - m|,  m = (2^bits - 1) / 2,
// with the f32 budget widened by the bias-correction sum m * sum_c |q[c] * scale[c]|.
double score_bound(Isa isa, const KvBlock& k, const float* q, int j) {
  double terms = 0;
  for (int c = 0; c < k.d; ++c) {
    const Terms t = ref_terms(k, j, c);
    terms += std::fabs(q[c]) * (std::fabs(t.main) + std::fabs(t.zero));
  }
  double bound = f32_budget(k.d, terms);
  if (kv_scores_quantize_query(isa, k) && k.format == KvFormat::kIntChannel) {
    // The query is quantized against the scales of token j's group.
    const double m = ((1 << k.bits) - 1) / 2.0;
    const uint16_t* scale = k.scale + j / channel_group_tokens(k) * k.d;
    double qmax = 0, qsum = 0, centred = 0;
    for (int c = 0; c < k.d; ++c) {
      const double qp = std::fabs(double(q[c]) * f16_to_f32(scale[c]));
      qmax = std::max(qmax, qp);
      qsum += qp;
      centred += std::fabs(double(read_code(k.data + c * k.stride, j, k.bits)) - m);
    }
    const double levels = k.bits == 8 ? 32767 : 127;
    const double qs = qmax / levels * (1 + 1e-6);  // the kernel's f32 qs may round up
    bound += qs / 2 * centred + f32_budget(k.d, m * qsum);
  } else if (kv_scores_quantize_query(isa, k)) {
    // kIntToken: q itself is quantized (qs = max|q| / 127); the scale of token j's group
    // multiplies each channel's error: |error| <= (qs / 2) sum_c scale[j, g(c)] |code(j, c) - m|.
    const double m = ((1 << k.bits) - 1) / 2.0;
    const int groups = k.d / k.group;
    double qmax = 0, qsum = 0, centred = 0;
    for (int c = 0; c < k.d; ++c) qmax = std::max(qmax, std::fabs(double(q[c])));
    for (int c = 0; c < k.d; ++c) {
      const double sc = f16_to_f32(k.scale[j * groups + c / k.group]);
      qsum += std::fabs(double(q[c])) * sc;
      centred += sc * std::fabs(double(read_code(k.data + j * k.stride, c, k.bits)) - m);
    }
    const double qs = qmax / 127 * (1 + 1e-6);
    bound += qs / 2 * centred + f32_budget(k.d, m * qsum);
  }
  return bound;
}

// The largest |kv_accumulate - exact| for channel c of one row (probabilities p, prior value
// acc0): the f32 budget of the n + 1 terms, plus, where the kernel quantizes p * scale to uint8
// (15 bits for 8-bit codes: the AVX2 integer paths, on AVX-512 too) (kv_accumulate_quantize_probs),
// per chunk of 128 tokens:
//   ps = max_{j, g} p[j] * scale[j, g] / 255 (8-bit codes: / 32767),
//   |error| <= (ps / 2) * sum_j |code(j, c) - m|.
double acc_bound(Isa isa, const KvBlock& v, const float* p, double acc0, int c) {
  double terms = std::fabs(acc0);
  for (int j = 0; j < v.n; ++j) {
    const Terms t = ref_terms(v, j, c);
    terms += std::fabs(p[j]) * (std::fabs(t.main) + std::fabs(t.zero));
  }
  double bound = f32_budget(v.n + 1, terms);
  if (kv_accumulate_quantize_probs(isa, v)) {
    const double m = ((1 << v.bits) - 1) / 2.0;
    const int groups = v.d / v.group;
    for (int j0 = 0; j0 < v.n; j0 += 128) {
      const int j1 = std::min(v.n, j0 + 128);
      double pmax = 0, psum = 0, centred = 0;
      for (int j = j0; j < j1; ++j) {
        for (int g = 0; g < groups; ++g) pmax = std::max(pmax, double(p[j]) * f16_to_f32(v.scale[j * groups + g]));
        psum += double(p[j]) * f16_to_f32(v.scale[j * groups + c / v.group]);
        centred += std::fabs(double(read_code(v.data + j * v.stride, c, v.bits)) - m);
      }
      const double ps = pmax / (v.bits == 8 ? 32767 : 255) * (1 + 1e-6);
      bound += ps / 2 * centred + f32_budget(j1 - j0, m * psum);
    }
  }
  return bound;
}


// ---------------------------------------------------------------------------------------------
// kv_scores / kv_accumulate against the double reader

struct Case {
  Isa isa;
  Format format;
};

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (Isa isa : supported_isas()) {
    for (const Format& f : all_formats()) cases.push_back({isa, f});
  }
  return cases;
}

class KvKernelTest : public ::testing::TestWithParam<Case> {};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return std::string(isa_name(info.param.isa)) + "_" + format_name(info.param.format);
}

TEST_P(KvKernelTest, ScoresMatchReference) {
  const Case& cs = GetParam();
  Rng rng(11);
  double worst = 0;  // largest error / budget seen (how tight the budget is)
  for (int d : {8, 17, 64, 128}) {
    for (int group : groups_for(cs.format, d)) {
      Format f = cs.format;
      f.group = group;
      for (int n : {1, 17, 97, 128, 300}) {
        const std::vector<float> x = kv_like(rng, n, d);
        const Packed p = pack(f, x.data(), n, d);
        for (int rows : {1, 2, 3, 4, 8}) {
          const std::vector<float> q = random_matrix(rng, rows, d);
          std::vector<float> s(size_t(rows) * n, std::numeric_limits<float>::quiet_NaN());
          kv_scores_isa(cs.isa, p.block, q.data(), rows, s.data());
          for (int r = 0; r < rows; ++r) {
            for (int j = 0; j < n; ++j) {
              double ref = 0;
              for (int c = 0; c < d; ++c) ref += double(q[r * d + c]) * value(p.block, j, c);
              const double budget = score_bound(cs.isa, p.block, q.data() + r * d, j);
              worst = std::max(worst, std::fabs(s[r * n + j] - ref) / budget);
              ASSERT_LE(std::fabs(s[r * n + j] - ref), budget)
                  << format_name(f) << " d=" << d << " n=" << n << " rows=" << rows << " r=" << r << " j=" << j
                  << " got " << s[r * n + j] << " want " << ref;
            }
          }
        }
      }
    }
  }
  RecordProperty("max_error_over_budget", std::to_string(worst));
  std::printf("%s scores: max error / budget %.3f\n", case_name({GetParam(), 0}).c_str(), worst);
}

TEST_P(KvKernelTest, AccumulateMatchesReference) {
  const Case& cs = GetParam();
  Rng rng(12);
  double worst = 0;
  for (int d : {8, 17, 64, 128}) {
    for (int group : groups_for(cs.format, d)) {
      Format f = cs.format;
      f.group = group;
      for (int n : {1, 17, 97, 128, 300}) {
        const std::vector<float> x = kv_like(rng, n, d);
        const Packed p = pack(f, x.data(), n, d);
        for (int rows : {1, 2, 3, 4, 8}) {
          std::vector<float> pr(size_t(rows) * n);
          for (float& v : pr) v = 0.5f + 0.5f * rng.uniform();  // probabilities in [0, 1)
          std::vector<float> acc = random_matrix(rng, rows, d);
          const std::vector<float> acc0 = acc;
          kv_accumulate_isa(cs.isa, p.block, pr.data(), rows, acc.data());
          for (int r = 0; r < rows; ++r) {
            for (int c = 0; c < d; ++c) {
              double ref = acc0[r * d + c];
              for (int j = 0; j < n; ++j) ref += double(pr[r * n + j]) * value(p.block, j, c);
              const double budget = acc_bound(cs.isa, p.block, pr.data() + r * n, acc0[r * d + c], c);
              worst = std::max(worst, std::fabs(acc[r * d + c] - ref) / budget);
              ASSERT_LE(std::fabs(acc[r * d + c] - ref), budget)
                  << format_name(f) << " d=" << d << " n=" << n << " rows=" << rows << " r=" << r << " c=" << c
                  << " got " << acc[r * d + c] << " want " << ref;
            }
          }
        }
      }
    }
  }
  RecordProperty("max_error_over_budget", std::to_string(worst));
  std::printf("%s accumulate: max error / budget %.3f\n", case_name({GetParam(), 0}).c_str(), worst);
}

// Rows computed together equal rows computed one at a time, bit for bit.
TEST_P(KvKernelTest, BatchInvariant) {
  const Case& cs = GetParam();
  Rng rng(13);
  for (int d : {17, 128}) {
    Format f = cs.format;
    if (d == 128 && (f.format == KvFormat::kIntToken || f.format == KvFormat::kIntChannel)) f.group = 32;
    for (int n : {17, 128}) {
      const std::vector<float> x = kv_like(rng, n, d);
      const Packed p = pack(f, x.data(), n, d);
      const int rows = 100;
      const std::vector<float> q = random_matrix(rng, rows, d);
      std::vector<float> s(size_t(rows) * n);
      kv_scores_isa(cs.isa, p.block, q.data(), rows, s.data());
      std::vector<float> pr(size_t(rows) * n);
      for (float& v : pr) v = 0.5f + 0.5f * rng.uniform();
      const std::vector<float> acc0 = random_matrix(rng, rows, d);
      std::vector<float> acc = acc0;
      kv_accumulate_isa(cs.isa, p.block, pr.data(), rows, acc.data());
      for (int r = 0; r < rows; ++r) {
        std::vector<float> s1(n), acc1(acc0.begin() + r * d, acc0.begin() + (r + 1) * d);
        kv_scores_isa(cs.isa, p.block, q.data() + r * d, 1, s1.data());
        kv_accumulate_isa(cs.isa, p.block, pr.data() + r * n, 1, acc1.data());
        ASSERT_EQ(0, std::memcmp(s1.data(), s.data() + r * n, sizeof(float) * n)) << "scores row " << r;
        ASSERT_EQ(0, std::memcmp(acc1.data(), acc.data() + r * d, sizeof(float) * d)) << "acc row " << r;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllIsasAndFormats, KvKernelTest, ::testing::ValuesIn(all_cases()), case_name);

// A kIntChannel block of several token groups gives, bit for bit, what each group gives as a
// block of its own (channel_sub_block): whether the kernel splits it or takes the groups in one
// pass (the AVX2 and the VNNI integer scores), every output keeps its one sequence of operations.
// Shapes: a head size with a partial channel quadruple (17), SmolLM2's and Llama's, one above
// the VNNI one-pass limit (264); groups that tile a 128-token page, span two of its tiles (96) or
// are smaller than a vector's tokens (8); pages of 2 and 3 tiles with a partial last group.
TEST(KvKernels, ChannelGroupsAreBlocksOfTheirOwn) {
  Rng rng(14);
  for (const Case& cs : all_cases()) {
    if (cs.format.format != KvFormat::kIntChannel) continue;
    for (int d : {17, 64, 128, 264}) {
      for (int group : {8, 32, 64, 96}) {
        for (int n : {128, 100, 300}) {
          Format f = cs.format;
          f.group = group;
          const std::vector<float> x = kv_like(rng, n, d);
          const Packed p = pack(f, x.data(), n, d);
          ASSERT_EQ(channel_groups(p.block), (n + group - 1) / group);
          const int rows = 6;
          const std::vector<float> q = random_matrix(rng, rows, d);
          std::vector<float> pr(size_t(rows) * n);
          for (float& v : pr) v = 0.5f + 0.5f * rng.uniform();
          std::vector<float> s(size_t(rows) * n), acc = random_matrix(rng, rows, d), acc_parts = acc;
          kv_scores_isa(cs.isa, p.block, q.data(), rows, s.data());
          kv_accumulate_isa(cs.isa, p.block, pr.data(), rows, acc.data());
          for (int t = 0; t < channel_groups(p.block); ++t) {
            const KvBlock sub = channel_sub_block(p.block, t);
            std::vector<float> s_sub(size_t(rows) * sub.n), p_sub(size_t(rows) * sub.n);
            kv_scores_isa(cs.isa, sub, q.data(), rows, s_sub.data());
            for (int r = 0; r < rows; ++r) {
              ASSERT_EQ(0, std::memcmp(s_sub.data() + r * sub.n, s.data() + r * n + t * group, sizeof(float) * sub.n))
                  << isa_name(cs.isa) << " " << format_name(f) << " d=" << d << " n=" << n << " group " << t
                  << " row " << r;
              std::copy_n(pr.data() + r * n + t * group, sub.n, p_sub.data() + r * sub.n);
            }
            kv_accumulate_isa(cs.isa, sub, p_sub.data(), rows, acc_parts.data());
          }
          ASSERT_EQ(0, std::memcmp(acc.data(), acc_parts.data(), sizeof(float) * acc.size()))
              << isa_name(cs.isa) << " " << format_name(f) << " d=" << d << " n=" << n;
        }
      }
    }
  }
}

// The reference reader agrees with the library's dequantize_block (which rounds code * scale +
// zero to f32 once: within 2^-24 of (|code * scale| + |zero|), plus the f32 rounding of the sum).
TEST(KvReference, ReaderMatchesDequantizeBlock) {
  Rng rng(21);
  for (const Format& f0 : all_formats()) {
    for (int d : {17, 64}) {
      Format f = f0;
      if (f.format == KvFormat::kIntToken && d == 64) f.group = 32;
      if (f.format == KvFormat::kIntChannel && d == 64) f.group = 8;  // 5 token groups
      const int n = 37;
      const std::vector<float> x = kv_like(rng, n, d);
      const Packed p = pack(f, x.data(), n, d);
      std::vector<float> out(size_t(n) * d);
      dequantize_block(p.block, out.data());
      for (int j = 0; j < n; ++j) {
        for (int c = 0; c < d; ++c) {
          const Terms t = ref_terms(p.block, j, c);
          ASSERT_LE(std::fabs(out[j * d + c] - (t.main + t.zero)), 2 * kU * (std::fabs(t.main) + std::fabs(t.zero)))
              << format_name(f) << " j=" << j << " c=" << c;
        }
      }
    }
  }
}

// fp8 has two readings on the SIMD ISAs (kv_dense.h): a cheap one with the 2^120 folded into the
// query or into p * scale, and the exact one for queries of |q| >= 128, p * scale > 128 and
// blocks with NaN codes. Both must meet the f32 budget: tiny, normal and huge magnitudes of the
// values (e4m3 subnormals included) against small and huge queries and probabilities.
TEST(KvKernels, Fp8EveryMagnitudeWithinBudget) {
  const int n = 37, d = 40, rows = 3;
  for (float x_amp : {1e-3f, 1.0f, 3e4f}) {
    for (float q_amp : {1e-2f, 1.0f, 1e3f}) {
      Rng rng(11);
      std::vector<float> x = kv_like(rng, n, d);
      for (float& e : x) e *= x_amp;
      const Packed p = pack({KvFormat::kFp8}, x.data(), n, d);
      const std::vector<float> q = random_matrix(rng, rows, d, q_amp);
      std::vector<float> pr(size_t(rows) * n);
      for (float& e : pr) e = std::min(1.0f, q_amp * rng.uniform());
      for (Isa isa : supported_isas()) {
        std::vector<float> s(size_t(rows) * n), acc(size_t(rows) * d, 0.0f);
        kv_scores_isa(isa, p.block, q.data(), rows, s.data());
        kv_accumulate_isa(isa, p.block, pr.data(), rows, acc.data());
        for (int r = 0; r < rows; ++r) {
          for (int j = 0; j < n; ++j) {
            double exact = 0;
            for (int c = 0; c < d; ++c) exact += double(q[r * d + c]) * value(p.block, j, c);
            EXPECT_LE(std::fabs(s[r * n + j] - exact), score_bound(isa, p.block, q.data() + r * d, j))
                << isa_name(isa) << " x " << x_amp << " q " << q_amp << " r=" << r << " j=" << j;
          }
          for (int c = 0; c < d; ++c) {
            double exact = 0;
            for (int j = 0; j < n; ++j) exact += double(pr[r * n + j]) * value(p.block, j, c);
            EXPECT_LE(std::fabs(acc[r * d + c] - exact), acc_bound(isa, p.block, pr.data() + r * n, 0.0, c))
                << isa_name(isa) << " x " << x_amp << " q " << q_amp << " r=" << r << " c=" << c;
          }
        }
      }
    }
  }
}

// e4m3 0x7f / 0xff are NaN (kv_format.h): a score or value that reads one is NaN on every ISA.
TEST(KvKernels, Fp8NanPropagates) {
  const int n = 5, d = 24;
  Rng rng(8);
  const std::vector<float> x = kv_like(rng, n, d);
  Packed p = pack({KvFormat::kFp8}, x.data(), n, d);
  p.data[2 * p.block.stride + 7] = 0xff;  // token 2, channel 7
  const std::vector<float> q = random_matrix(rng, 1, d);
  std::vector<float> pr(n, 0.5f);
  for (Isa isa : supported_isas()) {
    std::vector<float> s(n), acc(d, 0.0f);
    kv_scores_isa(isa, p.block, q.data(), 1, s.data());
    kv_accumulate_isa(isa, p.block, pr.data(), 1, acc.data());
    for (int j = 0; j < n; ++j) EXPECT_EQ(std::isnan(s[j]), j == 2) << isa_name(isa) << " j=" << j;
    for (int c = 0; c < d; ++c) EXPECT_EQ(std::isnan(acc[c]), c == 7) << isa_name(isa) << " c=" << c;
  }
}

// Where the AVX-512 VNNI paths quantize the query (keys) or the probabilities (values) to 8 bits,
// that error must stay well below the format's own quantization error. On keys and values with
// an outlier channel (kv_like), the RMS error of the fused result against the exact product of
// the SAME packed data (the operand quantization) is compared with the RMS error of that exact
// product against the original floats (the format's own error). Asserted: ratio < 1/4 in RMS
// (the derivation in kv_attention.h gives about 1/10 for 4-bit keys and uniform codes).
TEST(KvKernels, OperandQuantizationWellBelowFormatError) {
  const int n = 128, d = 128, rows = 4;
  int checked = 0;
  for (Isa isa : supported_isas()) {
    for (const Format& f : std::vector<Format>{{KvFormat::kIntChannel, 2}, {KvFormat::kIntChannel, 3},
                                                {KvFormat::kIntChannel, 4}, {KvFormat::kIntChannel, 8},
                                                {KvFormat::kIntToken, 2, 32}, {KvFormat::kIntToken, 4, 32},
                                                {KvFormat::kIntToken, 4, 128}, {KvFormat::kIntToken, 8, 128}}) {
      double op_keys = 0, fmt_keys = 0, op_vals = 0, fmt_vals = 0;
      bool keys_q = false, vals_q = false;
      for (int trial = 0; trial < 8; ++trial) {
        Rng rng(100 + trial);
        const std::vector<float> x = kv_like(rng, n, d);
        const Packed p = pack(f, x.data(), n, d);
        keys_q = kv_scores_quantize_query(isa, p.block);
        vals_q = kv_accumulate_quantize_probs(isa, p.block);
        const std::vector<float> q = random_matrix(rng, rows, d, 0.3f);
        std::vector<float> s(size_t(rows) * n);
        kv_scores_isa(isa, p.block, q.data(), rows, s.data());
        // Softmax-like probabilities: a few large, most small.
        std::vector<float> pr(size_t(rows) * n);
        for (float& v : pr) v = std::exp(4.0f * rng.uniform() - 4.0f);
        std::vector<float> acc(size_t(rows) * d, 0.0f);
        kv_accumulate_isa(isa, p.block, pr.data(), rows, acc.data());
        for (int r = 0; r < rows; ++r) {
          for (int j = 0; j < n; ++j) {
            double packed = 0, orig = 0;
            for (int c = 0; c < d; ++c) {
              packed += double(q[r * d + c]) * value(p.block, j, c);
              orig += double(q[r * d + c]) * x[j * d + c];
            }
            op_keys += (s[r * n + j] - packed) * (s[r * n + j] - packed);
            fmt_keys += (packed - orig) * (packed - orig);
          }
          for (int c = 0; c < d; ++c) {
            double packed = 0, orig = 0;
            for (int j = 0; j < n; ++j) {
              packed += double(pr[r * n + j]) * value(p.block, j, c);
              orig += double(pr[r * n + j]) * x[j * d + c];
            }
            op_vals += (acc[r * d + c] - packed) * (acc[r * d + c] - packed);
            fmt_vals += (packed - orig) * (packed - orig);
          }
        }
      }
      if (!keys_q && !vals_q) continue;  // f32 paths: covered by the exact budgets above
      ++checked;
      const double rk = std::sqrt(op_keys / fmt_keys), rv = std::sqrt(op_vals / fmt_vals);
      std::printf("%-7s %-16s keys: operand/format RMS error %.4f%s   values: %.4f%s\n", isa_name(isa),
                  format_name(f).c_str(), rk, keys_q ? "" : " (f32 path)", rv, vals_q ? "" : " (f32 path)");
      EXPECT_LT(rk, 0.25) << isa_name(isa) << " " << format_name(f);
      EXPECT_LT(rv, 0.25) << isa_name(isa) << " " << format_name(f);
    }
  }
  std::printf("%d (ISA, format) pairs take an integer path\n", checked);
}

// ---------------------------------------------------------------------------------------------
// Whole contexts: blocks of 128 tokens through scores, online softmax and accumulate, against a
// one-shot softmax in double over the same packed data.
//
// Budget, per row and channel c, from the per-block bounds above. The kernel's final weights are
// p'[j] = w[j] (1 + eta[j]) up to a factor common to all j (which cancels), w[j] = exp(s[j] - max):
// |eta| <= eta_max = exp(E) (1 + (blocks + 3) 2^-21) - 1, with E the largest score bound plus the
// rounding of s - m (2u max|s|), 2^-21 covering the exp error (< 2 ulp) and each rescale. Then
//   |o - o_exact| <= eta_max / (1 - eta_max) * max_j |v[j, c] - o_exact[c]|
//                  + (sum over blocks of the accumulate bounds + blocks * u * max|v| * l) / l
//                  + (n + blocks + 4) u |o_exact[c]|   (the sums in l and the final division).

TEST(KvAttentionContext, MatchesOneShotSoftmax) {
  const int d = 64, block = 128;
  for (Isa isa : supported_isas()) {
    for (const Format& f0 : all_formats()) {
      Format f = f0;
      if (f.format == KvFormat::kIntToken) f.group = 32;
      for (int ctx : {1, 17, 97, 4099}) {
        for (int rows : {1, 4}) {
          Rng rng(uint64_t(ctx) * 7 + rows);
          const std::vector<float> q = random_matrix(rng, rows, d, 0.4f);
          std::vector<Packed> ks, vs;
          for (int b0 = 0; b0 < ctx; b0 += block) {
            const int n = std::min(block, ctx - b0);
            const std::vector<float> kx = kv_like(rng, n, d), vx = kv_like(rng, n, d);
            ks.push_back(pack(f, kx.data(), n, d));
            vs.push_back(pack(f, vx.data(), n, d));
          }
          const int blocks = int(ks.size());
          std::vector<float> m(rows, -std::numeric_limits<float>::infinity()), l(rows, 0.0f);
          std::vector<float> acc(size_t(rows) * d, 0.0f), s;
          std::vector<double> score_err(rows, 0.0), acc_err(size_t(rows) * d, 0.0);
          for (int b = 0; b < blocks; ++b) {
            const int n = ks[b].block.n;
            s.assign(size_t(rows) * n, 0.0f);
            kv_scores_isa(isa, ks[b].block, q.data(), rows, s.data());
            for (int r = 0; r < rows; ++r) {
              for (int j = 0; j < n; ++j) {
                score_err[r] = std::max(score_err[r], score_bound(isa, ks[b].block, q.data() + r * d, j) +
                                                          2 * kU * std::fabs(s[r * n + j]));
              }
            }
            online_softmax_block_isa(isa, s.data(), rows, n, nullptr, 0, nullptr, m.data(), l.data(), acc.data(), d);
            for (int r = 0; r < rows; ++r) {
              for (int c = 0; c < d; ++c) acc_err[r * d + c] += acc_bound(isa, vs[b].block, s.data() + r * n, acc[r * d + c], c);
            }
            kv_accumulate_isa(isa, vs[b].block, s.data(), rows, acc.data());
          }
          for (int r = 0; r < rows; ++r) {
            std::vector<double> w;
            double mx = -INFINITY;
            for (const Packed& k : ks) {
              for (int j = 0; j < k.block.n; ++j) {
                double v = 0;
                for (int c = 0; c < d; ++c) v += double(q[r * d + c]) * value(k.block, j, c);
                w.push_back(v);
                mx = std::max(mx, v);
              }
            }
            double den = 0;
            for (double& v : w) den += (v = std::exp(v - mx));
            const double eta = std::exp(score_err[r]) * (1 + (blocks + 3) * std::ldexp(1.0, -21)) - 1;
            for (int c = 0; c < d; ++c) {
              double num = 0, vmax = 0;
              size_t t = 0;
              for (const Packed& v : vs) {
                for (int j = 0; j < v.block.n; ++j, ++t) num += w[t] * value(v.block, j, c);
              }
              const double want = num / den;
              for (const Packed& v : vs) {
                for (int j = 0; j < v.block.n; ++j) vmax = std::max(vmax, std::fabs(value(v.block, j, c) - want));
              }
              const double got = acc[r * d + c] / l[r];
              const double budget = eta / (1 - eta) * vmax +
                                    (acc_err[r * d + c] + blocks * kU * (vmax + std::fabs(want)) * l[r]) / l[r] +
                                    (ctx + blocks + 4) * kU * std::fabs(want);
              ASSERT_LE(std::fabs(got - want), budget) << isa_name(isa) << " " << format_name(f) << " ctx=" << ctx
                                                       << " rows=" << rows << " r=" << r << " c=" << c;
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvlab
