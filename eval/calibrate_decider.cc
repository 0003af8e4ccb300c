// `kvlab calibrate` for the dynsparse policy's learned deciders (eval/calibrate.h).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "base/file.h"
#include "eval/calibrate.h"
#include "eval/text.h"

namespace kvlab {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

constexpr int kFirstLabelled = 16;  // the first positions draw attention as sinks whatever they hold

struct Target {
  int layer = 0;
  DeciderFitConfig fit;
};

StatusOr<Target> parse_target(const std::string& spec, int n_layers) {
  KVLAB_ASSIGN_OR_RETURN(const LayerAssignment range, calibrated_range(spec, n_layers, "dynsparse"));
  const PolicyParams& p = range.spec.params;
  const std::string decider = p.get("decider");
  if (decider != "mlp" && decider != "probe") {
    return invalid_argument("calibrate: '" + spec + "' has decider=" + decider +
                            ", which learns nothing (calibrate decider=mlp or decider=probe)");
  }
  Target t;
  t.layer = p.get_int("layer");
  if (t.layer < range.first_layer || t.layer > range.last_layer) {
    return invalid_argument("calibrate: layer=" + std::to_string(t.layer) + " is outside the layers " +
                            std::to_string(range.first_layer) + ".." + std::to_string(range.last_layer) +
                            " the dynsparse policy covers");
  }
  t.fit.kind = decider == "mlp" ? DeciderKind::kMlp : DeciderKind::kProbe;
  t.fit.seed = uint64_t(p.get_int("seed"));
  return t;
}

// The oracle: the attention probability each position p receives from the queries at positions
// p + skip + 1 .. p + skip + horizon, summed over the query heads of layers >= `first_layer`.
class OracleMass final : public AttentionObserver {
 public:
  OracleMass(int first_layer, int horizon, int skip, std::vector<double>* mass)
      : first_layer_(first_layer), horizon_(horizon), skip_(skip), mass_(mass) {}
  bool wants(int layer, int, int32_t) const override { return layer >= first_layer_; }
  //   probs, key_pos: [keys] ascending positions (one prefill, no history)
  void observe(int, int, int32_t query_pos, int, std::span<const float> probs,
               std::span<const int32_t> key_pos) const override {
    for (size_t j = probs.size(); j-- > 0;) {
      const int32_t p = key_pos[j];
      if (p >= query_pos - skip_) continue;
      if (p < query_pos - skip_ - horizon_) break;
      (*mass_)[size_t(p)] += probs[j];
    }
  }

 private:
  int first_layer_, horizon_, skip_;
  std::vector<double>* mass_;
};

// The residual stream entering `layer`, all rows: [n_rows, dim].
class HiddenCapture final : public HiddenObserver {
 public:
  explicit HiddenCapture(int layer) : layer_(layer) {}
  bool wants(int layer) const override { return layer == layer_; }
  void observe(int, const ForwardBatch& batch, const float* h, int dim) const override {
    dim_ = dim;
    rows_.assign(h, h + size_t(batch.n_rows()) * dim);
  }
  const std::vector<float>& rows() const { return rows_; }
  int dim() const { return dim_; }

 private:
  int layer_;
  mutable int dim_ = 0;
  mutable std::vector<float> rows_;
};

}  // namespace

