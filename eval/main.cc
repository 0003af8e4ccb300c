// The kvlab command. Every error is one line on stderr and exit code 2.
//
//   kvlab info      --model M
//   kvlab generate  --model M --prompt TEXT [-n N] [--policy SPEC] [--temperature T] [--seed S]
//   kvlab eval      --model M --text FILE --policy SPEC [--policy SPEC ...] [--context N]
//                   [--prefill P] [--windows W] [--json OUT] [--task text|retrieval] [--passage M]
//                   [--distance D]
//   kvlab ppl       --model M --text FILE [--paragraphs N] [--policy SPEC]
//   kvlab logits    --model M (--prompt TEXT | --ids 1,2,3) --out FILE.npy [--policy SPEC]
//   kvlab calibrate --model M --text FILE --policy aquakv:... --out FILE [--policy .. --out ..]
//                   [--lines A-B] [--tokens N] [--window W]
//   kvlab xkv-analyze --model M --text FILE [--tokens N] [--rank-k R] [--rank-v R] [--groups 1,2,4]
//                   [--json OUT]
//   kvlab policies
//   kvlab isas
// Common: [--tokenizer FILE] [--threads T] [--quiet]
#include <omp.h>

#include <chrono>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "base/file.h"
#include "base/json.h"
#include "base/progress.h"
#include "base/status.h"
#include "eval/calibrate.h"
#include "eval/decode_eval.h"
#include "eval/metrics.h"
#include "eval/npy.h"
#include "eval/perplexity.h"
#include "eval/xkv_analyze.h"
#include "kernels/cpu/cpu_features.h"
#include "kvcache/registry.h"
#include "model/gguf.h"
#include "model/model.h"

namespace kvlab {
namespace {

constexpr const char* kUsage =
    "usage: kvlab <command> [options]\n"
    "\n"
    "commands:\n"
    "  info      --model M                      model config and tensor summary\n"
    "  generate  --model M --prompt TEXT [-n N] [--policy SPEC] [--temperature T] [--seed S]\n"
    "  eval      --model M --text FILE --policy SPEC [--policy SPEC ...] [--context N]\n"
    "            [--prefill P] [--windows W] [--json OUT]   (context: 1024 or the model's, if shorter)\n"
    "            [--task text|retrieval] [--passage M] [--distance D]\n"
    "                                           retrieval: BOS, M tokens, the next D, the M again;\n"
    "                                           the copy decoded and scored (D: fills the context)\n"
    "                                           decode-mode quality vs the full f32 cache\n"
    "  ppl       --model M --text FILE [--paragraphs N] [--policy SPEC]\n"
    "                                           perplexity over blank-line-separated paragraphs\n"
    "  logits    --model M (--prompt TEXT | --ids 1,2,3) --out FILE.npy [--policy SPEC]\n"
    "                                           f32 logits of every position of one prefill\n"
    "  calibrate --model M --text FILE --policy aquakv:bits=B,... --out FILE [--policy P --out F ...]\n"
    "            [--lines A-B] [--tokens N] [--window W]   AQUA-KV predictors from the model's own K/V\n"
    "  calibrate --model M --text FILE --policy dynsparse:decider=mlp|probe,layer=K --out FILE [...]\n"
    "            [--lines A-B] [--tokens N] [--window W] [--horizon N] [--skip S]\n"
    "                                           dynsparse keep deciders trained on attention labels\n"
    "  xkv-analyze --model M --text FILE [--tokens N] [--rank-k R] [--rank-v R] [--groups 1,2,4] [--json OUT]\n"
    "                                           xKV: per-layer low-rank error of K and V in groups of\n"
    "                                           adjacent layers, subspace overlap of adjacent layers\n"
    "  policies                                 registered cache policies and their parameters\n"
    "  isas                                     SIMD instruction sets this CPU supports, narrowest\n"
    "                                           first; the one the kernels use is marked (active)\n"
    "\n"
    "common options: --tokenizer FILE (llama2.c models), --threads T, --quiet\n"
    "models: a file (GGUF or llama2.c) or an alias: stories260k, smollm2-135m\n"
    "policy specs: NAME[:key=value,...] or per layer: L0-14=full:dtype=f16;L15-29=full:dtype=bf16\n";

// --key value options of one command; flags take no value.
class Args {
 public:
  static StatusOr<Args> parse(int argc, char** argv, int first, const std::set<std::string>& options,
                              const std::set<std::string>& flags) {
    Args a;
    for (int i = first; i < argc; ++i) {
      std::string key = argv[i];
      if (flags.count(key)) {
        a.values_[key].push_back("1");
        continue;
      }
      if (!options.count(key)) {
        std::string valid;
        for (const auto& o : options) valid += " " + o;
        for (const auto& f : flags) valid += " " + f;
        return invalid_argument("unknown option '" + key + "' (valid:" + valid + ")");
      }
      if (i + 1 >= argc) return invalid_argument("option " + key + " needs a value");
      a.values_[key].push_back(argv[++i]);
    }
    return a;
  }
  bool has(const std::string& k) const { return values_.count(k) > 0; }
  std::vector<std::string> all(const std::string& k) const {
    const auto it = values_.find(k);
    return it == values_.end() ? std::vector<std::string>{} : it->second;
  }
  StatusOr<std::string> get(const std::string& k) const {
    const auto v = all(k);
    if (v.empty()) return invalid_argument("missing required option " + k);
    if (v.size() > 1) return invalid_argument("option " + k + " given more than once");
    return v[0];
  }
  std::string get_or(const std::string& k, const std::string& fallback) const {
    const auto v = all(k);
    return v.empty() ? fallback : v.back();
  }
  StatusOr<int64_t> get_int(const std::string& k, int64_t fallback, int64_t min, int64_t max) const {
    if (!has(k)) return fallback;
    const std::string s = all(k).back();
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(s, &used);
    } catch (...) {
      used = 0;
    }
    if (used != s.size() || s.empty()) return invalid_argument("option " + k + " needs an integer, got '" + s + "'");
    if (v < min || v > max) {
      return invalid_argument("option " + k + " = " + s + " is out of range [" + std::to_string(min) + ", " +
                              std::to_string(max) + "]");
    }
    return int64_t(v);
  }
  StatusOr<double> get_float(const std::string& k, double fallback) const {
    if (!has(k)) return fallback;
    const std::string s = all(k).back();
    size_t used = 0;
    double v = 0;
    try {
      v = std::stod(s, &used);
    } catch (...) {
      used = 0;
    }
    if (used != s.size() || s.empty() || !std::isfinite(v)) {
      return invalid_argument("option " + k + " needs a number, got '" + s + "'");
    }
    return v;
  }

