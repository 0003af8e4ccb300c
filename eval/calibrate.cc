#include "eval/calibrate.h"

#include <chrono>
#include <cmath>
#include <cstdio>

#include "base/file.h"
#include "base/half.h"
#include "eval/text.h"
#include "kvcache/policy_spec.h"

namespace kvlab {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// What one --policy asks calibration for.
struct Target {
  AquaFitConfig fit;
  int prefix = 0;
};

StatusOr<Target> parse_target(const std::string& spec, int n_layers) {
  KVLAB_ASSIGN_OR_RETURN(const LayerAssignment range, calibrated_range(spec, n_layers, "aquakv"));
  const PolicyParams& p = range.spec.params;
  if (p.get("predictors") != "on") return invalid_argument("calibrate: '" + spec + "' has predictors=off (nothing to fit)");
  Target t;
  t.fit.first_layer = range.first_layer;
  t.fit.last_layer = range.last_layer;
  t.fit.bits = aqua_bits_param(p.get("bits"));
  t.fit.rotation = aqua_rotation_param(p.get("rotation"));
  t.prefix = p.get_int("prefix");
  return t;
}

}  // namespace

StatusOr<LayerAssignment> calibrated_range(const std::string& spec, int n_layers, const std::string& policy) {
  KVLAB_ASSIGN_OR_RETURN(auto layout, parse_cache_spec(spec, n_layers));
  const LayerAssignment* found = nullptr;
  for (const LayerAssignment& a : layout) {
    if (a.spec.name != policy) continue;
    if (found) return invalid_argument("calibrate: '" + spec + "' has several " + policy + " ranges; calibrate one at a time");
    found = &a;
  }
  if (!found) return invalid_argument("calibrate: '" + spec + "' has no " + policy + " layers");
  return *found;
}

