// `kvlab calibrate`: fits AQUA-KV predictors (kvcache/aquakv.h) on a model's own K/V.
//
// The unmodified model (full f32 cache) runs over windows of the calibration text; the pre-RoPE
// K and V of every layer the policy covers are captured (f16, positions >= the policy's prefix:
// the exact prefix is never compressed), then fit_aquakv fits the layers in order. One capture
// serves several policies (bit widths), each written to its own file.
#pragma once

#include <string>
#include <vector>

#include "base/progress.h"
#include "base/status.h"
#include "kvcache/aquakv.h"
#include "model/model.h"

namespace kvlab {

struct CalibrateConfig {
  std::string text_path;
  int first_line = 1, last_line = 0;  // 1-based, inclusive; last_line 0: to the end
  int64_t tokens = 262144;            // tokens captured (per layer)
  int window = 512;                   // tokens per forward (BOS included)
  double valid_fraction = 0.125;      // windows held out for the statistics
  std::vector<std::string> policies;  // aquakv specs (one assignment each, predictors on)
  std::vector<std::string> outputs;   // one file per policy
};

struct CalibrateResult {
  int64_t tokens = 0, valid_tokens = 0;
  int windows = 0;
  double capture_seconds = 0;
  std::vector<double> fit_seconds;          // per policy
  std::vector<AquaPredictors> predictors;   // per policy (also written to its output)
};

StatusOr<CalibrateResult> run_calibration(const Model& model, const CalibrateConfig& config, Progress& progress);
// Per-layer table: relMSE of the K and V predictions (fitted / held-out tokens) and equivalent
// bits = -log4(relMSE held out).
std::string format_calibration(const CalibrateResult& r, const CalibrateConfig& config);

}  // namespace kvlab
