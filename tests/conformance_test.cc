// The conformance suite: every registered policy, at every spec its registry entry lists, goes
// through the same generic tests. No policy is named here; adding one to kvcache/registry.cc
// adds it to this suite.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <set>

#include <unistd.h>

#include "base/file.h"
#include "kvcache/kv_cache.h"
#include "kvcache/registry.h"
#include "tests/testing/heap_counter.h"
#include "tests/testing/models.h"
#include "tests/testing/test_paths.h"

namespace kvlab {
namespace {

struct SpecCase {
  std::string policy;
  std::string spec;
};
void PrintTo(const SpecCase& c, std::ostream* os) { *os << c.spec; }

std::vector<SpecCase> all_cases() {
  std::vector<SpecCase> cases;
  for (const PolicyInfo& p : registered_policies()) {
    for (const std::string& s : p.test_specs) cases.push_back({p.name, s});
  }
  return cases;
}

const Model& model() { return testing::stories260k(); }

// Token streams for three slots of unequal lengths (prompt lengths 7, 61, 130).
std::vector<std::vector<int32_t>> streams() {
  static const std::vector<std::vector<int32_t>> s = [] {
    const auto text = read_file_text(testing::shared_data_path("tinystories_valid_subset.txt"));
    const std::vector<int32_t> ids = model().tokenizer().encode(text->substr(0, 8000));
    std::vector<std::vector<int32_t>> out;
    size_t start = 0;
    for (int len : {7 + 20, 61 + 20, 130 + 20}) {
      out.emplace_back(ids.begin() + start, ids.begin() + start + len);
      start += len;
    }
    return out;
  }();
  return s;
}
const int kPrompt[3] = {7, 61, 130};
constexpr int kSteps = 20;

// Prefills all slots in one forward, then decodes kSteps steps with every slot in each step.
// Returns the logits of every step, slot-major: [slot][step][vocab].
std::vector<std::vector<float>> run_batched(KvCache& cache, int steps = kSteps) {
  const auto s = streams();
  const size_t V = size_t(model().config().vocab_size);
  std::vector<std::vector<float>> out(3);
  std::vector<float> logits;
  std::vector<SeqInput> in;
  for (int i = 0; i < 3; ++i) in.push_back({i, std::span<const int32_t>(s[i].data(), kPrompt[i])});
  EXPECT_TRUE(model().forward(cache, in, LogitsMode::kLast, &logits).ok());
  for (int step = 0; step <= steps; ++step) {
    for (int i = 0; i < 3; ++i) out[i].insert(out[i].end(), logits.begin() + i * V, logits.begin() + (i + 1) * V);
    if (step == steps) break;
    for (int i = 0; i < 3; ++i) in[i] = {i, std::span<const int32_t>(&s[i][kPrompt[i] + step], 1)};
    EXPECT_TRUE(model().forward(cache, in, LogitsMode::kLast, &logits).ok());
  }
  return out;
}

std::unique_ptr<KvCache> make(const std::string& spec, int slots = 3) {
  auto c = model().make_cache(spec, slots);
  EXPECT_TRUE(c.ok()) << spec << ": " << c.status().to_string();
  return c.ok() ? std::move(c).value() : nullptr;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return m;
}

// The spec with "{test_dir}" replaced by a directory holding the side files the policy's
// prepare_test writes (once per policy).
std::string resolve(const PolicyInfo& info, const std::string& spec) {
  static std::set<std::string> prepared;
  static const std::string dir = [] {
    const auto d = std::filesystem::temp_directory_path() / ("kvlab_conformance_side_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d.string();
  }();
  if (info.prepare_test && !prepared.count(info.name)) {
    const Status s = info.prepare_test(model().cache_geometry(), dir);
    EXPECT_TRUE(s.ok()) << s.to_string();
    prepared.insert(info.name);
  }
  std::string out = spec;
  for (size_t at; (at = out.find("{test_dir}")) != std::string::npos;) out.replace(at, 10, dir);
  return out;
}

class ConformanceTest : public ::testing::TestWithParam<SpecCase> {
 protected:
  const PolicyInfo& info() const { return *find_policy(GetParam().policy); }
  std::string spec() const { return resolve(info(), GetParam().spec); }
};

// Writes random K/V straight through the cache interface (no model), reads them back.
TEST_P(ConformanceTest, WriteReadRoundTrip) {
  const KvGeometry g = model().cache_geometry();
  auto cache = make(spec());
  ASSERT_TRUE(cache);
  auto layout = parse_cache_spec(spec(), g.n_layers);
  ASSERT_TRUE(layout.ok());
  const double tol = info().roundtrip_tolerance(layout->front().spec.params);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  // written[layer][slot]: post-RoPE keys and values by position.
  std::vector<std::vector<std::vector<float>>> wk(g.n_layers, std::vector<std::vector<float>>(2)), wv = wk;
  const int counts[2][3] = {{37, 5, 1}, {1, 40, 3}};  // two forwards: prefill, then more
  for (const auto& c : counts) {
    for (int round = 0; round < 3; ++round) {
      const std::vector<int> slots = {0, 1};
      const std::vector<int> n = {c[round], c[(round + 1) % 3]};
      auto batch = cache->plan(slots, n);
      ASSERT_TRUE(batch.ok());
      const int rows = batch->n_rows();
      for (int l = 0; l < g.n_layers; ++l) {
        std::vector<float> q(size_t(rows) * g.q_dim()), k(size_t(rows) * g.kv_dim()), v(k.size()), out(q.size());
        for (auto* x : {&q, &k, &v}) {
          for (float& e : *x) e = nd(rng);
        }
        if (cache->wants_hidden(l)) {  // the decoder's protocol: the residual stream first ([rows, q_dim] here)
          std::vector<float> h(size_t(rows) * g.q_dim());
          for (float& e : h) e = nd(rng);
          cache->observe_hidden(l, *batch, h.data(), g.q_dim());
        }
        cache->attend(l, *batch, q.data(), k.data(), v.data(), out.data());
        std::vector<float> k_rot = k;
        model().rope().rotate(k_rot.data(), rows, g.n_kv_heads, batch->positions.data());
        for (const SeqSpan& sp : batch->seqs) {
          auto& dk = wk[l][sp.seq];
          auto& dv = wv[l][sp.seq];
          dk.insert(dk.end(), k_rot.begin() + size_t(sp.row) * g.kv_dim(),
                    k_rot.begin() + size_t(sp.row + sp.n_new) * g.kv_dim());
          dv.insert(dv.end(), v.begin() + size_t(sp.row) * g.kv_dim(), v.begin() + size_t(sp.row + sp.n_new) * g.kv_dim());
        }
        for (float o : out) ASSERT_TRUE(std::isfinite(o));
      }
      cache->commit(*batch);
    }
  }
  for (int s = 0; s < 2; ++s) {
    const int len = cache->seq_length(s);
    ASSERT_EQ(size_t(len) * g.kv_dim(), wk[0][s].size());
    for (int l = 0; l < g.n_layers; ++l) {
      const LayerContents c = cache->read(l, s);
      ASSERT_EQ(int(c.positions.size()), cache->stored_tokens(l, s));
      ASSERT_LE(cache->stored_tokens(l, s), len);
      ASSERT_EQ(c.k.size(), c.positions.size() * g.kv_dim());
      // Error budget relative to the largest magnitude written to this layer and slot: the
      // groups a format quantizes together (a head vector, a channel over a token group) are
      // all inside it.
      double k_max = 0, v_max = 0;
      for (float x : wk[l][s]) k_max = std::max(k_max, double(std::fabs(x)));
      for (float x : wv[l][s]) v_max = std::max(v_max, double(std::fabs(x)));
      for (size_t i = 0; i < c.positions.size(); ++i) {
        const int32_t p = c.positions[i];
        ASSERT_TRUE(p >= 0 && p < len);
        if (i > 0) {
          ASSERT_LT(c.positions[i - 1], p);
        }
        for (size_t e = 0; e < size_t(g.kv_dim()); ++e) {
          const size_t o = size_t(p) * g.kv_dim() + e;
          ASSERT_LE(std::fabs(c.k[i * g.kv_dim() + e] - wk[l][s][o]), tol * k_max + 1e-7)
              << "key, layer " << l << " slot " << s << " pos " << p;
          ASSERT_LE(std::fabs(c.v[i * g.kv_dim() + e] - wv[l][s][o]), tol * v_max + 1e-7)
              << "value, layer " << l << " slot " << s << " pos " << p;
        }
      }
    }
  }
}

TEST_P(ConformanceTest, LengthsPerLayerAndSlot) {
  auto cache = make(spec());
  ASSERT_TRUE(cache);
  run_batched(*cache);
  const int n_layers = model().config().n_layers;
  for (int s = 0; s < 3; ++s) {
    EXPECT_EQ(cache->seq_length(s), kPrompt[s] + kSteps);
    for (int l = 0; l < n_layers; ++l) {
      EXPECT_GE(cache->stored_tokens(l, s), 1);
      EXPECT_LE(cache->stored_tokens(l, s), cache->seq_length(s));
      EXPECT_EQ(int(cache->read(l, s).positions.size()), cache->stored_tokens(l, s));
    }
  }
}

TEST_P(ConformanceTest, BatchOfUnequalLengthsEqualsOneByOne) {
  auto batched = make(spec());
  ASSERT_TRUE(batched);
  const auto together = run_batched(*batched);
  const auto s = streams();
  const size_t V = size_t(model().config().vocab_size);
  for (int i = 0; i < 3; ++i) {
    auto alone = make(spec(), 1);
    std::vector<float> got, logits;
    SeqInput in{0, std::span<const int32_t>(s[i].data(), kPrompt[i])};
    ASSERT_TRUE(model().forward(*alone, {&in, 1}, LogitsMode::kLast, &logits).ok());
    got.insert(got.end(), logits.begin(), logits.end());
    for (int step = 0; step < kSteps; ++step) {
      SeqInput st{0, std::span<const int32_t>(&s[i][kPrompt[i] + step], 1)};
      ASSERT_TRUE(model().forward(*alone, {&st, 1}, LogitsMode::kLast, &logits).ok());
      got.insert(got.end(), logits.begin(), logits.begin() + V);
    }
    EXPECT_EQ(max_abs_diff(got, together[i]), 0.0) << "slot " << i;
  }
}

TEST_P(ConformanceTest, CropKeepsEarlierTokensAndDropsLater) {
  auto cache = make(spec());
  ASSERT_TRUE(cache);
  run_batched(*cache);
  const int n_layers = model().config().n_layers;
  const int keep = 50;  // slot 1 has 81 tokens
  std::vector<LayerContents> before;
  for (int l = 0; l < n_layers; ++l) before.push_back(cache->read(l, 1));
  const int64_t bytes_before = cache->memory().kv_bytes();
  ASSERT_TRUE(cache->crop(1, keep).ok());
  EXPECT_EQ(cache->seq_length(1), keep);
  EXPECT_LE(cache->memory().kv_bytes(), bytes_before);
  const size_t kv = size_t(model().config().n_kv_heads) * model().config().head_dim;
  for (int l = 0; l < n_layers; ++l) {
    const LayerContents after = cache->read(l, 1);
    size_t j = 0;
    for (size_t i = 0; i < before[l].positions.size() && before[l].positions[i] < keep; ++i, ++j) {
      ASSERT_LT(j, after.positions.size());
      EXPECT_EQ(after.positions[j], before[l].positions[i]);
      for (size_t e = 0; e < kv; ++e) {
        EXPECT_EQ(after.k[j * kv + e], before[l].k[i * kv + e]);
        EXPECT_EQ(after.v[j * kv + e], before[l].v[i * kv + e]);
      }
    }
    EXPECT_EQ(j, after.positions.size()) << "tokens at or after the crop point survived";
  }
  EXPECT_FALSE(cache->crop(1, keep + 1).ok());
  EXPECT_FALSE(cache->crop(7, 0).ok());
  // The slot goes on decoding from position `keep`.
  const std::vector<int32_t> more = {5, 6, 7};
  SeqInput in{1, more};
  std::vector<float> logits;
  ASSERT_TRUE(model().forward(*cache, {&in, 1}, LogitsMode::kLast, &logits).ok());
  EXPECT_EQ(cache->seq_length(1), keep + 3);
  for (float x : logits) ASSERT_TRUE(std::isfinite(x));
}

TEST_P(ConformanceTest, ResetSlotBehavesLikeFreshCache) {
  auto cache = make(spec());
  ASSERT_TRUE(cache);
  run_batched(*cache);
  cache->reset_all();
  EXPECT_EQ(cache->memory().kv_bytes(), 0) << "an empty cache holds K/V bytes";
  for (int s = 0; s < 3; ++s) EXPECT_EQ(cache->seq_length(s), 0);
  auto fresh = make(spec());
  EXPECT_EQ(max_abs_diff(run_batched(*cache)[2], run_batched(*fresh)[2]), 0.0);
  cache->reset(0);
  EXPECT_EQ(cache->seq_length(0), 0);
  EXPECT_EQ(cache->seq_length(1), kPrompt[1] + kSteps);
}

// The ledger is checked against the global heap (tests/testing/heap_counter.cc): every byte the
// cache allocates while running is booked, and nothing else is allocated and kept.
TEST_P(ConformanceTest, ByteAccountingEqualsAllocatedBytes) {
  {
    auto warm = make(spec());  // grows the engine's thread-local scratch to its working size
    run_batched(*warm);
  }
  auto cache = make(spec());
  ASSERT_TRUE(cache);
  const int64_t heap0 = testing::live_heap_bytes();
  const MemoryReport m0 = cache->memory();
  run_batched(*cache);
  const int64_t heap1 = testing::live_heap_bytes();
  const MemoryReport m1 = cache->memory();
  EXPECT_GT(m1.kv_bytes(), 0);
  EXPECT_EQ(heap1 - heap0, m1.total() - m0.total()) << format_memory(m1);
  cache->reset_all();
  EXPECT_EQ(testing::live_heap_bytes() - heap0, cache->memory().total() - m0.total());
}

TEST_P(ConformanceTest, OffSettingReproducesFullCacheExactly) {
  auto off = make(info().off_spec);
  auto full = make("full:dtype=f32");
  ASSERT_TRUE(off && full);
  const auto a = run_batched(*off), b = run_batched(*full);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(max_abs_diff(a[i], b[i]), 0.0) << info().off_spec << " slot " << i;
}

TEST_P(ConformanceTest, MixesWithOtherPoliciesPerLayer) {
  const std::string mixed = "L0-1=" + spec() + ";L3=full:dtype=f32";
  auto cache = make(mixed);
  ASSERT_TRUE(cache);
  // L0-1 = the policy, L2 = the default, L3 = full f32, L4 = the default.
  ASSERT_EQ(cache->layout().size(), 4u);
  EXPECT_EQ(cache->layout()[0].spec.name, GetParam().policy);
  EXPECT_EQ(cache->layout()[1].spec.text, kDefaultPolicySpec);
  EXPECT_EQ(cache->layout()[2].first_layer, 3);
  EXPECT_EQ(cache->layout()[3].first_layer, 4);
  const auto logits = run_batched(*cache);
  for (float x : logits[1]) ASSERT_TRUE(std::isfinite(x));
}

TEST_P(ConformanceTest, SaveRestoreContinuesIdentically) {
  auto cache = make(spec());
  ASSERT_TRUE(cache);
  run_batched(*cache, 5);
  const std::string path = testing::temp_dir() + "/cache.kvlab";
  ASSERT_TRUE(cache->save(path).ok());
  auto restored = KvCache::restore(path, model().cache_geometry(), &model().rope());
  ASSERT_TRUE(restored.ok()) << restored.status().to_string();
  EXPECT_EQ((*restored)->spec(), cache->spec());
  // A restored cache allocates what its tokens need (a ring's pages that were used once and are
  // empty now are not restored).
  EXPECT_LE((*restored)->memory().kv_bytes(), cache->memory().kv_bytes());
  EXPECT_GT((*restored)->memory().kv_bytes(), 0);
  const std::vector<int32_t> next = {10, 11, 12, 13};
  std::vector<SeqInput> in;
  for (int s = 0; s < 3; ++s) in.push_back({s, next});
  std::vector<float> a, b;
  ASSERT_TRUE(model().forward(*cache, in, LogitsMode::kAll, &a).ok());
  ASSERT_TRUE(model().forward(**restored, in, LogitsMode::kAll, &b).ok());
  EXPECT_EQ(max_abs_diff(a, b), 0.0);

  // Damaged files are refused with a clear error.
  const auto bytes = read_file_bytes(path);
  ASSERT_TRUE(bytes.ok());
  const std::string truncated = path + ".cut";
  ASSERT_TRUE(write_file_atomic(truncated, std::string(bytes->begin(), bytes->begin() + bytes->size() / 2)).ok());
  auto bad = KvCache::restore(truncated, model().cache_geometry(), &model().rope());
  EXPECT_EQ(bad.status().code(), ErrorCode::kDataLoss) << bad.status().to_string();
  std::string wrong_magic(bytes->begin(), bytes->end());
  wrong_magic[0] = 'X';
  ASSERT_TRUE(write_file_atomic(truncated, wrong_magic).ok());
  EXPECT_EQ(KvCache::restore(truncated, model().cache_geometry(), &model().rope()).status().code(),
            ErrorCode::kDataLoss);
  KvGeometry other = model().cache_geometry();
  other.n_layers += 1;
  EXPECT_EQ(KvCache::restore(path, other, &model().rope()).status().code(), ErrorCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Registry, ConformanceTest, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<SpecCase>& i) {
                           std::string n;
                           for (char c : i.param.spec) n += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return n;
                         });

TEST(RegistryTest, EveryPolicyDeclaresConformanceData) {
  ASSERT_FALSE(registered_policies().empty());
  for (const PolicyInfo& p : registered_policies()) {
    EXPECT_FALSE(p.test_specs.empty()) << p.name;
    EXPECT_FALSE(p.off_spec.empty()) << p.name;
    EXPECT_TRUE(p.make && p.roundtrip_tolerance) << p.name;
    for (const std::string& s : p.test_specs) {
      EXPECT_TRUE(parse_cache_spec(s, 5).ok()) << s;
    }
  }
}

}  // namespace
}  // namespace kvlab
