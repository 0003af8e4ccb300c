// Driver of scripts/kernel_ab.sh: the AVX2 integer kernels of two versions (version.cc, linked
// twice) over the same blocks, interleaved. Per case, two measures:
//   L1    one block, 50 calls per sample, 2000 samples per version: us per block, minimum
//   DRAM  one pass over a 256 MiB pool per sample, 15 samples per version: ms, minimum and median
// and new / old of each. One thread (the kernels' own cost, not the engine's split).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "ab.h"

extern "C" void kernel_ab_old(const AbPool*, const AbCase*, int, int, double*);
extern "C" void kernel_ab_new(const AbPool*, const AbCase*, int, int, double*);

namespace {

using Entry = void (*)(const AbPool*, const AbCase*, int, int, double*);

struct Samples {
  std::vector<double> scores, values;
  double min(const std::vector<double>& x) const { return *std::min_element(x.begin(), x.end()); }
  double median(std::vector<double> x) const {
    std::sort(x.begin(), x.end());
    return x[x.size() / 2];
  }
};

// Pool contents: codes of a fixed pseudo-random stream, unit scales of ~2^-5, zeros of ~0.1,
// a query in [-1, 1) and probabilities in [0, 1).
struct Pool {
  std::vector<uint8_t> keys, values;
  std::vector<uint16_t> scale, zero;
  std::vector<float> q, p, s, acc;
  AbPool view;
  Pool(const AbCase& c, int64_t bytes) {
    const int64_t per = int64_t(c.d) * kAbBlockTokens * c.bits / 8;
    const int blocks = int(std::max<int64_t>(1, bytes / (2 * per)));
    keys.resize(blocks * per + 4096);
    values.resize(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      keys[i] = uint8_t(uint32_t(i) * 2654435761u >> 13);
      values[i] = uint8_t(uint32_t(i) * 40503u >> 7);
    }
    const int64_t meta = int64_t(blocks) * std::max(c.d, kAbBlockTokens) * 8 + 4096;  // up to 8 groups
    scale.assign(meta, 0x2800);  // 2^-5
    zero.assign(meta, 0x2e66);   // ~0.1
    q.resize(8 * 1024);
    p.resize(8 * 1024);
    s.resize(8 * 1024);
    acc.resize(8 * 1024);
    for (size_t i = 0; i < q.size(); ++i) {
      q[i] = float(int(i * 7919 % 200) - 100) / 100.0f;
      p[i] = float(i * 31 % 100) / 100.0f;
    }
    // Keys and values read their scales and zeros from the same arrays (the same constants).
    view = {keys.data(), values.data(), scale.data(), zero.data(), scale.data(), zero.data(),
            q.data(), p.data(), s.data(), acc.data(), blocks};
  }
};

void run(const AbCase& c, bool dram) {
  const Pool pool(c, dram ? (int64_t(256) << 20) : 0);
  const AbPool* P = &pool.view;
  const int samples = dram ? 15 : 2000, calls = dram ? 1 : 50;
  const int count = dram ? P->blocks : 1;
  Samples s[2];
  const Entry entry[2] = {kernel_ab_old, kernel_ab_new};
  for (int i = 0; i < samples; ++i) {
    for (int v = 0; v < 2; ++v) {
      double ms[2];
      entry[v](P, &c, count, calls, ms);
      s[v].scores.push_back(dram ? ms[0] : ms[0] * 1e3 / calls);
      s[v].values.push_back(dram ? ms[1] : ms[1] * 1e3 / calls);
    }
  }
  std::printf("%-5s int%d d %3d rows %d key group %3d value group %3d | ", dram ? "DRAM" : "L1", c.bits, c.d, c.rows,
              c.key_group, c.value_group);
  const char* unit = dram ? "ms" : "us";
  for (int part = 0; part < 2; ++part) {
    const auto& o = part ? s[0].values : s[0].scores;
    const auto& n = part ? s[1].values : s[1].scores;
    std::printf("%s old %.3f new %.3f %s (min %.2f", part ? "values" : "scores", s[0].min(o), s[1].min(n), unit,
                s[1].min(n) / s[0].min(o));
    if (dram) std::printf(", median %.2f", s[1].median(n) / s[0].median(o));
    std::printf(")%s", part ? "\n" : " | ");
  }
  std::fflush(stdout);
}

}  // namespace

// kernel_ab [L1|DRAM|both] [bits,d,rows,key_group,value_group ...]; default: the layouts of
// attention_bench (8B: d 128, 4 rows; SmolLM2: d 64, 3 rows) in int2/3/4/8 groups of 128 and the
// kivi policy's groups of 32.
int main(int argc, char** argv) {
  const std::string_view mode = argc > 1 ? argv[1] : "both";
  if (mode != "L1" && mode != "DRAM" && mode != "both") {
    std::fprintf(stderr, "kernel_ab: the mode is L1, DRAM or both, got '%s'\n", argv[1]);
    return 2;
  }
  std::vector<AbCase> cases;
  for (int i = 2; i < argc; ++i) {
    AbCase c{};
    if (std::sscanf(argv[i], "%d,%d,%d,%d,%d", &c.bits, &c.d, &c.rows, &c.key_group, &c.value_group) != 5) {
      std::fprintf(stderr, "kernel_ab: a case is bits,d,rows,key_group,value_group, got '%s'\n", argv[i]);
      return 2;
    }
    const bool groups_ok = c.key_group >= 32 && kAbBlockTokens % c.key_group == 0 && c.value_group >= 32 &&
                           c.value_group % 32 == 0 && c.d % c.value_group == 0 && c.d / c.value_group <= 8;
    if (!(c.bits == 2 || c.bits == 3 || c.bits == 4 || c.bits == 8) || c.d % 32 != 0 || c.d > 256 || c.rows < 1 ||
        c.rows > 8 || !groups_ok || (c.bits == 8 && c.value_group != c.d)) {
      std::fprintf(stderr,
                   "kernel_ab: '%s' is not a case the AVX2 integer kernels take (bits 2/3/4/8, d a multiple of 32 up to "
                   "256, rows 1-8, key group 32/64/128, value group a multiple of 32 dividing d; 8 bits: one value group)\n",
                   argv[i]);
      return 2;
    }
    cases.push_back(c);
  }
  if (cases.empty()) {
    cases = {{4, 128, 4, 128, 128}, {8, 128, 4, 128, 128}, {3, 128, 4, 128, 128}, {2, 128, 4, 128, 128},
             {4, 128, 4, 32, 32},   {4, 64, 3, 128, 64},   {4, 64, 3, 32, 32}};
  }
  for (const AbCase& c : cases) {
    if (mode != "DRAM") run(c, false);
    if (mode != "L1") run(c, true);
  }
}
