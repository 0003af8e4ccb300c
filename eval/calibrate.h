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
#include "kvcache/dynsparse_decider.h"
#include "kvcache/policy_spec.h"
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
  int horizon = 32;                   // dynsparse: queries after a token whose attention labels it
  int skip = 0;                       // dynsparse: ... counted after the next `skip` queries
};

struct CalibrateResult {
  int64_t tokens = 0, valid_tokens = 0;
  int windows = 0;
  double capture_seconds = 0;
  std::vector<double> fit_seconds;          // per policy
  std::vector<AquaPredictors> predictors;   // per policy (also written to its output)
};

// The one range of `spec` (a cache spec, ranges allowed) assigned to `policy`; an error names a
// spec with none or with several ("calibrate one at a time").
StatusOr<LayerAssignment> calibrated_range(const std::string& spec, int n_layers, const std::string& policy);

// Whether `policies` asks for dynsparse deciders (run_decider_calibration) rather than AQUA-KV
// predictors (run_calibration), and the tokens each captures by default: deciders learn from the
// attention of every query of layers >= K, slower per token.
inline bool calibrates_deciders(const std::vector<std::string>& policies) {
  return !policies.empty() && policies[0].rfind("dynsparse", 0) == 0;
}
inline int64_t default_calibration_tokens(bool deciders) { return deciders ? 32768 : CalibrateConfig().tokens; }

StatusOr<CalibrateResult> run_calibration(const Model& model, const CalibrateConfig& config, Progress& progress);
// Per-layer table: relMSE of the K and V predictions (fitted / held-out tokens) and equivalent
// bits = -log4(relMSE held out).
std::string format_calibration(const CalibrateResult& r, const CalibrateConfig& config);

// `kvlab calibrate --policy dynsparse:decider=mlp|probe,layer=K,...`: trains the learned keep
// deciders of kvcache/dynsparse_decider.h with the model frozen. The unmodified model (full f32
// cache) runs over windows of the text; per token it records the hidden state entering layer K
// (the features) and the attention probability it receives from the `horizon` queries after the
// next `skip`, summed over the query heads of layers >= K (the oracle). Tokens with a full horizon after
// position 16 are labelled, "keep" when above their window's median. The last windows are held
// out. Every policy given must name the same layer; one capture serves them all.
struct DeciderCalibrationResult {
  int windows = 0, layer = 0;
  int64_t tokens = 0, valid_tokens = 0;
  double capture_seconds = 0;
  double knorm_valid_auc = 0;  // the knorm decider's score (minus the mean key norm) on the held-out labels
  std::vector<double> fit_seconds;           // per policy
  std::vector<DeciderFitReport> reports;     // per policy
  std::vector<DeciderFile> files;            // per policy (also written to its output)
  std::vector<int64_t> file_bytes;           // per policy
};
StatusOr<DeciderCalibrationResult> run_decider_calibration(const Model& model, const CalibrateConfig& config,
                                                           Progress& progress);
std::string format_decider_calibration(const DeciderCalibrationResult& r, const CalibrateConfig& config);

}  // namespace kvlab
