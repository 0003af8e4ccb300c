// The learned keep deciders (kvcache/dynsparse_decider.h): the AUC against hand-counted cases;
// the trainer learns a rule of known shape (the MLP a nonlinear one the probe cannot express);
// files round-trip bit for bit and refuse another model, layer, kind or a damaged copy; and the
// calibration on stories260K labels tokens by attention so that the learned deciders beat
// chance on held-out text.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "base/file.h"
#include "eval/calibrate.h"
#include "kvcache/dynsparse_decider.h"
#include "tests/testing/models.h"
#include "tests/testing/test_paths.h"

namespace kvlab {
namespace {

TEST(DeciderTest, RocAucCountsOrderedPairs) {
  EXPECT_DOUBLE_EQ(roc_auc({0.1f, 0.2f, 0.8f, 0.9f}, {0, 0, 1, 1}), 1.0);
  EXPECT_DOUBLE_EQ(roc_auc({0.9f, 0.8f, 0.2f, 0.1f}, {0, 0, 1, 1}), 0.0);
  // Pairs (pos, neg): (0.5 vs 0.1) win, (0.5 vs 0.7) lose, (0.3 vs 0.1) win, (0.3 vs 0.7) lose.
  EXPECT_DOUBLE_EQ(roc_auc({0.5f, 0.1f, 0.3f, 0.7f}, {1, 0, 1, 0}), 0.5);
  // A tie between a positive and a negative counts one half: 1 win + 0.5 of 2 pairs.
  EXPECT_DOUBLE_EQ(roc_auc({0.4f, 0.4f, 0.9f}, {0, 1, 1}), 0.75);
}

// x ~ N(0, 1) [n, dim]; linear: y = (w . x > 0); nonlinear: y = (|w . x| > 0.6745 |w|), a
// median split that no linear function of x orders (its AUC for the probe is about 0.5).
void synthetic(int64_t n, int dim, bool nonlinear, std::vector<float>* x, std::vector<uint8_t>* y) {
  std::mt19937_64 rng(7);
  std::normal_distribution<float> gauss;
  std::vector<float> w(static_cast<size_t>(dim));
  double norm = 0;
  for (float& v : w) {
    v = gauss(rng);
    norm += double(v) * v;
  }
  x->resize(size_t(n * dim));
  y->resize(size_t(n));
  for (int64_t t = 0; t < n; ++t) {
    double dot = 0;
    for (int i = 0; i < dim; ++i) {
      const float xi = gauss(rng);
      (*x)[size_t(t * dim + i)] = xi;
      dot += double(xi) * w[size_t(i)];
    }
    (*y)[size_t(t)] = nonlinear ? std::fabs(dot) > 0.6745 * std::sqrt(norm) : dot > 0;
  }
}

TEST(DeciderTest, TrainerLearnsLinearAndNonlinearRules) {
  const int dim = 16;
  const int64_t n = 5000, valid_from = 4000;
  std::vector<float> x;
  std::vector<uint8_t> y;
  DeciderFitConfig cfg;
  cfg.max_epochs = 25;
  for (bool nonlinear : {false, true}) {
    synthetic(n, dim, nonlinear, &x, &y);
    for (DeciderKind kind : {DeciderKind::kProbe, DeciderKind::kMlp}) {
      cfg.kind = kind;
      DeciderFitReport rep;
      auto net = fit_decider(cfg, x, y, dim, valid_from, &rep);
      ASSERT_TRUE(net.ok()) << net.status().to_string();
      const bool expressible = kind == DeciderKind::kMlp || !nonlinear;
      SCOPED_TRACE(std::string(kind == DeciderKind::kMlp ? "mlp" : "probe") + (nonlinear ? ", |w.x| rule" : ", w.x rule"));
      if (expressible) {
        EXPECT_GT(rep.valid_auc, 0.97);
        EXPECT_GT(rep.valid_accuracy, 0.9);
      } else {
        EXPECT_LT(rep.valid_auc, 0.6);
      }
      EXPECT_GE(rep.best_epoch, 1);
      EXPECT_LE(rep.best_epoch, rep.epochs);
      // The report's held-out AUC is that of the returned network.
      std::vector<float> s(size_t(n - valid_from)), scratch;
      net->scores(&x[size_t(valid_from * dim)], n - valid_from, s.data(), scratch);
      EXPECT_NEAR(roc_auc(s, std::vector<uint8_t>(y.begin() + valid_from, y.end())), rep.valid_auc, 1e-9);
    }
  }
}

TEST(DeciderTest, BatchedScoresEqualOneRowAtATime) {
  const int dim = 48;
  const DeciderNet net = DeciderNet::make(DeciderKind::kMlp, dim, 3);
  std::vector<float> x;
  std::vector<uint8_t> y;
  synthetic(9, dim, false, &x, &y);
  std::vector<float> all(9), scratch;
  net.scores(x.data(), 9, all.data(), scratch);
  for (int t = 0; t < 9; ++t) {
    float one = 0;
    net.scores(&x[size_t(t * dim)], 1, &one, scratch);
    EXPECT_EQ(one, all[size_t(t)]) << t;
  }
}

TEST(DeciderTest, FileRoundTripsAndRefusesAnotherModelLayerKindOrDamage) {
  const Model& m = testing::stories260k();
  const KvGeometry g = m.cache_geometry();
  DeciderFile f = DeciderFile::untrained(g, 2, DeciderKind::kMlp, 5);
  f.horizon = 16;
  f.skip = 7;
  f.valid_auc = 0.75;
  const std::string dir = testing::temp_dir();
  const std::string path = dir + "/decider.bin";
  ASSERT_TRUE(f.save(path).ok());

  auto back = DeciderFile::load(path, g, 2, DeciderKind::kMlp);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->horizon, 16);
  EXPECT_EQ(back->skip, 7);
  EXPECT_EQ(back->valid_auc, 0.75);
  ASSERT_EQ(back->net.layers.size(), f.net.layers.size());
  for (size_t i = 0; i < f.net.layers.size(); ++i) EXPECT_EQ(back->net.layers[i].w, f.net.layers[i].w);

