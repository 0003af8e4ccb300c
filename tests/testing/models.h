// Models shared by the suites, loaded once per test binary.
#pragma once

#include "model/model.h"

namespace kvlab::testing {

// stories260K (always present in ../shared); aborts the test binary if it cannot load.
const Model& stories260k();
// SmolLM2-135M, or null when the GGUF has not been fetched.
const Model* smollm2();

// Greedy continuation helper: runs `prompt` then feeds back argmax `n` times; returns the new ids.
std::vector<int32_t> greedy(const Model& model, KvCache& cache, int seq, std::vector<int32_t> prompt, int n);

}  // namespace kvlab::testing
