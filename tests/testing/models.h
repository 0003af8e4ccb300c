// Models shared by the suites, loaded once per test binary.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"

namespace kvlab::testing {

// stories260K (always present in ../shared); aborts the test binary if it cannot load.
const Model& stories260k();
// SmolLM2-135M, or null when the GGUF has not been fetched.
const Model* smollm2();

// Greedy continuation helper: runs `prompt` then feeds back argmax `n` times; returns the new ids.
std::vector<int32_t> greedy(const Model& model, KvCache& cache, int seq, std::vector<int32_t> prompt, int n);

// n token ids cycling through 3..502 in a fixed scrambled order (valid for both test vocabularies).
std::vector<int32_t> scrambled_ids(int n);
// A one-slot cache of `spec`, or null after a test failure that names the error.
std::unique_ptr<KvCache> make_cache(const Model& model, const std::string& spec);
// Expects `spec` to be refused with a message containing `needle`.
void expect_spec_error(const Model& model, const std::string& spec, const std::string& needle);
// Prefills the first `prompt` tokens of `ids` into slot 0, then decodes the rest one token per
// step, calling after_step(position of the step's token) after each. Returns the logits of every
// decode step, [steps][vocab].
std::vector<std::vector<float>> decode_steps(const Model& model, KvCache& cache, const std::vector<int32_t>& ids,
                                             int prompt, const std::function<void(int32_t)>& after_step = nullptr);

}  // namespace kvlab::testing
