#include "eval/xkv_analyze.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "base/json.h"
#include "base/no_fill_vector.h"
#include "eval/text.h"
#include "kvcache/xkv.h"

namespace kvlab {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Per layer, [tokens, C] f32: pre-RoPE keys or values.
using LayerStates = std::vector<NoFillVector<float>>;  // LayerContents' arrays, moved

// Relative error of each layer of the group [l0, l0 + g) factorized together at rank g * r.
std::vector<double> group_errors(const LayerStates& x, int l0, int g, int64_t tokens, int C, int r) {
  const int width = g * C;
  std::vector<float> cat(size_t(tokens) * width);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int i = 0; i < g; ++i) {
      std::copy_n(&x[size_t(l0 + i)][size_t(t) * C], C, &cat[size_t(t) * width + size_t(i) * C]);
    }
  }
  const LowRankFactors f = factorize_low_rank(cat.data(), tokens, width, width, g * r);
  std::vector<double> err(size_t(g), 0.0), norm(size_t(g), 0.0);
  for (int64_t t = 0; t < tokens; ++t) {
    const float* a = &f.a[size_t(t) * f.rank];
    for (int c = 0; c < width; ++c) {
      double y = 0;
      for (int k = 0; k < f.rank; ++k) y += double(a[k]) * f.b[size_t(k) * width + c];
      const double v = cat[size_t(t) * width + c];
      err[size_t(c / C)] += (v - y) * (v - y);
      norm[size_t(c / C)] += v * v;
    }
  }
  for (int i = 0; i < g; ++i) err[size_t(i)] = norm[size_t(i)] > 0 ? std::sqrt(err[size_t(i)] / norm[size_t(i)]) : 0.0;
  return err;
}

}  // namespace

StatusOr<XkvAnalysis> analyze_xkv(const Model& model, const XkvAnalyzeConfig& cfg, Progress& progress) {
  const KvGeometry geo = model.cache_geometry();
  const int C = geo.kv_dim(), L = geo.n_layers;
  if (cfg.tokens < 2 || cfg.tokens > geo.max_seq_len) {
    return invalid_argument("xkv-analyze: --tokens must be in [2, " + std::to_string(geo.max_seq_len) + "]");
  }
  for (int r : {cfg.rank_k, cfg.rank_v}) {
    if (r < 1 || r > C) {
      return invalid_argument("xkv-analyze: ranks must be in [1, kv_dim = " + std::to_string(C) + "]");
    }
  }
  for (int g : cfg.groups) {
    if (g < 1 || g > L) return invalid_argument("xkv-analyze: groups must be in [1, " + std::to_string(L) + "]");
  }
  KVLAB_ASSIGN_OR_RETURN(std::string text, read_eval_text(cfg.text_path));
  progress.note("tokenizing " + std::to_string(text.size()) + " bytes of " + cfg.text_path);
  KVLAB_ASSIGN_OR_RETURN(auto windows,
                         make_windows(model.tokenizer().encode(text), model.tokenizer().bos_id(), cfg.tokens, 1));

  XkvAnalysis a;
  a.config = cfg;
  a.kv_dim = C;
  const auto t0 = Clock::now();
  progress.update("prefill", 0, 1);
  KVLAB_ASSIGN_OR_RETURN(auto cache, model.make_cache("full:dtype=f32", 1));
  const SeqInput in{0, std::span<const int32_t>(windows[0])};
  KVLAB_RETURN_IF_ERROR(model.forward(*cache, {&in, 1}, LogitsMode::kNone, nullptr));
  LayerStates keys(static_cast<size_t>(L)), values(static_cast<size_t>(L));
  for (int l = 0; l < L; ++l) {
    LayerContents c = cache->read(l, 0);
    model.rope().unrotate(c.k.data(), int64_t(c.positions.size()), geo.n_kv_heads, c.positions.data());
    keys[size_t(l)] = std::move(c.k);
    values[size_t(l)] = std::move(c.v);
  }
  cache.reset();
  a.capture_seconds = seconds_since(t0);
  const int64_t T = cfg.tokens;

  a.rows.resize(size_t(L));
  for (int l = 0; l < L; ++l) a.rows[size_t(l)].layer = l;
  int done = 0, total = 0;
  for (int g : cfg.groups) total += (L + g - 1) / g;
  for (int g : cfg.groups) {
    double secs = 0;
    int n_groups = 0;
    for (int l0 = 0; l0 < L; l0 += g, ++n_groups) {
      progress.update("factorize", done++, total);
      const int gl = std::min(g, L - l0);  // a short last group keeps the per-layer rank
      const auto t1 = Clock::now();
      const std::vector<double> ke = group_errors(keys, l0, gl, T, C, cfg.rank_k);
      const std::vector<double> ve = group_errors(values, l0, gl, T, C, cfg.rank_v);
      secs += seconds_since(t1);
      for (int i = 0; i < gl; ++i) {
        a.rows[size_t(l0 + i)].k_error.push_back(ke[size_t(i)]);
        a.rows[size_t(l0 + i)].v_error.push_back(ve[size_t(i)]);
      }
    }
    a.factor_seconds.push_back(secs / n_groups);
  }
  progress.update("factorize", total, total);
  SingularSubspaces pk, pv;  // layer l - 1's
  for (int l = 0; l < L; ++l) {
    progress.update("subspaces", l, L);
    SingularSubspaces nk = top_singular_subspaces(keys[size_t(l)].data(), T, C, C, cfg.rank_k);
    SingularSubspaces nv = top_singular_subspaces(values[size_t(l)].data(), T, C, C, cfg.rank_v);
    if (l > 0) {
      XkvLayerRow& r = a.rows[size_t(l - 1)];
      r.k_overlap = subspace_overlap(pk.left, nk.left, T, cfg.rank_k);
      r.v_overlap = subspace_overlap(pv.left, nv.left, T, cfg.rank_v);
      r.k_channel_overlap = subspace_overlap(pk.right, nk.right, C, cfg.rank_k);
      r.v_channel_overlap = subspace_overlap(pv.right, nv.right, C, cfg.rank_v);
    }
    pk = std::move(nk);
    pv = std::move(nv);
  }
  progress.update("subspaces", L, L);
  progress.finish();
  return a;
}

