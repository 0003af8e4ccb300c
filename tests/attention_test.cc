// The attention engine against the double-precision reference, on awkward shapes: GQA ratios
// 1..8, head sizes 8..128, histories split into several blocks and chunks, prefills spanning
// several query tiles, blocks with explicit (gapped) positions; and the probabilities handed to
// an observer.
#include "attention/attend.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <map>
#include <random>
#include <vector>

namespace kvlab {
namespace {

// History stored as f32 blocks of `block` tokens with explicit positions. `scratch`: each block
// is copied into one buffer that the next call overwrites (as xKV builds its keys), so an engine
// that asked for a block before folding the previous one would attend to the wrong keys.
class VectorHistory final : public KvHistory {
 public:
  VectorHistory(const std::vector<float>& k, const std::vector<float>& v, const std::vector<int32_t>& pos, int kv_heads,
                int d, int block, bool scratch = false)
      : pos_(pos), kv_heads_(kv_heads), d_(d), block_(block), scratch_(scratch) {
    // Re-layout [n, kv_heads, d] into per-head [n, d].
    const int n = int(pos.size());
    k_.resize(size_t(kv_heads) * n * d);
    v_.resize(k_.size());
    for (int t = 0; t < n; ++t) {
      for (int g = 0; g < kv_heads; ++g) {
        for (int e = 0; e < d; ++e) {
          k_[(size_t(g) * n + t) * d + e] = k[(size_t(t) * kv_heads + g) * d + e];
          v_[(size_t(g) * n + t) * d + e] = v[(size_t(t) * kv_heads + g) * d + e];
        }
      }
    }
  }
  int n_blocks() const override { return (int(pos_.size()) + block_ - 1) / block_; }
  HistoryBlock block(int b, int g) const override {
    const int n = int(pos_.size());
    HistoryBlock hb;
    for (KvBlock* blk : {&hb.k, &hb.v}) {
      blk->format = KvFormat::kF32;
      blk->n = std::min(block_, n - b * block_);
      blk->d = d_;
      blk->stride = int64_t(d_) * sizeof(float);
    }
    const float* k = &k_[(size_t(g) * n + size_t(b) * block_) * d_];
    const float* v = &v_[(size_t(g) * n + size_t(b) * block_) * d_];
    if (scratch_) {
      const size_t floats = size_t(hb.k.n) * d_;
      buf_.assign(k, k + floats);
      buf_.insert(buf_.end(), v, v + floats);
      k = buf_.data(), v = buf_.data() + floats;
    }
    hb.k.data = reinterpret_cast<const uint8_t*>(k);
    hb.v.data = reinterpret_cast<const uint8_t*>(v);
    hb.positions = &pos_[size_t(b) * block_];
    return hb;
  }
  bool blocks_outlive_next_call() const override { return !scratch_; }

