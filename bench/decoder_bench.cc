// End-to-end decoder throughput: prefill and decode tokens/s for stories260K and SmolLM2-135M,
// batch 1 and 8, contexts 512 and 2048 (stories260K: 512 only, its trained context), with the
// full f16 cache. Other caches, contexts (SmolLM2 only) and batches (default 1 and 8), all in one run:
//
//   build/bin/decoder_bench --cache=full:dtype=f16 --cache=xkv:group=4,rank_k=128,rank_v=192 --context=4096
//   build/bin/decoder_bench --cache=full:dtype=f16 --cache=lighttransfer:rho=0.5 --context=8192 --batch=16
//
// A prefill's time includes whatever the cache does when it is written (xKV: the factorization).
//
// Decode is memory-bound: every step reads all weights (as the model holds them: model.h) and the
// cache once. Each decode case reports bytes_per_step (weights + cache bytes held), the achieved
// GB/s and bw_fraction = achieved / STREAM read bandwidth measured in this binary (stream_GBps).
// A prefill reads the same weights once for many tokens and is compute-bound; its bw_fraction is
// reported for completeness, with GFLOP/s (2 * parameters * tokens, attention excluded) beside it.
//
//   build/bin/decoder_bench [--benchmark_format=json]
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>

#include <map>
#include <memory>
#include <string>

#include "base/file.h"
#include "base/paths.h"
#include "bench/bandwidth.h"
#include "model/model.h"

