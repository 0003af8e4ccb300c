#include "tests/testing/models.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "eval/metrics.h"
#include "tests/testing/test_paths.h"

namespace kvlab::testing {

const Model& stories260k() {
  static std::unique_ptr<Model> model = [] {
    auto m = Model::load(stories260k_path(), tok512_path());
    if (!m.ok()) {
      std::fprintf(stderr, "cannot load stories260K: %s\n", m.status().to_string().c_str());
      std::abort();
    }
    return std::move(m).value();
  }();
  return *model;
}

const Model* smollm2() {
  static std::unique_ptr<Model> model = []() -> std::unique_ptr<Model> {
    const std::string path = smollm2_path();
    if (path.empty()) return nullptr;
    auto m = Model::load(path);
    if (!m.ok()) {
      std::fprintf(stderr, "cannot load SmolLM2: %s\n", m.status().to_string().c_str());
      std::abort();
    }
    return std::move(m).value();
  }();
  return model.get();
}

std::vector<int32_t> greedy(const Model& model, KvCache& cache, int seq, std::vector<int32_t> prompt, int n) {
  std::vector<float> logits;
  std::vector<int32_t> out;
  SeqInput in{seq, prompt};
  EXPECT_TRUE(model.forward(cache, {&in, 1}, LogitsMode::kLast, &logits).ok());
  for (int i = 0; i < n; ++i) {
    out.push_back(argmax(logits));
    SeqInput step{seq, std::span<const int32_t>(&out.back(), 1)};
    EXPECT_TRUE(model.forward(cache, {&step, 1}, LogitsMode::kLast, &logits).ok());
  }
  return out;
}

std::vector<int32_t> scrambled_ids(int n) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back(int32_t(3 + (i * 131) % 500));
  return ids;
}

std::unique_ptr<KvCache> make_cache(const Model& model, const std::string& spec) {
  auto c = model.make_cache(spec, 1);
  EXPECT_TRUE(c.ok()) << spec << ": " << c.status().to_string();
  return c.ok() ? std::move(c).value() : nullptr;
}

void expect_spec_error(const Model& model, const std::string& spec, const std::string& needle) {
  auto c = model.make_cache(spec, 1);
  ASSERT_FALSE(c.ok()) << spec;
  EXPECT_NE(c.status().message().find(needle), std::string::npos) << c.status().message();
}

std::vector<std::vector<float>> decode_steps(const Model& model, KvCache& cache, const std::vector<int32_t>& ids,
                                             int prompt, const std::function<void(int32_t)>& after_step) {
  std::vector<std::vector<float>> steps;
  std::vector<float> logits;
  SeqInput in{0, std::span<const int32_t>(ids.data(), size_t(prompt))};
  EXPECT_TRUE(model.forward(cache, {&in, 1}, LogitsMode::kLast, &logits).ok());
  for (size_t t = size_t(prompt); t < ids.size(); ++t) {
    SeqInput one{0, std::span<const int32_t>(&ids[t], 1)};
    EXPECT_TRUE(model.forward(cache, {&one, 1}, LogitsMode::kLast, &logits).ok());
    steps.push_back(logits);
    if (after_step) after_step(int32_t(t));
  }
  return steps;
}

}  // namespace kvlab::testing
