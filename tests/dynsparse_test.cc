// Decode sparsification (kvcache/policies/dynsparse_policy.cc) beyond the conformance suite:
// keep = 1 is the base cache bit for bit; dropped tokens are absent from layers >= K and present
// below it, with their true positions; the cached decode equals a recomputation of the whole
// sequence at every step (algorithms.md 4.4) through an independent attention; the controller
// meets the asked keep rate; impossible parameters are clear errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <cmath>
#include <cstdio>
#include <set>

#include "attention/attend.h"
#include "kvcache/dynsparse_decider.h"
#include "kvcache/kv_cache.h"
#include "kvcache/registry.h"
#include "tests/testing/models.h"
#include "tests/testing/test_paths.h"

namespace kvlab {
namespace {

constexpr int kPrompt = 40;

// Prefills kPrompt tokens, then decodes the rest of `ids` one token per step.
std::vector<std::vector<float>> decode(const Model& m, KvCache& cache, const std::vector<int32_t>& ids,
                                       const std::function<void(int32_t)>& after_step = nullptr) {
  return testing::decode_steps(m, cache, ids, kPrompt, after_step);
}

// An untrained decider network for stories260K at layer K, written into `dir` (a test's
// testing::temp_dir(), which each call of it empties); returns the spec fragment naming it
// ("decider=mlp,calib=...").
std::string learned(const Model& m, DeciderKind kind, int layer, const std::string& dir) {
  const std::string name = kind == DeciderKind::kMlp ? "mlp" : "probe";
  const std::string path = dir + "/dynsparse_" + name + std::to_string(layer) + ".bin";
  EXPECT_TRUE(DeciderFile::untrained(m.cache_geometry(), layer, kind, 11).save(path).ok());
  return "decider=" + name + ",calib=" + path;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) d = std::max(d, double(std::fabs(a[i] - b[i])));
  return d;
}

// keep = 1 decides nothing: the logits and bytes of the base cache itself.
TEST(DynSparseTest, KeepOneIsTheBaseCacheBitForBit) {
  const Model& m = testing::stories260k();
  const std::vector<int32_t> ids = testing::scrambled_ids(140);
  for (const std::string base : {"full:dtype=f16", "kivi:bits=4,group=32,residual=16"}) {
    auto plain = testing::make_cache(m, base);
    auto sparse = testing::make_cache(m, "dynsparse:keep=1,layer=2,base=[" + base + "]");
    ASSERT_TRUE(plain && sparse);
    const auto a = decode(m, *plain, ids), b = decode(m, *sparse, ids);
    for (size_t t = 0; t < a.size(); ++t) ASSERT_EQ(a[t], b[t]) << base << ", step " << t;
    EXPECT_EQ(sparse->memory().kv_bytes(), plain->memory().kv_bytes()) << base;
  }
}

// Layers < K hold every token; layers >= K the prompt and the kept tokens, at their true
// positions, and the dropped ones nowhere; the bytes saved are those of the dropped tokens.
TEST(DynSparseTest, DroppedTokensAreNeverStoredInLayersFromK) {
  const Model& m = testing::stories260k();
  const int L = m.config().n_layers, K = 2;
  const std::vector<int32_t> ids = testing::scrambled_ids(kPrompt + 200);
  auto sparse = testing::make_cache(m, "dynsparse:keep=0.5,layer=2,decider=knorm,base=[full:dtype=f32]");
  auto full = testing::make_cache(m, "full:dtype=f32");
  ASSERT_TRUE(sparse && full);
  decode(m, *sparse, ids);
  decode(m, *full, ids);
  const int n = int(ids.size());
  const std::vector<int32_t> kept = sparse->read(K, 0).positions;
  for (int l = 0; l < L; ++l) {
    const LayerContents c = sparse->read(l, 0);
    if (l < K) {
      EXPECT_EQ(sparse->stored_tokens(l, 0), n);
      continue;
    }
    EXPECT_EQ(c.positions, kept) << "layer " << l << ": layers >= K share one decision per token";
    EXPECT_EQ(sparse->stored_tokens(l, 0), int(kept.size()));
    if (l > K) continue;  // above K the kept tokens' keys depend on what was dropped below them
    // Layer K's keys come from the residual stream entering K, which nothing dropped has touched:
    // every stored token is the full cache's token at that position.
    const LayerContents ref = full->read(l, 0);
    const size_t kv = size_t(m.config().n_kv_heads) * m.config().head_dim;
    for (size_t i = 0; i < c.positions.size(); ++i) {
      for (size_t e = 0; e < kv; ++e) ASSERT_EQ(c.k[i * kv + e], ref.k[size_t(c.positions[i]) * kv + e]);
    }
  }
  for (int p = 0; p < kPrompt; ++p) ASSERT_EQ(kept[size_t(p)], p) << "prompt tokens are always kept";
  const int n_kept_generated = int(kept.size()) - kPrompt;
  EXPECT_NEAR(double(n_kept_generated) / (n - kPrompt), 0.5, 0.03);
  // Fewer bytes than the full cache by at least the dropped tokens' f32 K/V in layers >= K, less
  // the dropped-position list (4 bytes a token, a vector's capacity at most twice its size).
  const int64_t dropped = n - int64_t(kept.size());
  const int64_t token_bytes = int64_t(2) * m.config().n_kv_heads * m.config().head_dim * 4 * (L - K);
  const int64_t saved = full->memory().kv_bytes() - sparse->memory().kv_bytes();
  EXPECT_GE(saved, dropped * token_bytes - 32 * token_bytes - 8 * dropped) << "pages of 32 tokens may hold slack";
  EXPECT_LE(saved, dropped * token_bytes + 32 * token_bytes);
}

// The recomputation without a cache (algorithms.md 4.4): at step t the whole sequence goes
// through one forward in which, from layer K on, a token sees only the kept tokens before it and
// itself. A test policy computes that masked attention with the scalar reference
// (attend_reference), storing nothing; the cached dynsparse run must give the same logits.
struct Recompute {
  int layer = 0;
  std::set<int32_t> kept;  // positions kept in layers >= layer
};
Recompute* g_recompute = nullptr;

class RecomputePolicy final : public Policy {
 public:
  using Policy::Policy;
  void attend(int layer, const ForwardBatch& batch, const float* q, const float* k, const float* v,
              float* out) override {
    const KvGeometry& g = ctx_.geometry;
    const int n = batch.n_rows(), kv = g.kv_dim();
    std::vector<float> k_rot(k, k + size_t(n) * kv);
    ctx_.rope->rotate(k_rot.data(), n, g.n_kv_heads, batch.positions.data());
    const AttentionShape shape{g.n_heads, g.n_kv_heads, g.head_dim, 1.0f / std::sqrt(float(g.head_dim))};
    for (int i = 0; i < n; ++i) {
      std::vector<float> ks, vs;
      std::vector<int32_t> ps;
      for (int j = 0; j <= i; ++j) {
        const int32_t p = batch.positions[size_t(j)];
        if (layer >= g_recompute->layer && j < i && !g_recompute->kept.count(p)) continue;
        ks.insert(ks.end(), &k_rot[size_t(j) * kv], &k_rot[size_t(j + 1) * kv]);
        vs.insert(vs.end(), v + size_t(j) * kv, v + size_t(j + 1) * kv);
        ps.push_back(p);
      }
      attend_reference(shape, q + size_t(i) * g.q_dim(), &batch.positions[size_t(i)], 1, ks.data(), vs.data(),
                       ps.data(), int(ps.size()), out + size_t(i) * g.q_dim());
    }
  }
  int stored_tokens(int, int) const override { return 0; }
  Status crop(int, int) override { return Status::Ok(); }
  void reset(int) override {}
  LayerContents read(int, int) const override { return {}; }
  void save(BinaryWriter&) const override {}
  Status load(BinaryReader&) override { return Status::Ok(); }
};

TEST(DynSparseTest, CachedDecodeEqualsRecomputingTheSequenceEachStep) {
  PolicyInfo info;
  info.name = "test_recompute";
  info.make = [](const PolicyContext& ctx, const PolicyParams&) -> StatusOr<std::unique_ptr<Policy>> {
    return std::unique_ptr<Policy>(std::make_unique<RecomputePolicy>(ctx));
  };
  ASSERT_TRUE(register_policy(info).ok());
  const Model& m = testing::stories260k();
  const std::vector<int32_t> ids = testing::scrambled_ids(kPrompt + 60);
  const std::string dir = testing::temp_dir();
  for (const std::string& decider : std::vector<std::string>{"decider=knorm", "decider=random", learned(m, DeciderKind::kMlp, 2, dir),
                                    learned(m, DeciderKind::kProbe, 2, dir)}) {
    auto cached = testing::make_cache(m, "dynsparse:keep=0.4,layer=2," + decider + ",base=[full:dtype=f32]");
    ASSERT_TRUE(cached);
    const auto steps = decode(m, *cached, ids);
    Recompute r;
    r.layer = 2;
    for (int32_t p : cached->read(2, 0).positions) r.kept.insert(p);
    ASSERT_LT(r.kept.size(), ids.size() - 20) << "tokens were dropped";
    g_recompute = &r;
    double worst = 0;
    for (size_t t = 0; t < steps.size(); ++t) {
      auto fresh = testing::make_cache(m, "test_recompute");
      std::vector<float> logits;
      SeqInput all{0, std::span<const int32_t>(ids.data(), kPrompt + t + 1)};
      ASSERT_TRUE(m.forward(*fresh, {&all, 1}, LogitsMode::kLast, &logits).ok());
      worst = std::max(worst, max_abs_diff(steps[t], logits));
    }
    g_recompute = nullptr;
    EXPECT_LE(worst, 1e-4) << decider;
    std::printf("%s: max |cached - recomputed| = %.3g over %zu steps\n", decider.c_str(), worst, steps.size());
    // And the test can fail: recomputing with every token visible differs.
    Recompute none;
    none.layer = m.config().n_layers;
    g_recompute = &none;
    auto fresh = testing::make_cache(m, "test_recompute");
    std::vector<float> logits;
    SeqInput all{0, std::span<const int32_t>(ids.data(), ids.size())};
    ASSERT_TRUE(m.forward(*fresh, {&all, 1}, LogitsMode::kLast, &logits).ok());
    g_recompute = nullptr;
    EXPECT_GT(max_abs_diff(steps.back(), logits), 1e-2) << decider;
  }
}

// The controller makes the realized rate the asked one, for either decider's score scale.
TEST(DynSparseTest, RealizedKeepRateFollowsTheAskedOne) {
  const Model& m = testing::stories260k();
  const std::vector<int32_t> ids = testing::scrambled_ids(kPrompt + 300);
  const std::string dir = testing::temp_dir();
  for (const std::string& decider : std::vector<std::string>{"decider=knorm", "decider=random", learned(m, DeciderKind::kMlp, 1, dir)}) {
    for (double keep : {0.3, 0.5, 0.7}) {
      auto c = testing::make_cache(m, "dynsparse:keep=" + std::to_string(keep) + ",layer=1," + decider);
      ASSERT_TRUE(c);
      decode(m, *c, ids);
      const double realized = double(c->read(1, 0).positions.size() - kPrompt) / (ids.size() - kPrompt);
      EXPECT_NEAR(realized, keep, 0.03) << decider;
      const std::string report = c->report().dump();
      EXPECT_NE(report.find("\"decided_tokens\": 300"), std::string::npos) << report;
    }
  }
}

TEST(DynSparseTest, ImpossibleParametersAreClearErrors) {
  const Model& m = testing::stories260k();
  auto expect_error = [&](const std::string& spec, const std::string& needle) { testing::expect_spec_error(m, spec, needle); };
  expect_error("dynsparse:keep=0", "keeps no generated token; keep is in (0, 1]");
  expect_error("dynsparse:keep=1.5", "out of range");
  expect_error("dynsparse:layer=5", "layer=5 is outside the layers 0..4");
  expect_error("dynsparse:decider=oracle", "bad value 'oracle' for dynsparse:decider");
  expect_error("dynsparse:base=[xkv:group=1]", "cannot leave a token unstored");
  expect_error("dynsparse:base=[dynsparse]", "cannot leave a token unstored");
  expect_error("lighttransfer:window=64,base=[dynsparse]", "evicts tokens itself");
  expect_error("dynsparse:decider=mlp", "decider=mlp needs calib=FILE");
  expect_error("dynsparse:decider=knorm,calib=x.bin", "calib=FILE given with decider=knorm, which learns nothing");
  expect_error("dynsparse:layer=3," + learned(m, DeciderKind::kMlp, 2, testing::temp_dir()), "trained at layer=2, the policy asks for layer=3");
  expect_error("dynsparse:decider=mlp,calib=/nonexistent/d.bin", "cannot open '/nonexistent/d.bin'");
}

}  // namespace
}  // namespace kvlab