  auto expect_error = [&](const std::string& p, const KvGeometry& geo, int layer, DeciderKind kind, const std::string& needle) {
    auto r = DeciderFile::load(p, geo, layer, kind);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
  };
  expect_error(path, g, 3, DeciderKind::kMlp, "trained at layer=2, the policy asks for layer=3");
  expect_error(path, g, 2, DeciderKind::kProbe, "holds a decider=mlp, the policy asks for decider=probe");
  KvGeometry other = g;
  other.model_fingerprint ^= 1;
  expect_error(path, other, 2, DeciderKind::kMlp, "made for another model");

  auto bytes = read_file_bytes(path);
  ASSERT_TRUE(bytes.ok());
  const std::string damaged = dir + "/decider_damaged.bin";
  std::string b(bytes->begin(), bytes->end());
  b[b.size() / 2] ^= 0x10;
  ASSERT_TRUE(write_file_atomic(damaged, b).ok());
  expect_error(damaged, g, 2, DeciderKind::kMlp, "checksum mismatch");
  ASSERT_TRUE(write_file_atomic(damaged, b.substr(0, b.size() / 3)).ok());
  expect_error(damaged, g, 2, DeciderKind::kMlp, "checksum mismatch");
  expect_error(testing::stories260k_path(), g, 2, DeciderKind::kMlp, "not a dynsparse decider file");
}

// On stories260K with its own text: attention labels, the learned deciders beat chance on the
// held-out windows, and the files they write load into the policy.
TEST(DeciderTest, CalibrationLearnsTheAttentionOracle) {
  const Model& m = testing::stories260k();
  CalibrateConfig cfg;
  cfg.text_path = testing::shared_data_path("tinystories_valid_subset.txt");
  cfg.window = 256;
  cfg.horizon = 16;
  cfg.tokens = 3000;
  const std::string dir = testing::temp_dir();
  cfg.policies = {"dynsparse:decider=probe,layer=2", "dynsparse:decider=mlp,layer=2"};
  cfg.outputs = {dir + "/probe2.bin", dir + "/mlp2.bin"};
  Progress quiet(true);
  auto r = run_decider_calibration(m, cfg, quiet);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->tokens, int64_t(r->windows) * (256 - 16 - 16));
  for (size_t i = 0; i < 2; ++i) {
    SCOPED_TRACE(cfg.policies[i]);
    EXPECT_GT(r->reports[i].valid_auc, 0.6);
    EXPECT_EQ(r->files[i].valid_auc, r->reports[i].valid_auc);
    auto cache = m.make_cache(cfg.policies[i] + ",keep=0.5,calib=" + cfg.outputs[i], 1);
    EXPECT_TRUE(cache.ok()) << cache.status().to_string();
  }
  // Another layer's policy refuses these files.
  auto wrong = m.make_cache("dynsparse:decider=mlp,layer=3,calib=" + cfg.outputs[1], 1);
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("trained at layer=2"), std::string::npos) << wrong.status().message();

  // Labels from the queries after a recent window (--skip): a window labels fewer tokens, the
  // files say so, and evict's decider scores load them.
  cfg.skip = 24;
  cfg.policies = {"dynsparse:decider=probe,layer=2"};
  cfg.outputs = {dir + "/probe2_skip.bin"};
  auto s = run_decider_calibration(m, cfg, quiet);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  EXPECT_EQ(s->tokens, int64_t(s->windows) * (256 - 24 - 16 - 16));
  EXPECT_EQ(s->files[0].skip, 24);
  EXPECT_GT(s->reports[0].valid_auc, 0.6);
  EXPECT_TRUE(m.make_cache("evict:keep=0.5,layer=2,score=probe,recent=24,calib=" + cfg.outputs[0], 1).ok());
  cfg.skip = 240;
  auto bad = run_decider_calibration(m, cfg, quiet);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--window must be in [274, 512] for --horizon 16 and --skip 240"), std::string::npos)
      << bad.status().message();
}

}  // namespace
}  // namespace kvlab