 private:
  std::vector<float> k_, v_;
  std::vector<int32_t> pos_;
  int kv_heads_, d_, block_;
  bool scratch_;
  mutable std::vector<float> buf_;  // scratch: the last block asked for (one thread: see the test)
};

struct Case {
  int n_heads, n_kv_heads, head_dim, n_hist, n_new;
};

class AttendTest : public ::testing::TestWithParam<Case> {};

TEST_P(AttendTest, MatchesReference) {
  const Case c = GetParam();
  AttentionShape shape{c.n_heads, c.n_kv_heads, c.head_dim, 1.0f / std::sqrt(float(c.head_dim))};
  std::mt19937 rng(c.n_hist * 131 + c.n_new * 7 + c.n_heads);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto fill = [&](std::vector<float>& x, size_t n) {
    x.resize(n);
    for (float& v : x) v = 2.0f * nd(rng);  // scores of a few units: softmax far from uniform
  };
  // History positions with gaps (as after eviction), then the new tokens after them.
  std::vector<int32_t> hist_pos, new_pos;
  int32_t p = 0;
  for (int i = 0; i < c.n_hist; ++i) hist_pos.push_back(p += 1 + (i % 5 == 3 ? 7 : 0));
  for (int i = 0; i < c.n_new; ++i) new_pos.push_back(++p);
  std::vector<float> q, hk, hv, nk, nv;
  fill(q, size_t(c.n_new) * shape.q_dim());
  fill(hk, size_t(c.n_hist) * shape.kv_dim());
  fill(hv, hk.size());
  fill(nk, size_t(c.n_new) * shape.kv_dim());
  fill(nv, nk.size());
  // Reference over the concatenation.
  std::vector<float> k_all = hk, v_all = hv;
  k_all.insert(k_all.end(), nk.begin(), nk.end());
  v_all.insert(v_all.end(), nv.begin(), nv.end());
  std::vector<int32_t> pos_all = hist_pos;
  pos_all.insert(pos_all.end(), new_pos.begin(), new_pos.end());
  std::vector<float> ref(q.size());
  attend_reference(shape, q.data(), new_pos.data(), c.n_new, k_all.data(), v_all.data(), pos_all.data(),
                   int(pos_all.size()), ref.data());
  // Outputs are convex combinations of values of magnitude ~2..8; f32 accumulation over up to a
  // few thousand keys stays well inside 1e-4 absolute.
  auto check_against_reference = [&](const std::vector<float>& out) {
    double max_err = 0;
    for (size_t i = 0; i < out.size(); ++i) max_err = std::max(max_err, double(std::fabs(out[i] - ref[i])));
    EXPECT_LE(max_err, 1e-4);
  };

  // The engine reads the blocks of the store with the next one's read-ahead hint, and the blocks
  // of the scratch history one call at a time (on one thread: the scratch is shared).
  for (const bool scratch : {false, true}) {
    SCOPED_TRACE(scratch ? "blocks in scratch" : "blocks in the store");
    VectorHistory history(hk, hv, hist_pos, c.n_kv_heads, c.head_dim, 32, scratch);
    std::vector<float> out(q.size());
    SeqAttention sa;
    sa.n_new = c.n_new;
    sa.positions = new_pos.data();
    sa.q = q.data();
    sa.k_new = nk.data();
    sa.v_new = nv.data();
    sa.out = out.data();
    sa.history = c.n_hist ? &history : nullptr;
    const int threads = omp_get_max_threads();
    if (scratch) omp_set_num_threads(1);
    attend(shape, {&sa, 1}, 0, nullptr);
    omp_set_num_threads(threads);
    check_against_reference(out);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttendTest,
    ::testing::Values(Case{1, 1, 8, 0, 1}, Case{2, 1, 8, 1, 1}, Case{8, 4, 8, 17, 3}, Case{9, 3, 64, 97, 1},
                      Case{9, 3, 64, 0, 97}, Case{4, 4, 64, 600, 1}, Case{8, 1, 128, 1100, 1},
                      Case{16, 2, 64, 45, 70}, Case{6, 2, 16, 4099, 1}, Case{12, 4, 8, 31, 33}),
    [](const ::testing::TestParamInfo<Case>& i) {
      const Case& c = i.param;
      std::string name;
      for (const auto& [label, value] : {std::pair{"q", c.n_heads}, {"_kv", c.n_kv_heads}, {"_d", c.head_dim},
                                         {"_hist", c.n_hist}, {"_new", c.n_new}}) {
        name += label;
        name += std::to_string(value);
      }
      return name;
    });

// Records what the engine reports.
class Recorder final : public AttentionObserver {
 public:
  bool wants(int, int, int32_t pos) const override { return pos % 2 == 0; }
  void observe(int, int, int32_t pos, int head, std::span<const float> probs,
               std::span<const int32_t> key_pos) const override {
    seen[{pos, head}] = {std::vector<float>(probs.begin(), probs.end()),
                         std::vector<int32_t>(key_pos.begin(), key_pos.end())};
  }
  mutable std::map<std::pair<int, int>, std::pair<std::vector<float>, std::vector<int32_t>>> seen;
};

TEST(AttendObserverTest, ReportsCausalProbabilities) {
  AttentionShape shape{4, 2, 8, 1.0f / std::sqrt(8.0f)};
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  const int n_hist = 40, n_new = 5;
  std::vector<float> q(n_new * shape.q_dim()), hk(n_hist * shape.kv_dim()), hv(hk.size()), nk(n_new * shape.kv_dim()),
      nv(nk.size());
  for (auto* x : {&q, &hk, &hv, &nk, &nv}) {
    for (float& v : *x) v = nd(rng);
  }
  std::vector<int32_t> hist_pos(n_hist), new_pos(n_new);
  for (int i = 0; i < n_hist; ++i) hist_pos[i] = i;
  for (int i = 0; i < n_new; ++i) new_pos[i] = n_hist + i;
  VectorHistory history(hk, hv, hist_pos, 2, 8, 16);
  std::vector<float> out(q.size());
  SeqAttention sa{0, n_new, new_pos.data(), q.data(), nk.data(), nv.data(), out.data(), &history};
  Recorder rec;
  attend(shape, {&sa, 1}, 0, &rec);
  ASSERT_EQ(rec.seen.size(), 3u * 4u);  // positions 40, 42, 44 x 4 heads
  for (const auto& [key, value] : rec.seen) {
    const auto& [probs, kpos] = value;
    EXPECT_EQ(int(probs.size()), key.first + 1);  // causal: every key up to the query itself
    EXPECT_EQ(kpos.back(), key.first);
    double sum = 0;
    for (float p : probs) sum += p;
    EXPECT_NEAR(sum, 1.0, 1e-5);
    // The output of that head is the probability-weighted sum of the values.
    const int t = key.first - n_hist, h = key.second, g = h / 2;
    for (int e = 0; e < 8; ++e) {
      double o = 0;
      for (size_t j = 0; j < probs.size(); ++j) {
        const float v = j < size_t(n_hist) ? hv[j * shape.kv_dim() + g * 8 + e]
                                           : nv[(j - n_hist) * shape.kv_dim() + g * 8 + e];
        o += probs[j] * v;
      }
      EXPECT_NEAR(out[t * shape.q_dim() + h * 8 + e], o, 1e-5);
    }
  }
}

}  // namespace
}  // namespace kvlab
