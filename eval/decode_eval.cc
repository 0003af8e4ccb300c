#include "eval/decode_eval.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>

#include "eval/text.h"
#include "kernels/cpu/cpu_features.h"

namespace kvlab {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Lane {
  std::unique_ptr<KvCache> cache;
  PolicyRun run;
  std::vector<float> logits;
};

Status validate(const Model& model, DecodeEvalConfig& c) {
  if (c.context < 3) return invalid_argument("--context must be at least 3 (got " + std::to_string(c.context) + ")");
  if (c.context > model.config().max_seq_len) {
    return out_of_range("--context " + std::to_string(c.context) + " is longer than the model's maximum context of " +
                        std::to_string(model.config().max_seq_len) + " tokens");
  }
  if (c.retrieval) {
    if (c.prefill >= 0) {
      return invalid_argument("--prefill does not apply to --task retrieval (everything before the second copy is prefilled)");
    }
    if (c.passage < 2) return invalid_argument("--passage must be at least 2 tokens (got " + std::to_string(c.passage) + ")");
    if (c.distance < 0) c.distance = c.context - 1 - 2 * c.passage;
    if (c.distance < 0 || 1 + 2 * int64_t(c.passage) + c.distance > c.context) {
      return invalid_argument("--task retrieval: BOS, the passage twice (" + std::to_string(c.passage) +
                              " tokens each) and the distance between them (" +
                              std::to_string(c.distance) + ") do not fit in --context " + std::to_string(c.context));
    }
    c.context = 1 + 2 * c.passage + c.distance;
    c.prefill = 1 + c.passage + c.distance;
  }
  if (c.prefill < 0) c.prefill = c.context / 2;
  if (c.prefill < 1 || c.prefill > c.context - 2) {
    return invalid_argument("--prefill must be in [1, context-2] = [1, " + std::to_string(c.context - 2) + "] (got " +
                            std::to_string(c.prefill) + ")");
  }
  if (c.windows < 1) return invalid_argument("--windows must be at least 1 (got " + std::to_string(c.windows) + ")");
  if (c.policies.empty()) return invalid_argument("no --policy given");
  return Status::Ok();
}

}  // namespace