namespace kvlab {
namespace {

constexpr const char* kDefaultCache = "full:dtype=f16";

double stream_gbps() {
  static const double bw = measure_read_bandwidth_gbps();
  return bw;
}

const Model* model(const std::string& alias) {
  static std::map<std::string, std::unique_ptr<Model>> models;
  auto it = models.find(alias);
  if (it == models.end()) {
    auto m = Model::load(alias);
    it = models.emplace(alias, m.ok() ? std::move(m).value() : nullptr).first;
  }
  return it->second.get();
}

// Prompt tokens: the Sherlock text, cycled.
std::vector<int32_t> text_tokens(const Model& m, int n) {
  const auto text = read_file_text(shared_dir() + "/data/sherlock_holmes_adventures.txt");
  std::vector<int32_t> ids = m.tokenizer().encode(text.ok() ? text->substr(0, 200000) : std::string("Hello world. "));
  std::vector<int32_t> out(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) out[size_t(i)] = ids[size_t(i) % ids.size()];
  return out;
}

// Caches prefilled by the prefill benchmark, reused by the decode benchmark of the same shape.
using CaseKey = std::tuple<std::string, std::string, int, int>;  // cache spec, model, context, batch
std::map<CaseKey, std::unique_ptr<KvCache>>& prefilled() {
  static std::map<CaseKey, std::unique_ptr<KvCache>> caches;
  return caches;
}

void BM_Prefill(benchmark::State& state, std::string spec, std::string alias, int ctx, int batch) {
  const Model* m = model(alias);
  if (!m) return state.SkipWithError(("model " + alias + " not found (scripts/fetch_models.sh)").c_str());
  const std::vector<int32_t> ids = text_tokens(*m, ctx * batch);
  std::unique_ptr<KvCache> cache;
  std::vector<float> logits;
  for (auto _ : state) {
    state.PauseTiming();
    auto made = m->make_cache(spec, batch);
    if (!made.ok()) return state.SkipWithError(made.status().to_string().c_str());
    cache = std::move(made).value();
    std::vector<SeqInput> in;
    for (int b = 0; b < batch; ++b) in.push_back({b, std::span<const int32_t>(&ids[size_t(b) * ctx], size_t(ctx))});
    state.ResumeTiming();
    const Status s = m->forward(*cache, in, LogitsMode::kLast, &logits);
    if (!s.ok()) return state.SkipWithError(s.to_string().c_str());
  }
  const double tokens = double(ctx) * batch;
  const double bytes = double(m->weight_bytes());
  state.counters["tokens_per_s"] = benchmark::Counter(tokens, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOPs"] = benchmark::Counter(2.0 * double(m->weight_bytes() / 4) * tokens * 1e-9,
                                                benchmark::Counter::kIsIterationInvariantRate);
  state.counters["kv_bytes"] = double(cache->memory().kv_bytes());
  state.counters["bytes_per_step"] = bytes;
  state.counters["GBps"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["stream_GBps"] = stream_gbps();
  state.counters["bw_fraction"] =
      benchmark::Counter(bytes * 1e-9 / stream_gbps(), benchmark::Counter::kIsIterationInvariantRate);
  prefilled()[{spec, alias, ctx, batch}] = std::move(cache);
}

void BM_Decode(benchmark::State& state, std::string spec, std::string alias, int ctx, int batch) {
  const Model* m = model(alias);
  if (!m) return state.SkipWithError(("model " + alias + " not found (scripts/fetch_models.sh)").c_str());
  auto& slot = prefilled()[{spec, alias, ctx, batch}];
  if (!slot) {
    auto made = m->make_cache(spec, batch);
    if (!made.ok()) return state.SkipWithError(made.status().to_string().c_str());
    slot = std::move(made).value();
    const std::vector<int32_t> ids = text_tokens(*m, ctx * batch);
    std::vector<SeqInput> in;
    for (int b = 0; b < batch; ++b) in.push_back({b, std::span<const int32_t>(&ids[size_t(b) * ctx], size_t(ctx))});
    const Status s = m->forward(*slot, in, LogitsMode::kNone, nullptr);
    if (!s.ok()) return state.SkipWithError(s.to_string().c_str());
  }
  KvCache& cache = *slot;
  // The decode step runs at position ctx - 1 over ctx - 1 cached tokens: the cache is cropped
  // back before every step so every step sees the same context.
  const std::vector<int32_t> next(size_t(batch), 42);
  std::vector<SeqInput> in;
  for (int b = 0; b < batch; ++b) in.push_back({b, std::span<const int32_t>(&next[size_t(b)], 1)});
  std::vector<float> logits;
  for (int b = 0; b < batch; ++b) (void)cache.crop(b, ctx - 1);
  const double cache_bytes = double(cache.memory().kv_bytes());
  for (auto _ : state) {
    const Status s = m->forward(cache, in, LogitsMode::kLast, &logits);
    if (!s.ok()) return state.SkipWithError(s.to_string().c_str());
    state.PauseTiming();
    for (int b = 0; b < batch; ++b) (void)cache.crop(b, ctx - 1);
    state.ResumeTiming();
  }
  const double bytes = double(m->weight_bytes()) + cache_bytes;
  state.counters["tokens_per_s"] = benchmark::Counter(batch, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["kv_bytes"] = cache_bytes;
  state.counters["bytes_per_step"] = bytes;
  state.counters["GBps"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["stream_GBps"] = stream_gbps();
  state.counters["bw_fraction"] =
      benchmark::Counter(bytes * 1e-9 / stream_gbps(), benchmark::Counter::kIsIterationInvariantRate);
}

// caches / contexts: the --cache= / --context= options (none: the default shapes).
void register_all(std::vector<std::string> caches, const std::vector<int>& contexts, std::vector<int> batches) {
  struct Shape {
    std::string alias;
    int ctx;
  };
  std::vector<Shape> shapes = {{"stories260k", 512}, {"smollm2-135m", 512}, {"smollm2-135m", 2048}};
  if (!contexts.empty()) {
    shapes.clear();
    for (int c : contexts) shapes.push_back({"smollm2-135m", c});
  }
  if (caches.empty()) caches = {kDefaultCache};
  if (batches.empty()) batches = {1, 8};
  for (const std::string& spec : caches) {
    for (const Shape& s : shapes) {
      for (int batch : batches) {
        std::string suffix = s.alias + "/ctx:" + std::to_string(s.ctx) + "/b:" + std::to_string(batch);
        if (caches.size() > 1 || spec != kDefaultCache) suffix += "/" + spec;
        const bool big = s.alias != "stories260k";
        auto* p = benchmark::RegisterBenchmark(("prefill/" + suffix).c_str(), BM_Prefill, spec, s.alias, s.ctx, batch);
        p->Unit(benchmark::kMillisecond)->UseRealTime();
        if (big) p->Iterations(1);
        auto* d = benchmark::RegisterBenchmark(("decode/" + suffix).c_str(), BM_Decode, spec, s.alias, s.ctx, batch);
        d->Unit(benchmark::kMillisecond)->UseRealTime();
        if (big) d->MinTime(2.0);
      }
    }
  }
}

}  // namespace
}  // namespace kvlab

int main(int argc, char** argv) {
  // Our options first (Google Benchmark rejects what it does not know).
  std::vector<std::string> caches;
  std::vector<int> contexts;
  std::vector<int> batches;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--cache=", 0) == 0) {
      caches.push_back(a.substr(8));
    } else if (a.rfind("--context=", 0) == 0) {
      char* end = nullptr;
      const long c = std::strtol(a.c_str() + 10, &end, 10);
      if (*end != '\0' || c < 2 || c > 1 << 20) {
        std::fprintf(stderr, "decoder_bench: --context wants a token count >= 2 (got %s)\n", a.c_str() + 10);
        return 2;
      }
      contexts.push_back(int(c));
    } else if (a.rfind("--batch=", 0) == 0) {
      char* end = nullptr;
      const long b = std::strtol(a.c_str() + 8, &end, 10);
      if (*end != '\0' || b < 1 || b > 1024) {
        std::fprintf(stderr, "decoder_bench: --batch wants a sequence count 1..1024 (got %s)\n", a.c_str() + 8);
        return 2;
      }
      batches.push_back(int(b));
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("stream_read_GBps", std::to_string(kvlab::stream_gbps()));
  kvlab::register_all(caches, contexts, batches);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