 private:
  std::map<std::string, std::vector<std::string>> values_;
};

const std::set<std::string> kCommon = {"--model", "--tokenizer", "--threads"};

std::set<std::string> with_common(std::set<std::string> s) {
  s.insert(kCommon.begin(), kCommon.end());
  return s;
}

Status apply_threads(const Args& a) {
  KVLAB_ASSIGN_OR_RETURN(int64_t t, a.get_int("--threads", 0, 0, 1024));
  if (t > 0) omp_set_num_threads(int(t));
  return Status::Ok();
}

StatusOr<std::unique_ptr<Model>> load_model(const Args& a) {
  KVLAB_ASSIGN_OR_RETURN(std::string m, a.get("--model"));
  return Model::load(m, a.get_or("--tokenizer", ""));
}

Status cmd_info(const Args& a) {
  KVLAB_ASSIGN_OR_RETURN(auto model, load_model(a));
  const ModelConfig& c = model->config();
  std::printf("model        %s\n", model->path().c_str());
  std::printf("format       %s (%s)\n", c.format.c_str(), c.name.c_str());
  std::printf("layers       %d\n", c.n_layers);
  std::printf("dim          %d (hidden %d)\n", c.dim, c.hidden_dim);
  std::printf("heads        %d query, %d kv, head size %d (GQA group %d)\n", c.n_heads, c.n_kv_heads, c.head_dim,
              c.n_heads / c.n_kv_heads);
  std::printf("vocab        %d (%s tokenizer, bos %d, eos %d)\n", c.vocab_size, model->tokenizer().kind().c_str(),
              model->tokenizer().bos_id(), model->tokenizer().eos_id());
  std::printf("context      %d\n", c.max_seq_len);
  std::printf("rope         theta %g, %s pairs\n", double(c.rope_theta),
              c.rope_style == RopeStyle::kInterleaved ? "interleaved (2i, 2i+1)" : "half (i, i+d/2)");
  std::printf("norm eps     %g\n", double(c.norm_eps));
  std::printf("embeddings   %s\n", c.tied_embeddings ? "tied (classifier = token embedding)" : "separate classifier");
  std::printf("weights      %s as f32 in memory (read once per decode step)\n", format_bytes(model->weight_bytes()).c_str());
  std::printf("kv per token %d values (K and V, all layers) = %d bytes in f16\n", 2 * c.n_layers * c.n_kv_heads * c.head_dim,
              4 * c.n_layers * c.n_kv_heads * c.head_dim);
  std::printf("cpu kernels  %s (detected %s), %d threads\n", isa_name(active_isa()), isa_name(detected_isa()),
              omp_get_max_threads());
  if (c.format == "gguf") {
    KVLAB_ASSIGN_OR_RETURN(GgufFile g, GgufFile::open(model->path()));
    std::map<std::string, std::pair<int, int64_t>> by_type;
    for (const auto& t : g.tensors()) {
      auto& e = by_type[ggml_type_info(uint32_t(t.type))->name];
      e.first += 1;
      e.second += t.n_elements;
    }
    std::printf("tensors      %zu in GGUF v%u:", g.tensors().size(), g.version());
    for (const auto& [name, e] : by_type) std::printf(" %d %s (%.2fM values)", e.first, name.c_str(), e.second / 1e6);
    std::printf("\n");
  } else {
    int64_t params = model->weight_bytes() / 4;
    std::printf("tensors      %lld parameters, all f32\n", static_cast<long long>(params));
  }
  return Status::Ok();
}

Status cmd_generate(const Args& a) {
  KVLAB_ASSIGN_OR_RETURN(auto model, load_model(a));
  KVLAB_ASSIGN_OR_RETURN(std::string prompt, a.get("--prompt"));
  KVLAB_ASSIGN_OR_RETURN(int64_t n, a.get_int("-n", 64, 0, 1 << 20));
  KVLAB_ASSIGN_OR_RETURN(double temperature, a.get_float("--temperature", 0.0));
  KVLAB_ASSIGN_OR_RETURN(int64_t seed, a.get_int("--seed", 0, 0, INT64_MAX));
  if (temperature < 0) return invalid_argument("--temperature must be >= 0");
  const bool quiet = a.has("--quiet");
  KVLAB_ASSIGN_OR_RETURN(auto cache, model->make_cache(a.get_or("--policy", kDefaultPolicySpec), 1));
  const Tokenizer& tok = model->tokenizer();
  std::vector<int32_t> ids;
  if (model->config().format == "llama2c") ids.push_back(tok.bos_id());
  const std::vector<int32_t> body = tok.encode(prompt);
  ids.insert(ids.end(), body.begin(), body.end());
  if (ids.empty()) return invalid_argument("the prompt is empty");
  if (int64_t(ids.size()) + n > model->config().max_seq_len) {
    return out_of_range("prompt (" + std::to_string(ids.size()) + " tokens) plus -n " + std::to_string(n) +
                        " is longer than the model's context of " + std::to_string(model->config().max_seq_len));
  }
  std::mt19937_64 rng{static_cast<uint64_t>(seed)};
  std::vector<float> logits;
  std::string shown = tok.decode(ids);
  std::fputs(shown.c_str(), stdout);
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  SeqInput in{0, ids};
  KVLAB_RETURN_IF_ERROR(model->forward(*cache, {&in, 1}, LogitsMode::kLast, &logits));
  int generated = 0;
  for (; generated < n; ++generated) {
    int32_t next = argmax(logits);
    if (temperature > 0) {
      std::vector<double> p(logits.size());
      double mx = logits[size_t(next)], sum = 0;
      for (size_t i = 0; i < p.size(); ++i) sum += p[i] = std::exp((logits[i] - mx) / temperature);
      double u = std::uniform_real_distribution<double>(0.0, sum)(rng);
      for (size_t i = 0; i < p.size(); ++i) {
        u -= p[i];
        if (u <= 0) {
          next = int32_t(i);
          break;
        }
      }
    }
    if (next == tok.eos_id()) break;
    ids.push_back(next);
    const std::string text = tok.decode(ids);
    // Print what the new token added (byte-level tokens may complete a character later).
    if (text.size() >= shown.size() && text.compare(0, shown.size(), shown) == 0) {
      std::fputs(text.c_str() + shown.size(), stdout);
      std::fflush(stdout);
      shown = text;
    }
    SeqInput step{0, std::span<const int32_t>(&ids.back(), 1)};
    KVLAB_RETURN_IF_ERROR(model->forward(*cache, {&step, 1}, LogitsMode::kLast, &logits));
  }
  std::printf("\n");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!quiet) {
    std::fprintf(stderr, "[generate] %d tokens in %.2f s (%.1f tokens/s), cache %s: %s\n", generated, secs,
                 generated / secs, cache->spec().c_str(), format_memory(cache->memory()).c_str());
  }
  return Status::Ok();
}