StatusOr<DeciderCalibrationResult> run_decider_calibration(const Model& model, const CalibrateConfig& cfg,
                                                           Progress& progress) {
  const KvGeometry g = model.cache_geometry();
  if (cfg.policies.empty()) return invalid_argument("calibrate: no --policy given");
  if (cfg.policies.size() != cfg.outputs.size()) {
    return invalid_argument("calibrate: " + std::to_string(cfg.policies.size()) + " --policy but " +
                            std::to_string(cfg.outputs.size()) + " --out (give one --out per --policy)");
  }
  std::vector<Target> targets;
  for (const std::string& spec : cfg.policies) {
    KVLAB_ASSIGN_OR_RETURN(Target t, parse_target(spec, g.n_layers));
    if (!targets.empty() && t.layer != targets[0].layer) {
      return invalid_argument("calibrate: the dynsparse policies name layers " + std::to_string(targets[0].layer) +
                              " and " + std::to_string(t.layer) + "; one capture serves one layer");
    }
    targets.push_back(t);
  }
  const int K = targets[0].layer, N = cfg.horizon, S = cfg.skip;
  if (N < 1 || N >= g.max_seq_len) return invalid_argument("calibrate: --horizon must be in [1, " + std::to_string(g.max_seq_len - 1) + "]");
  if (S < 0 || S + N >= g.max_seq_len) {
    return invalid_argument("calibrate: --skip must be in [0, " + std::to_string(g.max_seq_len - 1 - N) + "] for --horizon " +
                            std::to_string(N));
  }
  const int per_window = cfg.window - S - N - kFirstLabelled;  // labelled tokens per window
  if (per_window < 2 || cfg.window > g.max_seq_len) {
    return invalid_argument("calibrate: --window must be in [" + std::to_string(S + N + kFirstLabelled + 2) + ", " +
                            std::to_string(g.max_seq_len) + "] for --horizon " + std::to_string(N) + " and --skip " +
                            std::to_string(S));
  }
  const int n_windows = int((cfg.tokens + per_window - 1) / per_window);
  if (n_windows < 2) return invalid_argument("calibrate: --tokens gives one window; training needs a held-out one");

  KVLAB_ASSIGN_OR_RETURN(std::string all_text, read_eval_text(cfg.text_path));
  KVLAB_ASSIGN_OR_RETURN(std::string text, select_lines(all_text, cfg.first_line, cfg.last_line));
  // Tokenize what the windows need (English: under 8 bytes a token), cut at a line end.
  const size_t want_bytes = size_t(n_windows) * size_t(cfg.window) * 8;
  if (const size_t cut = text.find('\n', want_bytes); cut != std::string::npos) text.resize(cut + 1);
  progress.note("tokenizing " + std::to_string(text.size()) + " bytes of " + cfg.text_path);
  const std::vector<int32_t> ids = model.tokenizer().encode(text);
  KVLAB_ASSIGN_OR_RETURN(auto windows, make_windows(ids, model.tokenizer().bos_id(), cfg.window, n_windows));

  DeciderCalibrationResult r;
  r.windows = n_windows;
  r.layer = K;
  r.tokens = int64_t(n_windows) * per_window;
  const int n_valid_windows = std::max(1, std::min(n_windows - 1, int(std::lround(n_windows * cfg.valid_fraction))));
  r.valid_tokens = int64_t(n_valid_windows) * per_window;

  // Capture: x [tokens, dim] hidden states at layer K, y [tokens] labels, knorm [tokens].
  const auto t0 = Clock::now();
  std::vector<float> x;
  std::vector<uint8_t> y;
  std::vector<float> knorm;
  std::vector<double> mass(size_t(cfg.window));
  OracleMass oracle(K, N, S, &mass);
  HiddenCapture hidden(K);
  KVLAB_ASSIGN_OR_RETURN(auto cache, model.make_cache("full:dtype=f32", 1));
  cache->set_observer(&oracle);
  cache->set_hidden_observer(&hidden);
  int dim = 0;
  for (int w = 0; w < n_windows; ++w) {
    progress.update("capture hidden states and attention", w, n_windows);
    cache->reset(0);
    std::fill(mass.begin(), mass.end(), 0.0);
    const SeqInput in{0, std::span<const int32_t>(windows[size_t(w)])};
    KVLAB_RETURN_IF_ERROR(model.forward(*cache, {&in, 1}, LogitsMode::kNone, nullptr));
    dim = hidden.dim();
    const int from = kFirstLabelled, to = cfg.window - S - N;
    std::vector<double> sorted(mass.begin() + from, mass.begin() + to);
    std::nth_element(sorted.begin(), sorted.begin() + sorted.size() / 2, sorted.end());
    const double median = sorted[sorted.size() / 2];
    const LayerContents c = cache->read(K, 0);  // post-RoPE keys: the rotation keeps each head's norm
    for (int p = from; p < to; ++p) {
      x.insert(x.end(), hidden.rows().begin() + size_t(p) * dim, hidden.rows().begin() + size_t(p + 1) * dim);
      y.push_back(mass[size_t(p)] > median);
      knorm.push_back(knorm_score(&c.k[size_t(p) * g.kv_dim()], g));
    }
  }
  progress.update("capture hidden states and attention", n_windows, n_windows);
  progress.finish();
  cache->set_observer(nullptr);
  cache->set_hidden_observer(nullptr);
  r.capture_seconds = seconds_since(t0);
  const int64_t valid_from = r.tokens - r.valid_tokens;
  r.knorm_valid_auc = roc_auc(std::vector<float>(knorm.begin() + valid_from, knorm.end()),
                              std::vector<uint8_t>(y.begin() + valid_from, y.end()));

  for (size_t i = 0; i < targets.size(); ++i) {
    progress.note("training " + cfg.policies[i]);
    const auto t1 = Clock::now();
    DeciderFitReport rep;
    KVLAB_ASSIGN_OR_RETURN(DeciderNet net, fit_decider(targets[i].fit, x, y, dim, valid_from, &rep));
    DeciderFile f;
    f.model_fingerprint = g.model_fingerprint;
    f.n_layers = g.n_layers;
    f.layer = K;
    f.dim = dim;
    f.kind = targets[i].fit.kind;
    f.horizon = N;
    f.skip = S;
    f.train_tokens = valid_from;
    f.valid_tokens = r.valid_tokens;
    f.valid_auc = rep.valid_auc;
    f.valid_accuracy = rep.valid_accuracy;
    f.net = std::move(net);
    KVLAB_RETURN_IF_ERROR(f.save(cfg.outputs[i]));
    KVLAB_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, read_file_bytes(cfg.outputs[i]));
    r.file_bytes.push_back(int64_t(bytes.size()));
    r.fit_seconds.push_back(seconds_since(t1));
    r.reports.push_back(rep);
    r.files.push_back(std::move(f));
  }
  return r;
}

