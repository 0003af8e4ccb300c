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

}  // namespace kvlab::testing