Status cmd_eval(const Args& a) {
  DecodeEvalConfig cfg;
  cfg.policies = a.all("--policy");
  if (cfg.policies.empty()) return invalid_argument("missing required option --policy");
  KVLAB_ASSIGN_OR_RETURN(std::string text, a.get("--text"));
  KVLAB_ASSIGN_OR_RETURN(int64_t context, a.get_int("--context", -1, 1, 1 << 24));
  KVLAB_ASSIGN_OR_RETURN(int64_t prefill, a.get_int("--prefill", -1, -1, 1 << 24));
  KVLAB_ASSIGN_OR_RETURN(int64_t windows, a.get_int("--windows", 8, 1, 4096));
  KVLAB_ASSIGN_OR_RETURN(int64_t passage, a.get_int("--passage", 64, 2, 1 << 24));
  KVLAB_ASSIGN_OR_RETURN(int64_t distance, a.get_int("--distance", -1, 0, 1 << 24));
  const std::string task = a.get_or("--task", "text");
  if (task != "text" && task != "retrieval") {
    return invalid_argument("--task must be text or retrieval (got '" + task + "')");
  }
  if (task == "text" && (a.has("--passage") || a.has("--distance"))) {
    return invalid_argument("--passage and --distance belong to --task retrieval");
  }
  cfg.retrieval = task == "retrieval";
  cfg.passage = int(passage);
  cfg.distance = int(distance);
  cfg.context = int(context);
  cfg.prefill = int(prefill);
  cfg.windows = int(windows);
  const std::string json_path = a.get_or("--json", "");
  if (!file_exists(text)) {
    KVLAB_RETURN_IF_ERROR(read_file_text(text).status());  // the precise reason
  }
  KVLAB_ASSIGN_OR_RETURN(std::string model_arg, a.get("--model"));
  KVLAB_ASSIGN_OR_RETURN(auto model, load_model(a));
  Progress progress(a.has("--quiet"));
  KVLAB_ASSIGN_OR_RETURN(DecodeEvalResult r, run_decode_eval(*model, model_arg, text, cfg, progress));
  std::fputs(format_decode_eval(r).c_str(), stdout);
  if (!json_path.empty()) {
    std::string json;
    if (r.runs.size() == 1) {
      json = r.to_json(r.runs[0]).dump();
    } else {
      std::vector<JsonObject> all;
      for (const PolicyRun& run : r.runs) all.push_back(r.to_json(run));
      json = json_array(all);
    }
    KVLAB_RETURN_IF_ERROR(write_file_atomic(json_path, json + "\n"));
  }
  return Status::Ok();
}

