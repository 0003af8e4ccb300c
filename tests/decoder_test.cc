// The reference decoder against independent results: the golden outputs of
// ../shared/models/SOURCES.md (an independent float64 numpy forward of stories260K) and HF
// transformers' f32 forward of the SmolLM2 GGUF (tests/fixtures/smollm2_logits_hf.bin, made by
// scripts/fixtures/smollm2_logits.py). Plus batch invariance: sequences decoded together give
// the logits they get alone.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>

#include "base/file.h"
#include "base/progress.h"
#include "eval/metrics.h"
#include "eval/perplexity.h"
#include "tests/testing/models.h"
#include "tests/testing/test_paths.h"

namespace kvlab {
namespace {

using testing::greedy;

TEST(Stories260kTest, EncodeMatchesGolden) {
  const Model& m = testing::stories260k();
  std::vector<int32_t> ids = {m.tokenizer().bos_id()};
  for (int32_t t : m.tokenizer().encode("Once upon a time")) ids.push_back(t);
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 403, 407, 261, 378}));
}

TEST(Stories260kTest, GreedySixtyStepsMatchGolden) {
  const Model& m = testing::stories260k();
  const std::vector<int32_t> golden = {
      432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408, 419, 292,
      411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426,
      338, 391, 266, 267, 337, 335, 312, 432, 398, 312, 286, 267, 414, 270, 333, 415, 426, 13,  438, 310};
  for (const char* spec : {"full:dtype=f32", "full:dtype=f16"}) {
    auto cache = m.make_cache(spec, 1);
    ASSERT_TRUE(cache.ok());
    EXPECT_EQ(greedy(m, **cache, 0, {1, 403, 407, 261, 378}, 60), golden) << spec;
  }
  const std::vector<int32_t> text_ids(golden.begin(), golden.end());
  EXPECT_EQ(m.tokenizer().decode(text_ids),
            ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a "
            "big, red ball. She wanted to play with it, but it was too high.\nLily");
}

TEST(Stories260kTest, ParagraphPerplexityMatchesGolden) {
  const Model& m = testing::stories260k();
  Progress quiet(true);
  auto r = paragraph_perplexity(m, testing::shared_data_path("tinystories_valid_subset.txt"), 300,
                                "full:dtype=f32", quiet);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->tokens, 29256);
  EXPECT_NEAR(r->ppl, 4.201, 0.005);
  EXPECT_NEAR(r->nll, 1.4353, 0.0005);
}

// The HF fixture: per position the argmax, the log-sum-exp and (id, logit) pairs.
struct HfLogits {
  std::vector<int32_t> ids;
  std::vector<int32_t> argmax;
  std::vector<double> lse;
  int n_sel = 0;
  std::vector<int32_t> sel_ids;  // [n_pos, n_sel]
  std::vector<float> sel_logits;
};

HfLogits read_hf_fixture() {
  HfLogits f;
  auto bytes = read_file_bytes(testing::fixture_path("smollm2_logits_hf.bin"));
  EXPECT_TRUE(bytes.ok());
  if (!bytes.ok()) return f;
  const uint8_t* p = bytes->data();
  EXPECT_EQ(std::memcmp(p, "KVLABLGT", 8), 0);
  uint32_t hdr[4];
  std::memcpy(hdr, p + 8, 16);
  p += 24;
  const uint32_t n_pos = hdr[1], n_sel = hdr[3];
  f.n_sel = int(n_sel);
  f.ids.resize(n_pos);
  std::memcpy(f.ids.data(), p, 4 * n_pos);
  p += 4 * n_pos;
  for (uint32_t i = 0; i < n_pos; ++i) {
    int32_t am;
    double lse;
    std::memcpy(&am, p, 4);
    std::memcpy(&lse, p + 4, 8);
    p += 12;
    f.argmax.push_back(am);
    f.lse.push_back(lse);
    const size_t off = f.sel_ids.size();
    f.sel_ids.resize(off + n_sel);
    f.sel_logits.resize(off + n_sel);
    std::memcpy(&f.sel_ids[off], p, 4 * n_sel);
    std::memcpy(&f.sel_logits[off], p + 4 * n_sel, 4 * n_sel);
    p += 8 * n_sel;
  }
  return f;
}

