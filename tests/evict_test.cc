// Score-based eviction (kvcache/policies/evict_policy.cc) beyond the conformance suite: keep = 1
// is the full cache bit for bit; layers >= K hold the prompt and ceil(keep * G) generated tokens
// at every step, in the bytes dynsparse spends on as many tokens; each score evicts the token it
// should, checked against scores recomputed here from the attention probabilities (of a full
// cache for the first eviction, of the run itself after it); crop, save/restore and bad
// parameters.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <set>

#include "kvcache/dynsparse_decider.h"
#include "kvcache/kv_cache.h"
#include "kvcache/registry.h"
#include "kvcache/token_ring.h"
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

int64_t budget(double keep, int generated) { return int64_t(std::ceil(keep * generated - 1e-9)); }

// Positions >= kPrompt that slot 0 holds in `layer`.
std::set<int32_t> generated_held(const KvCache& c, int layer) {
  std::set<int32_t> s;
  for (int32_t p : c.read(layer, 0).positions) {
    if (p >= kPrompt) s.insert(p);
  }
  return s;
}

// The attention probabilities of the generated queries in layers >= `layer`, for the current
// step: per layer, one map key position -> probability per query head, in the order observed.
class Recorder final : public AttentionObserver {
 public:
  explicit Recorder(int layer) : layer_(layer) {}
  bool wants(int layer, int, int32_t pos) const override { return layer >= layer_ && pos >= kPrompt; }
  void observe(int layer, int, int32_t, int, std::span<const float> probs,
               std::span<const int32_t> key_pos) const override {
    std::map<int32_t, float> by_pos;
    for (size_t j = 0; j < probs.size(); ++j) by_pos[key_pos[j]] = probs[j];
    step_[layer].push_back(std::move(by_pos));
  }
  const std::vector<std::map<int32_t, float>>& heads(int layer) const { return step_[layer]; }
  void clear() { step_.clear(); }

 private:
  int layer_;
  mutable std::map<int, std::vector<std::map<int32_t, float>>> step_;
};

// The eviction rule of one layer replayed from recorded probabilities: the stored generated
// positions and their scores, updated as the policy's comment says (float, heads in order).
struct Replay {
  std::string score;  // h2o, tova, recent
  double keep = 0.5;
  int recent = 0;
  std::map<int32_t, float> held;  // generated position -> score
  int generated = 0;

  // The step that wrote position t, with the probabilities of its query (per head).
  void step(int32_t t, const std::vector<std::map<int32_t, float>>& heads, int n_heads) {
    held[t] = 0.0f;
    ++generated;
    if (score == "tova") {
      for (auto& [p, s] : held) s = 0.0f;
    }
    const float w = score == "tova" ? 1.0f / float(n_heads) : 1.0f;
    if (score != "recent") {
      EXPECT_EQ(int(heads.size()), n_heads) << "position " << t;
      for (const auto& probs : heads) {
        for (auto& [p, s] : held) {
          ASSERT_TRUE(probs.count(p)) << "the query at " << t << " did not see position " << p;
          s += w * probs.at(p);
        }
      }
    }
    while (int64_t(held.size()) > budget(keep, generated)) held.erase(victim());
  }

  int32_t victim() const {
    // H2O: the newest min(recent, budget) are safe; recency: the oldest goes.
    const int64_t r = score == "h2o" ? std::min<int64_t>(recent, budget(keep, generated)) : 0;
    auto safe_from = held.end();
    if (r > 0) safe_from = std::prev(held.end(), long(r));
    if (score == "recent") return held.begin()->first;
    auto best = held.begin();
    for (auto it = held.begin(); it != safe_from; ++it) {
      if (it->second < best->second) best = it;
    }
    return best->first;
  }
};

// keep = 1 evicts nothing: the full cache's logits, bit for bit, and its payload bytes.
TEST(EvictTest, KeepOneIsTheFullCacheBitForBit) {
  const Model& m = testing::stories260k();
  const std::vector<int32_t> ids = testing::scrambled_ids(140);
  for (const std::string dtype : {"f16", "f32", "bf16"}) {
    for (const std::string score : {"h2o", "tova", "recent"}) {
      auto full = testing::make_cache(m, "full:dtype=" + dtype);
      auto evict = testing::make_cache(m, "evict:keep=1,layer=2,score=" + score + ",dtype=" + dtype);
      ASSERT_TRUE(full && evict);
      const auto a = decode(m, *full, ids), b = decode(m, *evict, ids);
      for (size_t t = 0; t < a.size(); ++t) ASSERT_EQ(a[t], b[t]) << dtype << " " << score << ", step " << t;
      EXPECT_EQ(evict->memory()[MemoryKind::kPayload], full->memory()[MemoryKind::kPayload]) << dtype;
      EXPECT_EQ(evict->stored_tokens(4, 0), int(ids.size()));
    }
  }
}