std::string format_decider_calibration(const DeciderCalibrationResult& r, const CalibrateConfig& cfg) {
  std::string s;
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "decider calibration: layer %d, horizon %d after skip %d, %d windows of %d tokens, %lld tokens labelled "
                "(%lld held out), capture %.1f s\nheld-out AUC of knorm (no training): %.4f\n",
                r.layer, cfg.horizon, cfg.skip, r.windows, cfg.window, (long long)r.tokens, (long long)r.valid_tokens,
                r.capture_seconds, r.knorm_valid_auc);
  s += buf;
  std::snprintf(buf, sizeof buf, "\n%-44s %8s %7s %6s %9s %9s %9s %9s %9s %9s\n", "policy -> file", "params", "epochs",
                "best", "loss", "held loss", "AUC", "held AUC", "held acc", "fit s");
  s += buf;
  for (size_t i = 0; i < r.files.size(); ++i) {
    const DeciderFitReport& p = r.reports[i];
    std::snprintf(buf, sizeof buf, "%-44s %8lld %7d %6d %9.4f %9.4f %9.4f %9.4f %9.4f %9.1f\n",
                  (cfg.policies[i] + " -> " + cfg.outputs[i]).c_str(), (long long)r.files[i].net.n_params(), p.epochs,
                  p.best_epoch, p.train_loss, p.valid_loss, p.train_auc, p.valid_auc, p.valid_accuracy, r.fit_seconds[i]);
    s += buf;
    std::snprintf(buf, sizeof buf, "  file: %lld bytes\n", (long long)r.file_bytes[i]);
    s += buf;
  }
  return s;
}

}  // namespace kvlab
