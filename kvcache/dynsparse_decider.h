// The learned keep deciders of the dynsparse policy (kvcache/policies/dynsparse_policy.cc): a
// network from the hidden state entering layer K, h [dim], to a keep score, trained by
// `kvlab calibrate --policy dynsparse:...` with the LM frozen.
//
//   mlp    Dynamic-LLaVA's output-text predictor (../shared/research/algorithms.md 4.2):
//          LayerNorm(dim) -> Linear(dim, 512) -> GELU -> Linear(512, 256) -> GELU
//          -> Linear(256, 128) -> GELU -> Linear(128, 2)
//   probe  logistic regression on the normalized hidden state (4.8 B):
//          LayerNorm(dim, no affine) -> Linear(dim, 2)
//
// Output channel 0 is "keep", 1 "drop"; the score is logit0 - logit1 (the paper keeps a token
// when it is positive; the policy's rate controller ranks it instead). A two-logit softmax
// cross-entropy is a logistic loss on that difference, so one loss trains both.
//
// Labels (the oracle of 4.8 B): on calibration text, with the full cache, the attention
// probability a token receives from the `horizon` queries after the next `skip` (0: the next
// `horizon`), summed over the query heads of every layer >= K; a token is labelled "keep" when
// its mass is above the median of its window. skip > 0 labels what a token is worth once it has
// left a recent window of `skip` tokens (evict:score=mlp,recent=skip).
//
// File: "KVLAB-DS" u32 version (2), u64 model fingerprint, i32 n_layers, layer K, dim, kind,
// horizon, skip, i64 train and held-out tokens, f64 held-out AUC and accuracy, the LayerNorm gain and
// bias [dim] and the linear layers (i32 in, out, f32 W [out, in], b [out]), FNV-1a checksum.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/json.h"
#include "base/status.h"
#include "kvcache/forward_batch.h"
#include "kvcache/policy.h"

namespace kvlab {

enum class DeciderKind : int32_t { kProbe = 0, kMlp = 1 };

struct DeciderNet {
  struct Linear {
    int in = 0, out = 0;
    std::vector<float> w;  // [out, in]
    std::vector<float> b;  // [out]
  };
  std::vector<float> ln_gain, ln_bias;  // [dim]
  std::vector<Linear> layers;           // GELU between consecutive layers; the last gives 2 logits

  int dim() const { return int(ln_gain.size()); }
  int64_t n_params() const;
  // Freshly initialized network of `kind` (PyTorch's default uniform init, from `seed`).
  static DeciderNet make(DeciderKind kind, int dim, uint64_t seed);
  // h: [n, dim] -> out [n]: logit0 - logit1 per row. `scratch` is reused across calls.
  void scores(const float* h, int64_t n, float* out, std::vector<float>& scratch) const;
};

struct DeciderFile {
  uint64_t model_fingerprint = 0;
  int n_layers = 0, layer = 0, dim = 0;
  DeciderKind kind = DeciderKind::kMlp;
  int horizon = 0, skip = 0;
  int64_t train_tokens = 0, valid_tokens = 0;
  double valid_auc = 0, valid_accuracy = 0;
  DeciderNet net;

  // An untrained network for a model of geometry g (hidden size q_dim) at layer K: the files of
  // the conformance suite and the tests, where the plumbing matters and not the choices.
  static DeciderFile untrained(const KvGeometry& g, int layer, DeciderKind kind, uint64_t seed);

  Status save(const std::string& path) const;
  // Refuses (saying what differs) a file of another version, another model (fingerprint, layer
  // count, hidden size = the query width), another layer K or another kind, or a damaged one.
  static StatusOr<DeciderFile> load(const std::string& path, const KvGeometry& g, int layer, DeciderKind kind);
};

struct DeciderFitConfig {
  DeciderKind kind = DeciderKind::kMlp;
  int batch = 256;            // tokens per Adam step
  int max_epochs = 60;
  int patience = 5;           // epochs without a better held-out loss before stopping
  double lr = 1e-3;
  double weight_decay = 1e-4; // decoupled (AdamW), weights only
  uint64_t seed = 1;
};

struct DeciderFitReport {
  int epochs = 0, best_epoch = 0;
  double train_loss = 0, valid_loss = 0;  // mean cross-entropy (nats) at the best epoch
  double train_auc = 0, valid_auc = 0, valid_accuracy = 0;
};

// Trains on x [n, dim] with labels y [n] (1 = keep); rows [valid_from, n) are held out for early
// stopping and the report. Adam on mini-batches, the epoch with the best held-out loss is kept.
StatusOr<DeciderNet> fit_decider(const DeciderFitConfig& config, const std::vector<float>& x, const std::vector<uint8_t>& y,
                                 int dim, int64_t valid_from, DeciderFitReport* report);

// The knorm decider's score of one token (4.8 C: low-norm keys draw attention): minus the mean
// over kv heads of the key's L2 norm. k: [kv_dim], pre- or post-RoPE (the rotation keeps norms).
float knorm_score(const float* k, const KvGeometry& g);

// The score each generated token gets once, at layer K, from one of the deciders (higher = more
// worth keeping): what dynsparse decides from (kept or never written) and what evict's decider
// scores rank (evicted lowest first). A generated token is a sequence's one-token forward after
// its first forward.
//   random  a hash of (seed, the sequence's count of scored tokens): the rate-matched control
//   knorm   knorm_score of the layer-K key
//   probe,  the network of a DeciderFile on the hidden state entering layer K; observe() must
//   mlp     see that forward's hidden states before score() is asked (KvCache calls
//           observe_hidden(K) before attend(K) whenever the policy wants_hidden(K))
class TokenScorer {
 public:
  enum class Kind { kRandom, kKnorm, kProbe, kMlp };
  static constexpr const char* kChoices[] = {"random", "knorm", "probe", "mlp"};

  // From a policy's decider name (one of kChoices), calib file ("" for none) and seed; refuses a
  // learned decider without calib=FILE, a file for another model, layer or kind, and a calib
  // file given to a decider that learns nothing. `policy` names the policy in messages.
  static StatusOr<TokenScorer> make(const std::string& policy, const std::string& decider, const std::string& calib,
                                    uint64_t seed, const KvGeometry& g, int layer);

  bool learned() const { return kind_ == Kind::kProbe || kind_ == Kind::kMlp; }
  int64_t n_params() const { return learned() ? net_.n_params() : 0; }

  //   h: [n_rows, dim] the residual stream entering layer K. Scores the generated rows.
  void observe(const ForwardBatch& batch, const float* h, int dim);
  // Row `row` of the current forward: k [kv_dim] its pre-RoPE layer-K key; `index` the
  // sequence's count of tokens scored before this one (random's input).
  float score(int row, const float* k, uint64_t index) const;
  // Frees the current forward's learned scores (call at commit).
  void clear() { std::vector<float>().swap(hidden_scores_); }

  // "decider_us_per_token": time in the learned network per token it scored (none scored: nothing).
  void report(JsonObject& out) const;

  static bool generated(const SeqSpan& sp) { return sp.n_new == 1 && sp.start_pos > 0; }

 private:
  Kind kind_ = Kind::kKnorm;
  uint64_t seed_ = 1;
  KvGeometry geometry_;
  DeciderNet net_;
  std::vector<float> hidden_scores_;  // [n_rows] of the current forward
  double seconds_ = 0;
  int64_t scored_ = 0;
};

// Area under the ROC curve of `scores` against `labels` (ties count one half).
double roc_auc(const std::vector<float>& scores, const std::vector<uint8_t>& labels);

}  // namespace kvlab