StatusOr<DecodeEvalResult> run_decode_eval(const Model& model, const std::string& model_label,
                                           const std::string& text_path, DecodeEvalConfig config,
                                           Progress& progress) {
  if (config.context < 0) config.context = std::min(1024, model.config().max_seq_len);
  KVLAB_RETURN_IF_ERROR(validate(model, config));
  const int N = config.context, P = config.prefill, W = config.windows;
  // Lane 0 is the reference; the caches are made before the slow tokenization so that a bad
  // spec fails at once.
  std::vector<Lane> lanes(config.policies.size() + 1);
  KVLAB_ASSIGN_OR_RETURN(lanes[0].cache, model.make_cache("full:dtype=f32", W));
  for (size_t i = 0; i < config.policies.size(); ++i) {
    KVLAB_ASSIGN_OR_RETURN(lanes[i + 1].cache, model.make_cache(config.policies[i], W));
  }
  for (Lane& lane : lanes) lane.run.spec = lane.cache->spec();

  KVLAB_ASSIGN_OR_RETURN(std::string text, read_eval_text(text_path));
  progress.note("tokenizing " + text_path + " (" + std::to_string(text.size()) + " bytes)");
  const std::vector<int32_t> tokens = model.tokenizer().encode(text);
  KVLAB_ASSIGN_OR_RETURN(auto windows, config.retrieval ? make_copy_windows(tokens, model.tokenizer().bos_id(),
                                                                              config.passage, config.distance, W)
                                                        : make_windows(tokens, model.tokenizer().bos_id(), N, W));

  // Prefill: one forward per window and cache.
  for (Lane& lane : lanes) {
    const auto t0 = Clock::now();
    for (int w = 0; w < W; ++w) {
      progress.update("prefill " + lane.run.spec, w, W);
      const SeqInput in{w, std::span<const int32_t>(windows[w].data(), size_t(P))};
      KVLAB_RETURN_IF_ERROR(model.forward(*lane.cache, {&in, 1}, LogitsMode::kNone, nullptr));
    }
    lane.run.prefill_seconds = seconds_since(t0);
  }
  progress.finish();

  // Decode in lockstep: each step feeds token j of every window to every cache, then scores the
  // prediction of token j + 1 against the reference.
  std::vector<double> ref_lp, lp;
  std::vector<SeqInput> inputs(W);
  for (int j = P; j <= N - 2; ++j) {
    progress.update("decode", j - P, N - 1 - P);
    for (int w = 0; w < W; ++w) inputs[w] = {w, std::span<const int32_t>(&windows[w][j], 1)};
    for (Lane& lane : lanes) {
      const auto t0 = Clock::now();
      KVLAB_RETURN_IF_ERROR(model.forward(*lane.cache, inputs, LogitsMode::kLast, &lane.logits));
      lane.run.decode_seconds += seconds_since(t0);
      lane.run.decode_tokens += W;
    }
    const size_t V = size_t(model.config().vocab_size);
    for (int w = 0; w < W; ++w) {
      const int32_t target = windows[w][j + 1];
      const std::span<const float> ref_row(&lanes[0].logits[w * V], V);
      log_softmax(ref_row, &ref_lp);
      const int ref_top = argmax(ref_row);
      for (Lane& lane : lanes) {
        const std::span<const float> row(&lane.logits[w * V], V);
        log_softmax(row, &lp);
        TokenScores& s = lane.run.scores;
        s.tokens += 1;
        s.nll -= lp[size_t(target)];
        s.kld += kl_divergence(ref_lp, lp);
        const int top = argmax(row);
        s.top1_agree += top == ref_top;
        s.top1_correct += top == target;
      }
    }
  }
  progress.update("decode", N - 1 - P, N - 1 - P);
  progress.finish();

  const int64_t kv_dim = model.config().n_kv_heads * model.config().head_dim;
  DecodeEvalResult result;
  result.config = config;
  result.model = model_label;
  result.text = text_path;
  for (size_t i = 0; i < lanes.size(); ++i) {
    Lane& lane = lanes[i];
    lane.run.memory = lane.cache->memory();
    lane.run.decisions = lane.cache->report();
    for (int w = 0; w < W; ++w) {
      lane.run.values_represented += int64_t(lane.cache->seq_length(w)) * model.config().n_layers * kv_dim * 2;
      lane.run.prompt_values += int64_t(config.prefill) * model.config().n_layers * kv_dim * 2;
    }
    if (i == 0) result.reference = lane.run;
    else result.runs.push_back(lane.run);
  }
  return result;
}