StatusOr<CalibrateResult> run_calibration(const Model& model, const CalibrateConfig& cfg, Progress& progress) {
  const KvGeometry g = model.cache_geometry();
  const int C = g.kv_dim();
  if (cfg.policies.empty()) return invalid_argument("calibrate: no --policy given");
  if (cfg.policies.size() != cfg.outputs.size()) {
    return invalid_argument("calibrate: " + std::to_string(cfg.policies.size()) + " --policy but " +
                            std::to_string(cfg.outputs.size()) + " --out (give one --out per --policy)");
  }
  std::vector<Target> targets;
  int first = g.n_layers, last = -1, prefix = 0;
  for (const std::string& spec : cfg.policies) {
    KVLAB_ASSIGN_OR_RETURN(Target t, parse_target(spec, g.n_layers));
    first = std::min(first, t.fit.first_layer);
    last = std::max(last, t.fit.last_layer);
    prefix = std::max(prefix, t.prefix);
    targets.push_back(t);
  }
  if (cfg.window < prefix + 2 || cfg.window > g.max_seq_len) {
    return invalid_argument("calibrate: --window must be in [" + std::to_string(prefix + 2) + ", " +
                            std::to_string(g.max_seq_len) + "]");
  }
  if (cfg.tokens < 16) return invalid_argument("calibrate: --tokens must be at least 16");

  KVLAB_ASSIGN_OR_RETURN(std::string all_text, read_eval_text(cfg.text_path));
  KVLAB_ASSIGN_OR_RETURN(std::string text, select_lines(all_text, cfg.first_line, cfg.last_line));
  progress.note("tokenizing " + std::to_string(text.size()) + " bytes of " + cfg.text_path);
  const std::vector<int32_t> ids = model.tokenizer().encode(text);
  const int per_window = cfg.window - prefix;  // captured tokens per window
  const int n_windows = int((cfg.tokens + per_window - 1) / per_window);
  KVLAB_ASSIGN_OR_RETURN(auto windows, make_windows(ids, model.tokenizer().bos_id(), cfg.window, n_windows));

  CalibrateResult r;
  r.windows = n_windows;
  r.tokens = int64_t(n_windows) * per_window;
  const int n_valid_windows = std::min(n_windows - 1, int(std::lround(n_windows * cfg.valid_fraction)));
  r.valid_tokens = int64_t(n_valid_windows) * per_window;

  // Capture: [layer][token][C] f16 bits, pre-RoPE.
  const auto t0 = Clock::now();
  std::vector<std::vector<uint16_t>> keys(size_t(last - first + 1)), values(keys.size());
  for (auto& k : keys) k.reserve(size_t(r.tokens) * C);
  for (auto& v : values) v.reserve(size_t(r.tokens) * C);
  KVLAB_ASSIGN_OR_RETURN(auto cache, model.make_cache("full:dtype=f32", 1));
  for (int w = 0; w < n_windows; ++w) {
    progress.update("capture K/V", w, n_windows);
    cache->reset(0);
    const SeqInput in{0, std::span<const int32_t>(windows[size_t(w)])};
    KVLAB_RETURN_IF_ERROR(model.forward(*cache, {&in, 1}, LogitsMode::kNone, nullptr));
    for (int l = first; l <= last; ++l) {
      LayerContents c = cache->read(l, 0);
      model.rope().unrotate(c.k.data(), int64_t(c.positions.size()), g.n_kv_heads, c.positions.data());
      for (size_t i = size_t(prefix) * C; i < c.k.size(); ++i) {
        keys[size_t(l - first)].push_back(f32_to_f16(c.k[i]));
        values[size_t(l - first)].push_back(f32_to_f16(c.v[i]));
      }
    }
  }
  progress.update("capture K/V", n_windows, n_windows);
  progress.finish();
  r.capture_seconds = seconds_since(t0);

  for (size_t i = 0; i < targets.size(); ++i) {
    const auto t1 = Clock::now();
    AquaFitConfig fit = targets[i].fit;
    fit.n_tokens = r.tokens;
    fit.valid_from = r.tokens - r.valid_tokens;
    // Layers of this target within the captured range.
    std::vector<std::vector<uint16_t>> k(keys.begin() + (fit.first_layer - first), keys.begin() + (fit.last_layer - first + 1));
    std::vector<std::vector<uint16_t>> v(values.begin() + (fit.first_layer - first), values.begin() + (fit.last_layer - first + 1));
    struct Ctx { Progress* p; const std::string* spec; int first, last; } ctx{&progress, &cfg.policies[i], fit.first_layer, fit.last_layer};
    auto on_layer = [](void* user, int layer, const AquaLayerPredictor*) {
      auto* c = static_cast<Ctx*>(user);
      c->p->update("fit " + *c->spec, layer - c->first + 1, c->last - c->first + 1);
    };
    KVLAB_ASSIGN_OR_RETURN(AquaPredictors p, fit_aquakv(g, fit, k, v, on_layer, &ctx));
    progress.finish();
    KVLAB_RETURN_IF_ERROR(p.save(cfg.outputs[i]));
    r.fit_seconds.push_back(seconds_since(t1));
    r.predictors.push_back(std::move(p));
  }
  return r;
}

std::string format_calibration(const CalibrateResult& r, const CalibrateConfig& cfg) {
  std::string s;
  char buf[256];
  std::snprintf(buf, sizeof buf, "calibration: %d windows of %d tokens, %lld tokens captured (%lld held out), capture %.1f s\n",
                r.windows, cfg.window, (long long)r.tokens, (long long)r.valid_tokens, r.capture_seconds);
  s += buf;
  auto eq_bits = [](double rel) { return rel > 0 ? -std::log(rel) / std::log(4.0) : 0.0; };
  for (size_t i = 0; i < r.predictors.size(); ++i) {
    const AquaPredictors& p = r.predictors[i];
    std::snprintf(buf, sizeof buf, "\n%s -> %s (fit %.1f s)\n%5s %10s %10s %7s %10s %10s %7s\n", cfg.policies[i].c_str(),
                  cfg.outputs[i].c_str(), r.fit_seconds[i], "layer", "K fit", "K held", "K bits", "V fit", "V held", "V bits");
    s += buf;
    for (int l = p.first_layer + 1; l <= p.last_layer; ++l) {
      const AquaLayerPredictor& lp = p.at(l);
      std::snprintf(buf, sizeof buf, "%5d %10.4f %10.4f %7.2f %10.4f %10.4f %7.2f\n", l, lp.k_rel_train, lp.k_rel_valid,
                    eq_bits(lp.k_rel_valid), lp.v_rel_train, lp.v_rel_valid, eq_bits(lp.v_rel_valid));
      s += buf;
    }
  }
  return s;
}

}  // namespace kvlab