Status cmd_calibrate(const Args& a) {
  CalibrateConfig cfg;
  KVLAB_ASSIGN_OR_RETURN(cfg.text_path, a.get("--text"));
  cfg.policies = a.all("--policy");
  cfg.outputs = a.all("--out");
  const bool deciders = calibrates_deciders(cfg.policies);
  cfg.tokens = default_calibration_tokens(deciders);
  KVLAB_ASSIGN_OR_RETURN(cfg.tokens, a.get_int("--tokens", cfg.tokens, 16, int64_t(1) << 32));
  KVLAB_ASSIGN_OR_RETURN(int64_t horizon, a.get_int("--horizon", cfg.horizon, 1, 1 << 24));
  cfg.horizon = int(horizon);
  KVLAB_ASSIGN_OR_RETURN(int64_t skip, a.get_int("--skip", cfg.skip, 0, 1 << 24));
  cfg.skip = int(skip);
  KVLAB_ASSIGN_OR_RETURN(int64_t window, a.get_int("--window", cfg.window, 2, 1 << 24));
  cfg.window = int(window);
  if (a.has("--lines")) {
    const std::string s = a.all("--lines").back();
    int x = 0, y = 0, used = 0;
    if (std::sscanf(s.c_str(), "%d-%d%n", &x, &y, &used) != 2 || used != int(s.size()) || x < 1 || y < x) {
      return invalid_argument("--lines needs A-B with 1 <= A <= B, got '" + s + "'");
    }
    cfg.first_line = x, cfg.last_line = y;
  }
  KVLAB_ASSIGN_OR_RETURN(auto model, load_model(a));
  Progress progress(a.has("--quiet"));
  const auto t0 = std::chrono::steady_clock::now();
  if (deciders) {
    KVLAB_ASSIGN_OR_RETURN(DeciderCalibrationResult r, run_decider_calibration(*model, cfg, progress));
    std::fputs(format_decider_calibration(r, cfg).c_str(), stdout);
  } else {
    KVLAB_ASSIGN_OR_RETURN(CalibrateResult r, run_calibration(*model, cfg, progress));
    std::fputs(format_calibration(r, cfg).c_str(), stdout);
  }
  std::printf("total %.1f s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return Status::Ok();
}

Status cmd_xkv_analyze(const Args& a) {
  XkvAnalyzeConfig cfg;
  KVLAB_ASSIGN_OR_RETURN(cfg.text_path, a.get("--text"));
  KVLAB_ASSIGN_OR_RETURN(int64_t tokens, a.get_int("--tokens", cfg.tokens, 2, 1 << 24));
  KVLAB_ASSIGN_OR_RETURN(int64_t rank_k, a.get_int("--rank-k", cfg.rank_k, 1, 1 << 20));
  // Values get 1.5x the key rank unless given (as the paper does).
  KVLAB_ASSIGN_OR_RETURN(int64_t rank_v, a.get_int("--rank-v", (3 * rank_k + 1) / 2, 1, 1 << 20));
  cfg.tokens = int(tokens), cfg.rank_k = int(rank_k), cfg.rank_v = int(rank_v);
  if (a.has("--groups")) {
    cfg.groups.clear();
    const std::string list = a.all("--groups").back();
    size_t pos = 0;
    while (pos <= list.size()) {
      size_t end = list.find(',', pos);
      if (end == std::string::npos) end = list.size();
      const std::string item = list.substr(pos, end - pos);
      int g = 0, used = 0;
      if (std::sscanf(item.c_str(), "%d%n", &g, &used) != 1 || used != int(item.size())) {
        return invalid_argument("--groups needs a list of group sizes like 1,2,4, got '" + list + "'");
      }
      cfg.groups.push_back(g);
      pos = end + 1;
    }
  }
  KVLAB_ASSIGN_OR_RETURN(auto model, load_model(a));
  Progress progress(a.has("--quiet"));
  KVLAB_ASSIGN_OR_RETURN(XkvAnalysis r, analyze_xkv(*model, cfg, progress));
  std::fputs(format_xkv_analysis(r).c_str(), stdout);
  if (a.has("--json")) KVLAB_RETURN_IF_ERROR(write_file_atomic(a.all("--json").back(), xkv_analysis_json(r) + "\n"));
  return Status::Ok();
}

Status cmd_ppl(const Args& a) {
  KVLAB_ASSIGN_OR_RETURN(std::string text, a.get("--text"));
  KVLAB_ASSIGN_OR_RETURN(int64_t n, a.get_int("--paragraphs", -1, -1, 1 << 30));
  KVLAB_ASSIGN_OR_RETURN(auto model, load_model(a));
  Progress progress(a.has("--quiet"));
  KVLAB_ASSIGN_OR_RETURN(
      ParagraphPerplexity r,
      paragraph_perplexity(*model, text, int(n), a.get_or("--policy", "full:dtype=f32"), progress));
  std::printf("paragraphs %d, tokens %lld, nll %.5f, ppl %.4f\n", r.paragraphs, static_cast<long long>(r.tokens), r.nll,
              r.ppl);
  return Status::Ok();
}

Status cmd_logits(const Args& a) {
  KVLAB_ASSIGN_OR_RETURN(std::string out, a.get("--out"));
  KVLAB_ASSIGN_OR_RETURN(auto model, load_model(a));
  std::vector<int32_t> ids;
  if (a.has("--ids") == a.has("--prompt")) return invalid_argument("give exactly one of --ids and --prompt");
  if (a.has("--ids")) {
    KVLAB_ASSIGN_OR_RETURN(std::string list, a.get("--ids"));
    size_t pos = 0;
    while (pos < list.size()) {
      size_t end = list.find(',', pos);
      if (end == std::string::npos) end = list.size();
      const std::string item = list.substr(pos, end - pos);
      size_t used = 0;
      long long v = -1;
      try {
        v = std::stoll(item, &used);
      } catch (...) {
        used = 0;
      }
      if (used != item.size() || item.empty()) return invalid_argument("--ids: '" + item + "' is not a token id");
      ids.push_back(int32_t(v));
      pos = end + 1;
    }
  } else {
    KVLAB_ASSIGN_OR_RETURN(std::string prompt, a.get("--prompt"));
    ids = model->tokenizer().encode(prompt);
  }
  if (ids.empty()) return invalid_argument("no tokens to run");
  KVLAB_ASSIGN_OR_RETURN(auto cache, model->make_cache(a.get_or("--policy", "full:dtype=f32"), 1));
  std::vector<float> logits;
  SeqInput in{0, ids};
  KVLAB_RETURN_IF_ERROR(model->forward(*cache, {&in, 1}, LogitsMode::kAll, &logits));
  return write_npy_f32(out, {int64_t(ids.size()), model->config().vocab_size}, logits.data());
}

Status cmd_policies() {
  for (const PolicyInfo& p : registered_policies()) {
    std::printf("%s: %s\n", p.name.c_str(), p.summary.c_str());
    for (const ParamInfo& k : p.params) {
      std::printf("    %-12s %-24s default %-8s %s\n", k.key.c_str(), param_values(k).c_str(), k.default_value.c_str(),
                  k.doc.c_str());
    }
  }
  std::printf("\nlayers not named in a per-layer spec get %s\n", kDefaultPolicySpec);
  return Status::Ok();
}

// One ISA a line, narrowest first, so that scripts can pick the ISAs narrower than the active one
// (scripts/run_tests.sh reruns tests under each). Honours $KVLAB_ISA, and exits with code 2 on a
// bad one, like every command that runs kernels.
Status cmd_isas() {
  for (Isa isa : supported_isas()) {
    std::printf("%s%s\n", isa_name(isa), isa == active_isa() ? " (active)" : "");
  }
  return Status::Ok();
}

Status run(int argc, char** argv) {
  if (argc < 2) return invalid_argument("no command given\n" + std::string(kUsage));
  const std::string cmd = argv[1];
  if (cmd == "help" || cmd == "--help" || cmd == "-h") {
    std::fputs(kUsage, stdout);
    return Status::Ok();
  }
  if (cmd == "policies") return cmd_policies();
  if (cmd == "isas") return cmd_isas();
  std::set<std::string> options, flags = {"--quiet"};
  if (cmd == "info") options = with_common({});
  else if (cmd == "generate") options = with_common({"--prompt", "-n", "--policy", "--temperature", "--seed"});
  else if (cmd == "eval") {
    options = with_common({"--text", "--policy", "--context", "--prefill", "--windows", "--json", "--task", "--passage",
                           "--distance"});
  }
  else if (cmd == "ppl") options = with_common({"--text", "--paragraphs", "--policy"});
  else if (cmd == "calibrate") options = with_common({"--text", "--policy", "--out", "--lines", "--tokens", "--window", "--horizon", "--skip"});
  else if (cmd == "logits") options = with_common({"--prompt", "--ids", "--out", "--policy"});
  else if (cmd == "xkv-analyze")
    options = with_common({"--text", "--tokens", "--rank-k", "--rank-v", "--groups", "--json"});
  else return invalid_argument("unknown command '" + cmd + "'\n" + std::string(kUsage));
  KVLAB_ASSIGN_OR_RETURN(Args args, Args::parse(argc, argv, 2, options, flags));
  KVLAB_RETURN_IF_ERROR(apply_threads(args));
  if (cmd == "info") return cmd_info(args);
  if (cmd == "generate") return cmd_generate(args);
  if (cmd == "eval") return cmd_eval(args);
  if (cmd == "logits") return cmd_logits(args);
  if (cmd == "calibrate") return cmd_calibrate(args);
  if (cmd == "xkv-analyze") return cmd_xkv_analyze(args);
  return cmd_ppl(args);
}

}  // namespace
}  // namespace kvlab

int main(int argc, char** argv) {
  const kvlab::Status s = kvlab::run(argc, argv);
  if (!s.ok()) {
    std::fprintf(stderr, "kvlab: %s\n", s.to_string().c_str());
    return 2;
  }
  return 0;
}
