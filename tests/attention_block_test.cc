// attn_accumulate on every ISA the CPU has, against a double-precision reference on awkward
// shapes (head sizes 1..130 incl. vector tails, row counts 1..7, strided values), and its
// contract: each row's result does not depend on the rows computed with it.
#include "kernels/cpu/attention_block.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace kvlab {
namespace {

TEST(AttnAccumulateTest, MatchesReferenceAndIsRowInvariant) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (Isa isa : supported_isas()) {
    for (int d : {1, 7, 8, 16, 17, 33, 64, 100, 128, 130}) {
      for (int rows : {1, 2, 3, 4, 7}) {
        for (int n : {1, 5, 32, 61}) {
          const int64_t ldv = d + 3;  // strided rows
          std::vector<float> p(size_t(rows) * n), v(size_t(n) * ldv), acc0(size_t(rows) * d);
          for (float& x : p) x = 0.5f * (u(rng) + 1.0f);
          for (float& x : v) x = u(rng);
          for (float& x : acc0) x = u(rng);
          // 16 sentinels after the last row catch a store beyond d (each row's own overflow would
          // land in the next row and fail the comparison with the reference).
          std::vector<float> acc = acc0;
          acc.resize(acc0.size() + 16, 12345.0f);
          attn_accumulate_isa(isa, p.data(), rows, n, v.data(), ldv, d, acc.data());
          for (size_t i = acc0.size(); i < acc.size(); ++i) ASSERT_EQ(acc[i], 12345.0f) << "wrote past the rows";
          for (int r = 0; r < rows; ++r) {
            // One row alone gives the same bits as inside the group.
            std::vector<float> one(acc0.begin() + r * d, acc0.begin() + (r + 1) * d);
            attn_accumulate_isa(isa, &p[size_t(r) * n], 1, n, v.data(), ldv, d, one.data());
            for (int e = 0; e < d; ++e) {
              double want = acc0[size_t(r) * d + e], mag = std::fabs(want);
              for (int j = 0; j < n; ++j) {
                want += double(p[size_t(r) * n + j]) * v[size_t(j) * ldv + e];
                mag += std::fabs(double(p[size_t(r) * n + j]) * v[size_t(j) * ldv + e]);
              }
              // n + 1 roundings at most on the running sum: |err| <= (n + 1) * eps * sum|terms|.
              const double tol = (n + 1) * 6e-8 * mag + 1e-12;
              ASSERT_NEAR(acc[size_t(r) * d + e], want, tol) << isa_name(isa) << " d=" << d << " rows=" << rows;
              ASSERT_EQ(acc[size_t(r) * d + e], one[e]) << isa_name(isa) << " d=" << d << " rows=" << rows;
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvlab
