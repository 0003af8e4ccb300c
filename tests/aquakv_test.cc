// AQUA-KV: the chain against the full cache with quantization off, chain vs cached decoding,
// what the predictors buy, the ridge fit on data with a known answer, and every way a
// calibration file is refused. The conformance suite runs the policy through the generic tests.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <random>

#include "base/file.h"
#include "base/half.h"
#include "eval/calibrate.h"
#include "kvcache/aquakv.h"
#include "kvcache/kv_cache.h"
#include "tests/testing/models.h"
#include "tests/testing/test_paths.h"

namespace kvlab {
namespace {

const Model& model() { return testing::stories260k(); }

// Predictors for stories260K at `bits`, calibrated on TinyStories train text (the tests score
// the validation text). One file per bits value per process.
std::string calibration(const std::string& bits) {
  static std::map<std::string, std::string> made;
  if (made.count(bits)) return made[bits];
  const std::string path = std::filesystem::temp_directory_path() / ("kvlab_aquakv_test_" + bits + ".calib");
  CalibrateConfig cfg;
  cfg.text_path = testing::shared_data_path("tinystories_train_sample.txt");
  cfg.tokens = 16384;
  cfg.window = 256;
  cfg.policies = {"aquakv:bits=" + bits};
  cfg.outputs = {path};
  Progress quiet(true);
  auto r = run_calibration(model(), cfg, quiet);
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  return made[bits] = path;
}

// Logits of a prefill of 150 tokens then 40 decode steps, two slots of different lengths:
// [slot][step][vocab].
std::vector<std::vector<float>> run(const std::string& spec) {
  auto cache = model().make_cache(spec, 2);
  EXPECT_TRUE(cache.ok()) << spec << ": " << cache.status().to_string();
  const auto text = read_file_text(testing::shared_data_path("tinystories_valid_subset.txt"));
  const std::vector<int32_t> ids = model().tokenizer().encode(text->substr(0, 6000));
  const int prompt[2] = {150, 97};
  std::vector<std::vector<float>> out(2);
  std::vector<float> logits;
  const size_t V = size_t(model().config().vocab_size);
  std::vector<SeqInput> in = {{0, std::span<const int32_t>(ids.data(), prompt[0])},
                              {1, std::span<const int32_t>(ids.data() + 300, prompt[1])}};
  EXPECT_TRUE(model().forward(**cache, in, LogitsMode::kLast, &logits).ok());
  for (int step = 0; step <= 40; ++step) {
    for (int s = 0; s < 2; ++s) out[s].insert(out[s].end(), logits.begin() + s * V, logits.begin() + (s + 1) * V);
    if (step == 40) break;
    in[0] = {0, std::span<const int32_t>(&ids[size_t(prompt[0] + step)], 1)};
    in[1] = {1, std::span<const int32_t>(&ids[size_t(300 + prompt[1] + step)], 1)};
    EXPECT_TRUE(model().forward(**cache, in, LogitsMode::kLast, &logits).ok());
  }
  // Chunks were written: the comparisons below are about compressed tokens.
  EXPECT_GT((*cache)->memory()[MemoryKind::kPayload], 0) << spec;
  return out;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return m;
}

TEST(AquaKvTest, QuantizationOffReproducesFullCacheLogits) {
  const auto full = run("full:dtype=f32");
  const auto off = run("aquakv:bits=inf,calib=" + calibration("inf") + ",buffer=16,dtype=f32");
  for (int s = 0; s < 2; ++s) {
    const double d = max_abs_diff(full[s], off[s]);
    EXPECT_LE(d, 1e-4) << "slot " << s;
    std::printf("slot %d: max |logit difference| over 41 steps %.3g\n", s, d);
  }
}

TEST(AquaKvTest, ChainAndCachedDecodingAreBitIdentical) {
  const std::string spec = "aquakv:bits=2,calib=" + calibration("2") + ",buffer=16";
  const auto chain = run(spec + ",decode=chain");
  const auto cached = run(spec + ",decode=cached");
  for (int s = 0; s < 2; ++s) EXPECT_EQ(max_abs_diff(chain[s], cached[s]), 0.0) << "slot " << s;
}

// Relative squared error of the K (post-RoPE) and V a cache holds in `layer`, against the
// full f32 cache fed the same tokens.
double stored_error(const std::string& spec, int layer) {
  const auto text = read_file_text(testing::shared_data_path("tinystories_valid_subset.txt"));
  const std::vector<int32_t> ids = model().tokenizer().encode(text->substr(0, 3000));
  auto a = model().make_cache(spec, 1), b = model().make_cache("full:dtype=f32", 1);
  const SeqInput in{0, std::span<const int32_t>(ids.data(), 300)};
  EXPECT_TRUE(model().forward(**a, {&in, 1}, LogitsMode::kNone, nullptr).ok());
  EXPECT_TRUE(model().forward(**b, {&in, 1}, LogitsMode::kNone, nullptr).ok());
  const LayerContents x = (*a)->read(layer, 0), y = (*b)->read(layer, 0);
  EXPECT_EQ(x.positions, y.positions);
  double num = 0, den = 0;
  for (size_t i = 0; i < y.k.size(); ++i) {
    num += std::pow(double(x.k[i]) - y.k[i], 2) + std::pow(double(x.v[i]) - y.v[i], 2);
    den += double(y.k[i]) * y.k[i] + double(y.v[i]) * y.v[i];
  }
  return num / den;
}

TEST(AquaKvTest, PredictorsCutTheErrorOfTheStoredStates) {
  const std::string with = "aquakv:bits=2,calib=" + calibration("2") + ",buffer=16";
  const std::string without = "aquakv:bits=2,predictors=off,buffer=16";
  for (int layer = 1; layer < model().config().n_layers; ++layer) {
    EXPECT_LT(stored_error(with, layer), stored_error(without, layer)) << "layer " << layer;
  }
}

// Layer l's K and V are exact linear functions of layer l-1's: the fitted predictors must find
// them (up to the ridge damping), so predictions are nearly exact.
TEST(AquaKvTest, RidgeFitRecoversALinearChain) {
  KvGeometry g;
  g.n_layers = 3, g.n_heads = 2, g.n_kv_heads = 2, g.head_dim = 8, g.max_seq_len = 64;
  const int C = g.kv_dim(), n = 3000;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> m(size_t(C) * C), mv(size_t(C) * C);
  for (float& x : m) x = nd(rng) * 0.25f;
  for (float& x : mv) x = nd(rng) * 0.25f;
  std::vector<std::vector<float>> k(3, std::vector<float>(size_t(n) * C)), v = k;
  for (float& x : k[0]) x = nd(rng);
  for (float& x : v[0]) x = nd(rng);
  for (int l = 1; l < 3; ++l) {
    for (int t = 0; t < n; ++t) {
      for (int o = 0; o < C; ++o) {
        float sk = 1.0f, sv = -0.5f;  // biases
        for (int i = 0; i < C; ++i) {
          sk += m[size_t(o) * C + i] * k[l - 1][size_t(t) * C + i];
          sv += mv[size_t(o) * C + i] * v[l - 1][size_t(t) * C + i];
        }
        k[l][size_t(t) * C + o] = sk;
        v[l][size_t(t) * C + o] = sv;
      }
    }
  }
  std::vector<std::vector<uint16_t>> kh(3), vh(3);
  for (int l = 0; l < 3; ++l) {
    for (float x : k[l]) kh[l].push_back(f32_to_f16(x));
    for (float x : v[l]) vh[l].push_back(f32_to_f16(x));
  }
  AquaFitConfig cfg;
  cfg.first_layer = 0, cfg.last_layer = 2, cfg.bits = kAquaExactBits, cfg.n_tokens = n, cfg.valid_from = 2500;
  auto p = fit_aquakv(g, cfg, kh, vh);
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  ASSERT_EQ(p->layers.size(), 2u);
  for (const AquaLayerPredictor& lp : p->layers) {
    EXPECT_LT(lp.k_rel_valid, 1e-3);  // f16 capture rounding and the damping only (real layers: 0.03-0.4)
    EXPECT_LT(lp.v_rel_valid, 1e-3);
  }
  // The first layer's key bias is found: a0 ~ 1.
  for (int o = 0; o < C; ++o) EXPECT_NEAR(p->layers[0].a0[size_t(o)], 1.0f, 0.02f);
}

TEST(AquaKvTest, CalibrationFilesFromElsewhereAreRefused) {
  const std::string good = calibration("2");
  const auto bytes = read_file_bytes(good);
  ASSERT_TRUE(bytes.ok());
  const KvGeometry g = model().cache_geometry();
  const int last = g.n_layers - 1;
  const auto orth = HiggsQuantizer::Rotation::kOrthogonal;
  ASSERT_TRUE(AquaPredictors::load(good, g, 0, last, 2, orth).ok());
  auto refused = [&](const std::vector<uint8_t>& b, const KvGeometry& geo, int bits, const std::string& needle) {
    const std::string path = testing::temp_dir() + "/x.calib";
    ASSERT_TRUE(write_file_atomic(path, std::string(b.begin(), b.end())).ok());
    const auto r = AquaPredictors::load(path, geo, 0, last, bits, orth);
    ASSERT_FALSE(r.ok()) << needle;
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().to_string();
  };
  KvGeometry other = g;
  other.model_fingerprint ^= 1;
  refused(*bytes, other, 2, "another model");
  refused(*bytes, g, 3, "bits=2");
  for (size_t cut : {size_t(4), size_t(30), bytes->size() / 2, bytes->size() - 1}) {
    refused(std::vector<uint8_t>(bytes->begin(), bytes->begin() + cut), g, 2, cut < 12 ? "bad magic" : "truncated");
  }
  auto version = *bytes;
  version[8] = 99;
  refused(version, g, 2, "version 99");
  auto flipped = *bytes;
  flipped[flipped.size() / 2] ^= 0x40;
  refused(flipped, g, 2, "checksum");
  // A range that does not start at the file's first layer.
  const auto r = AquaPredictors::load(good, g, 1, last, 2, orth);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("must start"), std::string::npos);
}

TEST(AquaKvTest, CommandRefusesABadCalibrationFile) {
  const std::string path = testing::temp_dir() + "/bad.calib";
  ASSERT_TRUE(write_file_atomic(path, "KVLAB-AQ\x01\x00\x00\x00 short").ok());
  const auto r = testing::run_kvlab({"generate", "--model", "stories260k", "--prompt", "Once", "-n", "2", "--policy",
                                     "aquakv:bits=2,calib=" + path});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("calibration file"), std::string::npos) << r.output;
  const auto missing = testing::run_kvlab({"generate", "--model", "stories260k", "--prompt", "Once", "-n", "2", "--policy",
                                           "aquakv:bits=2"});
  EXPECT_EQ(missing.exit_code, 2) << missing.output;
  EXPECT_NE(missing.output.find("needs calib=FILE"), std::string::npos) << missing.output;
}

}  // namespace
}  // namespace kvlab