// After the prompt and g decode steps, layers < K hold P + g tokens and layers >= K P +
// ceil(keep * g), at every step; the payload is that of the full cache's pages for those counts,
// which is what a dynsparse cache holding as many tokens spends.
TEST(EvictTest, StoredGeneratedTokensFollowTheBudget) {
  const Model& m = testing::stories260k();
  const ModelConfig& cfg = m.config();
  const int L = cfg.n_layers, K = 2;
  const double keep = 0.3;
  const std::vector<int32_t> ids = testing::scrambled_ids(kPrompt + 100);
  const int page = ring_page_tokens(cfg.max_seq_len);
  const int64_t page_bytes = int64_t(2) * cfg.n_kv_heads * page * cfg.head_dim * 2;  // f16
  const auto pages = [&](int64_t n) { return (n + page - 1) / page; };
  for (const std::string score : {"h2o", "tova", "recent"}) {
    auto evict = testing::make_cache(m, "evict:keep=0.3,layer=2,score=" + score);
    auto sparse = testing::make_cache(m, "dynsparse:keep=0.3,layer=2,decider=random");
    ASSERT_TRUE(evict && sparse);
    std::vector<std::pair<int, int64_t>> sparse_payload;  // per step: tokens held at K, payload
    decode(m, *sparse, ids, [&](int32_t) {
      sparse_payload.emplace_back(sparse->stored_tokens(K, 0), sparse->memory()[MemoryKind::kPayload]);
    });
    int g = 0, same_count = 0;
    decode(m, *evict, ids, [&](int32_t) {
      ++g;
      const int64_t hi = kPrompt + budget(keep, g);
      for (int l = 0; l < L; ++l) {
        ASSERT_EQ(evict->stored_tokens(l, 0), l < K ? kPrompt + g : hi) << score << " layer " << l << " step " << g;
      }
      const int64_t payload = evict->memory()[MemoryKind::kPayload];
      EXPECT_EQ(payload, (K * pages(kPrompt + g) + (L - K) * pages(hi)) * page_bytes) << score << " step " << g;
      const auto& [sparse_hi, sparse_bytes] = sparse_payload[size_t(g - 1)];
      if (sparse_hi == hi) {
        ++same_count;
        EXPECT_EQ(payload, sparse_bytes) << score << " step " << g;
      }
    });
    EXPECT_GT(same_count, 10) << "dynsparse's realized rate follows keep";
    for (int p = 0; p < kPrompt; ++p) EXPECT_EQ(evict->read(L - 1, 0).positions[size_t(p)], p) << "prompt kept";
    // Metadata: 4 bytes of position and (h2o, tova) 4 of score per token held in layers >= K,
    // vectors' capacity at most twice their size, plus the generated runs and page lists.
    const int64_t meta = evict->memory()[MemoryKind::kMeta];
    const int64_t per_token = score == "recent" ? 4 : 8;
    EXPECT_GE(meta, (L - K) * (kPrompt + budget(keep, g)) * per_token);
    EXPECT_LE(meta, 2 * (L - K) * (kPrompt + g) * per_token);
    EXPECT_NE(evict->report().dump().find("\"generated_tokens\": 100"), std::string::npos) << evict->report().dump();
  }
}