JsonObject DecodeEvalResult::to_json(const PolicyRun& run) const {
  const double kv_bytes = double(run.memory.kv_bytes());
  const double f16_bytes = 2.0 * double(run.values_represented);
  const double tps = run.decode_tokens / run.decode_seconds;
  const double tps_full = reference.decode_tokens / reference.decode_seconds;
  JsonObject o;
  o.add("model", model)
      .add("text", text)
      .add("policy", run.spec)
      .add("context", config.context)
      .add("prefill", config.prefill)
      .add("windows", config.windows)
      .add("tokens_scored", run.scores.tokens)
      .add("ppl", run.scores.ppl())
      .add("ppl_full", reference.scores.ppl())
      .add("rel_ppl", run.scores.ppl() / reference.scores.ppl() - 1.0)
      .add("kld_mean", run.scores.kld_mean())
      .add("top1_agree", run.scores.top1_rate())
      .add("top1_acc", run.scores.accuracy())
      .add("top1_acc_full", reference.scores.accuracy())
      .add("kv_bytes", run.memory.kv_bytes())
      .add("peak_kv_bytes", run.memory.peak_kv_bytes)
      .add("kv_bytes_f16", int64_t(f16_bytes))
      .add("prompt_kv_bytes_f16", 2 * run.prompt_values)
      .add("bits_per_value", 8.0 * kv_bytes / double(run.values_represented))
      .add("compression_vs_f16", f16_bytes / kv_bytes)
      .add("decode_tokens_per_s", tps)
      .add("decode_tokens_per_s_full", tps_full)
      .add("side_bytes", run.memory[MemoryKind::kSide])
      .add("payload_bytes", run.memory[MemoryKind::kPayload])
      .add("meta_bytes", run.memory[MemoryKind::kMeta])
      .add("exact_bytes", run.memory[MemoryKind::kExact])
      .add("index_bytes", run.memory[MemoryKind::kIndex])
      .add("derived_bytes", run.memory[MemoryKind::kDerived])
      .add("prefill_seconds", run.prefill_seconds)
      .add("threads", omp_get_max_threads())
      .add("isa", isa_name(active_isa()));
  if (!run.decisions.empty()) o.add("decisions", run.decisions.value());
  o.add("task", config.retrieval ? "retrieval" : "text");
  if (config.retrieval) {
    o.add("passage", config.passage)
        .add("distance", config.distance)
        .add("retrieval_top1", run.scores.accuracy())
        .add("retrieval_top1_full", reference.scores.accuracy())
        .add("retrieval_ppl", run.scores.ppl())
        .add("retrieval_ppl_full", reference.scores.ppl());
  }
  return o;
}

std::string format_decode_eval(const DecodeEvalResult& r) {
  std::string s;
  char buf[512];
  std::snprintf(buf, sizeof buf, "model %s, text %s\ncontext %d, prefill %d, windows %d, tokens scored %lld per policy\n",
                r.model.c_str(), r.text.c_str(), r.config.context, r.config.prefill, r.config.windows,
                static_cast<long long>(r.reference.scores.tokens));
  s += buf;
  if (r.config.retrieval) {
    std::snprintf(buf, sizeof buf, "task retrieval: a passage of %d tokens copied after %d tokens; acc = top-1 on the copy\n",
                  r.config.passage, r.config.distance);
    s += buf;
  }
  s += "\n";
  int width = 20;
  for (const PolicyRun& run : r.runs) width = std::max(width, int(run.spec.size()));
  std::snprintf(buf, sizeof buf, "%-*s %9s %9s %10s %7s %7s %10s %11s %7s %9s\n", width, "policy", "ppl", "rel_ppl",
                "kld_mean", "top1", "acc", "bits/val", "kv_bytes", "x f16", "decode/s");
  s += buf;
  auto row = [&](const PolicyRun& run, bool ref) {
    const double bits = 8.0 * double(run.memory.kv_bytes()) / double(run.values_represented);
    const double tps = run.decode_tokens / run.decode_seconds;
    char rel[32], kld[32], top[32];
    if (ref) {
      std::snprintf(rel, sizeof rel, "(ref)");
      std::snprintf(kld, sizeof kld, "-");
      std::snprintf(top, sizeof top, "-");
    } else {
      std::snprintf(rel, sizeof rel, "%+.3f%%", 100.0 * (run.scores.ppl() / r.reference.scores.ppl() - 1.0));
      std::snprintf(kld, sizeof kld, "%.5f", run.scores.kld_mean());
      std::snprintf(top, sizeof top, "%.2f%%", 100.0 * run.scores.top1_rate());
    }
    char acc[32];
    std::snprintf(acc, sizeof acc, "%.2f%%", 100.0 * run.scores.accuracy());
    std::snprintf(buf, sizeof buf, "%-*s %9.4f %9s %10s %7s %7s %10.3f %11s %7.2f %9.1f\n", width, run.spec.c_str(),
                  run.scores.ppl(), rel, kld, top, acc, bits, format_bytes(run.memory.kv_bytes()).c_str(), 16.0 / bits,
                  tps);
    s += buf;
  };
  row(r.reference, true);
  for (const PolicyRun& run : r.runs) row(run, false);
  return s;
}

}  // namespace kvlab