std::string format_xkv_analysis(const XkvAnalysis& a) {
  const XkvAnalyzeConfig& c = a.config;
  std::string out;
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "xKV factorization of %d prompt tokens, per-layer ranks K %d / V %d of kv_dim %d (group rank = layers "
                "x rank), capture %.1f s\n\n",
                c.tokens, c.rank_k, c.rank_v, a.kv_dim, a.capture_seconds);
  out += buf;
  out += "relative Frobenius error of pre-RoPE K and of V; overlap of layer l's and layer l+1's top-r singular\n"
         "subspaces (1: the same; unrelated ones: r/tokens for the token side, r/kv_dim for the channel side)\n\n";
  out += "layer";
  for (int g : c.groups) out += "   K G=" + std::to_string(g);
  for (int g : c.groups) out += "   V G=" + std::to_string(g);
  out += "     tok K   tok V      ch K    ch V\n";
  std::vector<double> mk(c.groups.size(), 0.0), mv(c.groups.size(), 0.0);
  for (const XkvLayerRow& r : a.rows) {
    std::snprintf(buf, sizeof buf, "%5d", r.layer);
    out += buf;
    for (size_t i = 0; i < c.groups.size(); ++i) {
      std::snprintf(buf, sizeof buf, "  %7.4f", r.k_error[i]);
      out += buf;
      mk[i] += r.k_error[i] / double(a.rows.size());
    }
    for (size_t i = 0; i < c.groups.size(); ++i) {
      std::snprintf(buf, sizeof buf, "  %7.4f", r.v_error[i]);
      out += buf;
      mv[i] += r.v_error[i] / double(a.rows.size());
    }
    if (r.k_overlap >= 0) {
      std::snprintf(buf, sizeof buf, "   %7.4f %7.4f   %7.4f %7.4f\n", r.k_overlap, r.v_overlap, r.k_channel_overlap,
                    r.v_channel_overlap);
    } else {
      std::snprintf(buf, sizeof buf, "         -       -         -       -\n");
    }
    out += buf;
  }
  out += " mean";
  for (double v : mk) {
    std::snprintf(buf, sizeof buf, "  %7.4f", v);
    out += buf;
  }
  for (double v : mv) {
    std::snprintf(buf, sizeof buf, "  %7.4f", v);
    out += buf;
  }
  out += "\n\nfactorization time per group (K and V)";
  for (size_t i = 0; i < c.groups.size(); ++i) {
    std::snprintf(buf, sizeof buf, "%s G=%d %.2f s", i ? "," : ":", c.groups[i], a.factor_seconds[i]);
    out += buf;
  }
  return out + "\n";
}

std::string xkv_analysis_json(const XkvAnalysis& a) {
  auto array = [](const std::vector<double>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + JsonValue(v[i]).text();
    return JsonValue::raw(s + "]");
  };
  std::vector<double> groups(a.config.groups.begin(), a.config.groups.end());
  std::vector<JsonObject> layers;
  for (const XkvLayerRow& r : a.rows) {
    JsonObject o;
    o.add("layer", r.layer).add("k_error", array(r.k_error)).add("v_error", array(r.v_error));
    auto maybe = [](double v) { return v >= 0 ? JsonValue(v) : JsonValue(); };
    o.add("k_overlap_next", maybe(r.k_overlap)).add("v_overlap_next", maybe(r.v_overlap));
    o.add("k_channel_overlap_next", maybe(r.k_channel_overlap));
    o.add("v_channel_overlap_next", maybe(r.v_channel_overlap));
    layers.push_back(o);
  }
  JsonObject root;
  root.add("tokens", a.config.tokens).add("rank_k", a.config.rank_k).add("rank_v", a.config.rank_v);
  root.add("kv_dim", a.kv_dim).add("groups", array(groups)).add("factor_seconds", array(a.factor_seconds));
  root.add("capture_seconds", a.capture_seconds).add("layers", JsonValue::raw(json_array(layers)));
  return root.dump();
}

}  // namespace kvlab