// Runs `spec` (f32) over the prompt and `steps` decode steps with a recorder as the cache's
// observer, replaying the eviction of every layer >= K step by step from the probabilities the
// run itself attended with; the policy must hold exactly the replay's tokens at every step.
// Returns how many (layer, step) pairs the replay's tokens differed from the newest ones.
int expect_replay_matches(const std::string& score, double keep, int recent, int steps) {
  const Model& m = testing::stories260k();
  const int L = m.config().n_layers, K = 1;
  const std::string spec = "evict:keep=" + std::to_string(keep) + ",layer=1,score=" + score +
                           ",recent=" + std::to_string(recent) + ",dtype=f32";
  auto cache = testing::make_cache(m, spec);
  EXPECT_TRUE(cache);
  if (!cache) return 0;
  Recorder rec(K);
  cache->set_observer(&rec);
  std::vector<Replay> replay(size_t(L), Replay{score, keep, recent, {}, 0});
  int differ_from_newest = 0;
  decode(m, *cache, testing::scrambled_ids(kPrompt + steps), [&](int32_t t) {
    for (int l = K; l < L; ++l) {
      Replay& r = replay[size_t(l)];
      r.step(t, rec.heads(l), m.config().n_heads);
      std::set<int32_t> expected;
      for (const auto& [p, s] : r.held) expected.insert(p);
      ASSERT_EQ(generated_held(*cache, l), expected) << spec << " layer " << l << " step " << t;
      differ_from_newest += expected.size() > 0 && *expected.begin() != t + 1 - int32_t(expected.size());
    }
    rec.clear();
  });
  return differ_from_newest;
}

// TOVA's first eviction checked against a full f32 cache (identical until then): at keep 0.9 the
// tenth generated token makes the budget 9 of 10, and the one its query attends least (mean over
// heads) goes. Then 80 steps replayed from the run's own probabilities.
TEST(EvictTest, TovaEvictsTheLeastAttendedToken) {
  const Model& m = testing::stories260k();
  const int L = m.config().n_layers, K = 1, H = m.config().n_heads;
  const std::vector<int32_t> ids = testing::scrambled_ids(kPrompt + 10);
  auto full = testing::make_cache(m, "full:dtype=f32");
  auto tova = testing::make_cache(m, "evict:keep=0.9,layer=1,score=tova,dtype=f32");
  ASSERT_TRUE(full && tova);
  Recorder rec(K);
  full->set_observer(&rec);
  decode(m, *full, ids, [&](int32_t t) {
    if (t + 1 < int32_t(ids.size())) rec.clear();  // keep the last step's query only
  });
  decode(m, *tova, ids);
  const int32_t last = int32_t(ids.size()) - 1;
  for (int l = K; l < L; ++l) {
    std::map<int32_t, double> mean;
    for (const auto& probs : rec.heads(l)) {
      for (int32_t p = kPrompt; p <= last; ++p) mean[p] += probs.at(p) / H;
    }
    const int32_t least = std::min_element(mean.begin(), mean.end(), [](auto& a, auto& b) { return a.second < b.second; })->first;
    std::set<int32_t> expected;
    for (int32_t p = kPrompt; p <= last; ++p) {
      if (p != least) expected.insert(p);
    }
    EXPECT_EQ(generated_held(*tova, l), expected) << "layer " << l;
    EXPECT_EQ(tova->stored_tokens(l, 0), kPrompt + 9);
  }
  EXPECT_GT(expect_replay_matches("tova", 0.5, 0, 80), 0) << "TOVA kept only the newest tokens: recency";
}

// H2O's first eviction against a full f32 cache: scores summed over heads and over the queries of
// all ten steps; the newest two (recent=2) are safe, the lowest of the others goes, and the
// heaviest hitter stays. Then 80 steps replayed.
TEST(EvictTest, H2oKeepsTheHeavyHitter) {
  const Model& m = testing::stories260k();
  const int L = m.config().n_layers, K = 1;
  const std::vector<int32_t> ids = testing::scrambled_ids(kPrompt + 10);
  auto full = testing::make_cache(m, "full:dtype=f32");
  auto h2o = testing::make_cache(m, "evict:keep=0.9,layer=1,score=h2o,recent=2,dtype=f32");
  ASSERT_TRUE(full && h2o);
  Recorder rec(K);
  full->set_observer(&rec);
  std::vector<std::map<int32_t, double>> acc(static_cast<size_t>(L));  // [layer] position -> accumulated
  decode(m, *full, ids, [&](int32_t) {
    for (int l = K; l < L; ++l) {
      for (const auto& probs : rec.heads(l)) {
        for (const auto& [p, x] : probs) {
          if (p >= kPrompt) acc[size_t(l)][p] += x;
        }
      }
    }
    rec.clear();
  });
  decode(m, *h2o, ids);
  const int32_t last = int32_t(ids.size()) - 1;
  for (int l = K; l < L; ++l) {
    auto& a = acc[size_t(l)];
    ASSERT_EQ(a.size(), 10u);
    const int32_t heavy = std::max_element(a.begin(), a.end(), [](auto& x, auto& y) { return x.second < y.second; })->first;
    a.erase(last);
    a.erase(last - 1);
    const int32_t least = std::min_element(a.begin(), a.end(), [](auto& x, auto& y) { return x.second < y.second; })->first;
    const std::set<int32_t> held = generated_held(*h2o, l);
    EXPECT_EQ(held.size(), 9u);
    EXPECT_FALSE(held.count(least)) << "layer " << l;
    EXPECT_TRUE(held.count(heavy)) << "layer " << l;
    EXPECT_TRUE(held.count(last) && held.count(last - 1)) << "the recent window is safe";
  }
  EXPECT_GT(expect_replay_matches("h2o", 0.4, 4, 80), 0) << "H2O kept only the newest tokens: recency";
  expect_replay_matches("h2o", 0.3, 0, 40);  // no recent window
}