TEST(SmolLM2Test, LogitsMatchTransformers) {
  const Model* m = testing::smollm2();
  if (!m) GTEST_SKIP() << "SmolLM2 GGUF not fetched (scripts/fetch_models.sh)";
  const HfLogits hf = read_hf_fixture();
  ASSERT_EQ(hf.ids.size(), 100u);
  auto cache = m->make_cache("full:dtype=f32", 1);
  ASSERT_TRUE(cache.ok());
  std::vector<float> logits;
  SeqInput in{0, hf.ids};
  ASSERT_TRUE(m->forward(**cache, {&in, 1}, LogitsMode::kAll, &logits).ok());
  const size_t V = size_t(m->config().vocab_size);
  double max_diff = 0;
  std::vector<double> lp;
  for (size_t p = 0; p < hf.ids.size(); ++p) {
    const std::span<const float> row(&logits[p * V], V);
    EXPECT_EQ(argmax(row), hf.argmax[p]) << "position " << p;
    for (int j = 0; j < hf.n_sel; ++j) {
      const size_t k = p * hf.n_sel + j;
      max_diff = std::max(max_diff, std::fabs(double(row[size_t(hf.sel_ids[k])]) - hf.sel_logits[k]));
    }
    // The log-sum-exp covers the whole vocabulary.
    log_softmax(row, &lp);
    const double lse = double(row[0]) - lp[0];
    max_diff = std::max(max_diff, std::fabs(lse - hf.lse[p]));
  }
  EXPECT_LE(max_diff, 0.05);
  std::printf("max |kvlab - transformers| over checked logits: %.6f\n", max_diff);
}

// Decodes sequences of different lengths in one batch and one by one; the logits must agree.
void expect_batch_invariant(const Model& m, const std::vector<int>& prompt_lengths, int steps) {
  const auto text = read_file_text(testing::shared_data_path("sherlock_holmes_adventures.txt"));
  ASSERT_TRUE(text.ok());
  const std::vector<int32_t> all = m.tokenizer().encode(text->substr(0, 20000));
  const int n = int(prompt_lengths.size());
  const size_t V = size_t(m.config().vocab_size);
  std::vector<std::vector<int32_t>> seqs(n);
  for (int s = 0; s < n; ++s) {
    const size_t start = size_t(s) * 997 % 3000;
    seqs[s].assign(all.begin() + start, all.begin() + start + prompt_lengths[s] + steps);
  }
  // Batched: all prompts in one forward, then every step all together, slots in reverse order.
  auto batched = m.make_cache("full:dtype=f32", n);
  ASSERT_TRUE(batched.ok());
  std::vector<std::vector<float>> batched_logits(n);
  {
    std::vector<SeqInput> in;
    for (int s = n - 1; s >= 0; --s) in.push_back({s, std::span<const int32_t>(seqs[s].data(), prompt_lengths[s])});
    std::vector<float> logits;
    ASSERT_TRUE(m.forward(**batched, in, LogitsMode::kLast, &logits).ok());
    for (int i = 0; i < n; ++i) {
      const int s = n - 1 - i;
      batched_logits[s].insert(batched_logits[s].end(), logits.begin() + i * V, logits.begin() + (i + 1) * V);
    }
    for (int t = 0; t < steps; ++t) {
      in.clear();
      for (int s = n - 1; s >= 0; --s) in.push_back({s, std::span<const int32_t>(&seqs[s][prompt_lengths[s] + t], 1)});
      ASSERT_TRUE(m.forward(**batched, in, LogitsMode::kLast, &logits).ok());
      for (int i = 0; i < n; ++i) {
        const int s = n - 1 - i;
        batched_logits[s].insert(batched_logits[s].end(), logits.begin() + i * V, logits.begin() + (i + 1) * V);
      }
    }
  }
  double max_diff = 0;
  for (int s = 0; s < n; ++s) {
    auto alone = m.make_cache("full:dtype=f32", 1);
    ASSERT_TRUE(alone.ok());
    std::vector<float> got, logits;
    SeqInput in{0, std::span<const int32_t>(seqs[s].data(), prompt_lengths[s])};
    ASSERT_TRUE(m.forward(**alone, {&in, 1}, LogitsMode::kLast, &logits).ok());
    got.insert(got.end(), logits.begin(), logits.end());
    for (int t = 0; t < steps; ++t) {
      SeqInput step{0, std::span<const int32_t>(&seqs[s][prompt_lengths[s] + t], 1)};
      ASSERT_TRUE(m.forward(**alone, {&step, 1}, LogitsMode::kLast, &logits).ok());
      got.insert(got.end(), logits.begin(), logits.end());
    }
    ASSERT_EQ(got.size(), batched_logits[s].size());
    for (size_t i = 0; i < got.size(); ++i) max_diff = std::max(max_diff, double(std::fabs(got[i] - batched_logits[s][i])));
  }
  EXPECT_LE(max_diff, 1e-5);
  std::printf("max |batched - one by one| = %g\n", max_diff);
}

