// The decode-mode quality protocol (docs/architecture.md, "Measuring"):
//
//   W windows of N tokens are taken in order from the text, each starting with BOS. Every window
//   is prefilled with its first P tokens (one forward each), then tokens P .. N-2 are fed one per
//   step, all windows as one batch. The logits of each step predict the next token and are
//   scored: W * (N - 1 - P) tokens. Every policy runs in lockstep with a full f32 cache on the
//   same windows, which gives perplexity, KL divergence (reference || policy) and top-1 agreement
//   per scored token.
//
// The copy-retrieval task (retrieval = true): perplexity on prose barely notices a cache that
// forgot its distant past, a copy does. Each window is BOS, a passage of M tokens of the text,
// the D tokens that follow it in the text, then the same passage again (N = 1 + 2M + D tokens);
// everything before the second copy is prefilled (P = 1 + M + D) and the copy is decoded one
// token per step as above: copy tokens 1 .. M-1 are scored (token 0 cannot be known to repeat).
// Top-1 accuracy against the copied tokens is the task's score. Windows take consecutive,
// non-overlapping stretches of M + D tokens of the text.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/json.h"
#include "base/progress.h"
#include "base/status.h"
#include "eval/metrics.h"
#include "kvcache/memory.h"
#include "model/model.h"

namespace kvlab {

struct DecodeEvalConfig {
  std::vector<std::string> policies;  // specs; the reference full:dtype=f32 runs in any case
  int context = -1;                   // N; -1: 1024 or the model's context, if shorter
  int prefill = -1;                   // P; -1 means N / 2
  int windows = 8;                    // W
  bool retrieval = false;
  int passage = 64;                   // M
  int distance = -1;                  // D; -1: N - 1 - 2M (the copy ends at the context)
};

struct PolicyRun {
  std::string spec;  // canonical
  TokenScores scores;
  double decode_seconds = 0;  // time in this cache's decode forwards
  int64_t decode_tokens = 0;
  double prefill_seconds = 0;
  MemoryReport memory;            // at the end, all windows
  JsonObject decisions;           // KvCache::report() at the end (LightTransfer's lazy layers)
  int64_t values_represented = 0;  // K and V scalars of every token written, all layers
  int64_t prompt_values = 0;       // the same for the prefilled tokens alone
};

struct DecodeEvalResult {
  DecodeEvalConfig config;
  std::string model, text;
  PolicyRun reference;  // config.context / prefill: the window and prefill lengths actually used
  std::vector<PolicyRun> runs;

  // One JSON object per policy, with the keys the issue tracker and docs/results.md use.
  JsonObject to_json(const PolicyRun& run) const;
};

StatusOr<DecodeEvalResult> run_decode_eval(const Model& model, const std::string& model_label,
                                           const std::string& text_path, DecodeEvalConfig config,
                                           Progress& progress);

// The readable table of a result.
std::string format_decode_eval(const DecodeEvalResult& r);

}  // namespace kvlab