// Recency: the newest ceil(keep * G) generated tokens, and every prompt token.
TEST(EvictTest, RecentKeepsTheNewest) {
  const Model& m = testing::stories260k();
  const int L = m.config().n_layers, K = 2;
  auto c = testing::make_cache(m, "evict:keep=0.25,layer=2,score=recent");
  ASSERT_TRUE(c);
  int g = 0;
  decode(m, *c, testing::scrambled_ids(kPrompt + 70), [&](int32_t t) {
    ++g;
    std::set<int32_t> newest;
    for (int32_t p = t + 1 - int32_t(budget(0.25, g)); p <= t; ++p) newest.insert(p);
    for (int l = K; l < L; ++l) {
      ASSERT_EQ(generated_held(*c, l), newest) << "layer " << l << " step " << g;
      ASSERT_EQ(c->stored_tokens(l, 0), kPrompt + int(newest.size()));
    }
  });
  EXPECT_EQ(expect_replay_matches("recent", 0.6, 0, 30), 0);
}

// A decider's score is the token's own, fixed when it enters layer K (knorm: minus the mean key
// norm over kv heads, which RoPE keeps); the newest min(recent, budget) generated tokens are safe
// and the lowest-scored older one goes. Replayed from a full f32 cache's layer-K keys: layers < K
// keep every token, so layer K computes the same keys in both caches.
TEST(EvictTest, DeciderScoresEvictTheLowestOutsideTheRecentWindow) {
  const Model& m = testing::stories260k();
  const int L = m.config().n_layers, K = 1, recent = 3;
  const double keep = 0.4;
  const std::vector<int32_t> ids = testing::scrambled_ids(kPrompt + 60);
  auto full = testing::make_cache(m, "full:dtype=f32");
  auto c = testing::make_cache(m, "evict:keep=0.4,layer=1,score=knorm,recent=3,dtype=f32");
  ASSERT_TRUE(full && c);
  decode(m, *full, ids);
  const KvGeometry& g = full->geometry();
  const LayerContents keys = full->read(K, 0);
  std::map<int32_t, float> held;  // generated position -> score
  int generated = 0, differ_from_newest = 0;
  decode(m, *c, ids, [&](int32_t t) {
    held[t] = knorm_score(keys.k.data() + size_t(t) * g.kv_dim(), g);
    ++generated;
    while (int64_t(held.size()) > budget(keep, generated)) {
      const auto safe = std::prev(held.end(), long(std::min<int64_t>(recent, budget(keep, generated))));
      auto lowest = held.begin();
      for (auto it = held.begin(); it != safe; ++it) {
        if (it->second < lowest->second) lowest = it;
      }
      held.erase(lowest);
    }
    std::set<int32_t> expected;
    for (const auto& [p, s] : held) expected.insert(p);
    for (int l = K; l < L; ++l) ASSERT_EQ(generated_held(*c, l), expected) << "layer " << l << " position " << t;
    differ_from_newest += *expected.begin() != t + 1 - int32_t(expected.size());
  });
  EXPECT_GT(differ_from_newest, 20) << "the scores, not recency, chose";
}