TEST(BatchTest, Stories260kBatchEqualsOneByOne) { expect_batch_invariant(testing::stories260k(), {3, 40, 129, 300}, 12); }

TEST(BatchTest, SmolLM2BatchEqualsOneByOne) {
  const Model* m = testing::smollm2();
  if (!m) GTEST_SKIP() << "SmolLM2 GGUF not fetched (scripts/fetch_models.sh)";
  // 600 tokens make the decode attention split its history into two chunks.
  expect_batch_invariant(*m, {5, 70, 250, 600}, 6);
}

// Deterministic whatever the thread count: matmul sums in a fixed order and the attention work
// split depends only on each sequence's lengths.
TEST(ForwardTest, SameLogitsForOneAndTwoThreads) {
  const Model& m = testing::stories260k();
  std::vector<std::vector<float>> runs;
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    auto cache = m.make_cache("full:dtype=f16", 1);
    ASSERT_TRUE(cache.ok());
    std::vector<int32_t> ids = {1};
    for (int i = 0; i < 600; ++i) ids.push_back(int32_t(3 + (i * 37) % 500));
    ids.resize(500);
    std::vector<float> logits;
    SeqInput in{0, std::span<const int32_t>(ids.data(), 400)};
    ASSERT_TRUE(m.forward(**cache, {&in, 1}, LogitsMode::kAll, &logits).ok());
    for (size_t t = 400; t < ids.size(); ++t) {
      std::vector<float> step;
      SeqInput one{0, std::span<const int32_t>(&ids[t], 1)};
      ASSERT_TRUE(m.forward(**cache, {&one, 1}, LogitsMode::kLast, &step).ok());
      logits.insert(logits.end(), step.begin(), step.end());
    }
    runs.push_back(std::move(logits));
  }
  omp_set_num_threads(omp_get_num_procs());
  EXPECT_EQ(runs[0], runs[1]);
  EXPECT_EQ(runs[0], runs[2]);
}

TEST(ForwardTest, RejectsBadInput) {
  const Model& m = testing::stories260k();
  auto cache = m.make_cache("full:dtype=f32", 2);
  ASSERT_TRUE(cache.ok());
  std::vector<float> logits;
  const std::vector<int32_t> bad = {1, 512};
  SeqInput in{0, bad};
  Status s = m.forward(**cache, {&in, 1}, LogitsMode::kLast, &logits);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(s.message().find("outside the vocabulary"), std::string::npos);
  const std::vector<int32_t> ok = {1, 2};
  SeqInput slot{5, ok};
  EXPECT_EQ(m.forward(**cache, {&slot, 1}, LogitsMode::kLast, &logits).code(), ErrorCode::kOutOfRange);
  std::vector<int32_t> long_ids(513, 5);
  SeqInput too_long{0, long_ids};
  s = m.forward(**cache, {&too_long, 1}, LogitsMode::kLast, &logits);
  EXPECT_EQ(s.code(), ErrorCode::kOutOfRange);
  EXPECT_NE(s.message().find("context is 512"), std::string::npos);
  // Nothing was written by the failed calls.
  EXPECT_EQ((*cache)->seq_length(0), 0);
  EXPECT_EQ((*cache)->memory().kv_bytes(), 0);
}

}  // namespace
}  // namespace kvlab