// A crop forgets the generated tokens after the cut: the budget counts only those before it.
TEST(EvictTest, CropCountsOnlyTheGeneratedTokensBeforeTheCut) {
  const Model& m = testing::stories260k();
  const int L = m.config().n_layers, K = 2;
  auto c = testing::make_cache(m, "evict:keep=0.5,layer=2,score=recent");
  ASSERT_TRUE(c);
  const auto range = [](int32_t from, int32_t to) {
    std::set<int32_t> s;
    for (int32_t p = from; p < to; ++p) s.insert(p);
    return s;
  };
  decode(m, *c, testing::scrambled_ids(kPrompt + 50));  // G = 50: the newest 25 held, P + 25 .. P + 49
  ASSERT_TRUE(c->crop(0, kPrompt + 40).ok());
  for (int l = K; l < L; ++l) EXPECT_EQ(generated_held(*c, l), range(kPrompt + 25, kPrompt + 40)) << "layer " << l;
  // 30 more steps: G = 40 + 30 = 70, a budget of 35 (had the crop left G at 50, 40).
  const std::vector<int32_t> ids = testing::scrambled_ids(kPrompt + 70);
  std::vector<float> logits;
  for (int t = kPrompt + 40; t < kPrompt + 70; ++t) {
    SeqInput one{0, std::span<const int32_t>(&ids[size_t(t)], 1)};
    ASSERT_TRUE(m.forward(*c, {&one, 1}, LogitsMode::kLast, &logits).ok());
  }
  for (int l = K; l < L; ++l) EXPECT_EQ(generated_held(*c, l), range(kPrompt + 35, kPrompt + 70)) << "layer " << l;
}

// Scores survive save/restore: both caches go on evicting the same tokens.
TEST(EvictTest, SaveRestoreKeepsTheScores) {
  const Model& m = testing::stories260k();
  const std::vector<int32_t> ids = testing::scrambled_ids(kPrompt + 60);
  for (const std::string score : {"h2o", "tova"}) {
    auto c = testing::make_cache(m, "evict:keep=0.4,layer=1,recent=3,score=" + score);
    ASSERT_TRUE(c);
    decode(m, *c, std::vector<int32_t>(ids.begin(), ids.begin() + kPrompt + 30));
    const std::string path = testing::temp_dir() + "/evict.kvlab";
    ASSERT_TRUE(c->save(path).ok());
    auto r = KvCache::restore(path, m.cache_geometry(), &m.rope());
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    std::vector<float> a, b;
    for (int t = kPrompt + 30; t < int(ids.size()); ++t) {
      SeqInput one{0, std::span<const int32_t>(&ids[size_t(t)], 1)};
      ASSERT_TRUE(m.forward(*c, {&one, 1}, LogitsMode::kLast, &a).ok());
      ASSERT_TRUE(m.forward(**r, {&one, 1}, LogitsMode::kLast, &b).ok());
      ASSERT_EQ(a, b) << score << " position " << t;
    }
    for (int l = 1; l < m.config().n_layers; ++l) EXPECT_EQ(generated_held(*c, l), generated_held(**r, l));
  }
}

TEST(EvictTest, BadParametersAreClearErrors) {
  const Model& m = testing::stories260k();
  auto expect_error = [&](const std::string& spec, const std::string& needle) { testing::expect_spec_error(m, spec, needle); };
  expect_error("evict:keep=0", "keeps no generated token; keep is in (0, 1]");
  expect_error("evict:keep=1.5", "out of range");
  expect_error("evict:layer=5", "layer=5 is outside the layers 0..4");
  expect_error("L3-4=evict:layer=2", "layer=2 is outside the layers 3..4");
  expect_error("evict:score=oracle", "bad value 'oracle' for evict:score");
  expect_error("evict:dtype=fp8", "bad value 'fp8' for evict:dtype");
  expect_error("evict:recent=-1", "out of range");
  expect_error("evict:score=mlp", "evict: decider=mlp needs calib=FILE");
  expect_error("evict:score=h2o,calib=x.bin", "evict: calib=FILE given with score=h2o, which learns nothing");
  expect_error("evict:score=knorm,calib=x.bin", "evict: calib=FILE given with decider=knorm, which learns nothing");
  expect_error("evict:score=probe,calib=/nonexistent/probe.bin", "/nonexistent/probe.bin");
}

}  // namespace
}  // namespace kvlab
