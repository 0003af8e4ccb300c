// Decode attention through the production path: one new query token per sequence, the engine's
// attend() (attention/attend.h) over KvHistory adapters of the stores the policies keep their
// tokens in, exactly as TieredPolicy exposes them:
//
//   f32, f16, bf16, fp8     a TokenRing (kvcache/token_ring.h) holding the whole context, read as
//                           its runs of ring_page_tokens(ctx)-token pages (the `full` policy: no
//                           sink, one tier)
//   int8, int4, int3, int2  a BlockStore (kvcache/block_store.h) in the KIVI layout with group 128:
//                           keys kIntChannel, per channel over blocks of 128 tokens; values
//                           kIntToken, per token in groups of min(128, head_dim) channels; f16 scale
//                           and zero per group (the `kivi` policy with group=128, every token
//                           quantized: the contexts are multiples of 128, the exact residual of the
//                           policy is left out)
//   kivi4, kivi2            the `kivi` policy's layout at its default group 32: blocks of 128
//                           tokens holding 4 key groups of 32 tokens (scales per channel and group),
//                           values in groups of 32 channels
//
//   decode_attention/<format>/ctx:<N>/q:<Hq>/kv:<Hkv>/d:<D>/b:<B>
//
// N history tokens per sequence (positions 0 .. N-1) and the new token at position N, whose exact
// key and value the engine adds as usual. Head layouts: SmolLM2-135M (q 9, kv 3, d 64) and
// Llama-3-8B (q 32, kv 8, d 128); batch 1 and 8. One iteration = one attend() call for the whole
// batch, with all OpenMP threads (the engine splits every sequence over chunks of its history).
//
// Counters: bytes_read = the K/V bytes of the histories one step reads, from the stores' memory
// ledgers (what is allocated: elements / codes, scales, zeros, page tables); GBps = bytes_read
// per second; stream_frac = GBps over the STREAM-style read bandwidth measured once at start-up
// (bench/bandwidth.h; also in the context as stream_read_GBps); us_per_token = microseconds per
// step / batch. All from the wall-clock time of the steps (as the JSON's real_time; cpu_time is
// the main thread's alone).
//
// Histories. Every sequence of a step reads its own store, built from its own random data, and
// no step finds its histories in the last-level cache (a decoder reads a layer's history once per
// step with every other layer in between). Each (format, layout, context) builds a pool of
// max(batch, ceil(cold / store bytes)) stores, cold = cold_bytes(256 MiB) (bench/bandwidth.h:
// 2x the last-level cache, at least 256 MiB; 960 MiB on a 480 MiB L3), and step after step the
// batch takes the next `batch` stores of the pool in rotation: between two reads of the same byte
// at least that much other history is read. Why 256 MiB and not 2x a 32 MiB L3: Zen 4's L3 (a
// victim cache) does not evict in LRU order and kept part of a 72 MiB rotation: SmolLM2's f16
// history at 32K read at 1.03 of the STREAM figure from it, 0.77 from 256 MiB. (A small
// history, e.g. 1K tokens of SmolLM2 in f32 = 1.5 MiB, gets 171 stores; the largest, 64K tokens
// of Llama-3-8B in f32 = 512 MiB, gets `batch` stores: 4.3 GB for b:8.) Building a b:8 pool at
// ctx 64K takes a few seconds (the scalar writers: about 1 s per 64K-token Llama sequence in the
// integer formats), so no sequence shares another's store. The pool depends on (format, layout,
// context) only: b:8 extends the pool b:1 built, and the pool is freed when a configuration needs
// another.
//
// Inputs come from xorshift: normal-ish values (sum of four uniforms), keys with 1 channel in 32
// of larger magnitude and offset, like the outlier channels of real keys.
//
// Acceptance case (int4 / f32, int4 / f16, int2 / int4 from the JSON):
//   build/bin/attention_bench --benchmark_filter='ctx:32768/q:32/kv:8/d:128/b:1' --benchmark_format=json
//
// Usage: attention_bench [--benchmark_filter=decode_attention/int4] [google benchmark flags]
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "attention/attend.h"
#include "bench/bandwidth.h"
#include "kernels/cpu/kv_format.h"
#include "kernels/cpu/kv_quantize.h"
#include "kvcache/block_store.h"
#include "kvcache/memory.h"
#include "kvcache/token_ring.h"

namespace kvlab {
namespace {

constexpr int kKiviGroup = 128;                       // block tokens; int* key and value group
constexpr int kKiviPolicyGroup = 32;                  // the kivi policy's default group
const int64_t kColdBytes = int64_t(cold_bytes(size_t(256) << 20));  // history bytes per pool
constexpr int kGenTokens = 128;                       // tokens generated at a time while building

double g_stream_gbps = 0;

struct Layout {
  int q, kv, d;
};

struct Format {
  const char* name;
  bool dense;              // TokenRing; else BlockStore (KIVI)
  KvFormat dense_format;   // dense only
  int bits;                // integer only
  int group;               // integer only: key group tokens; value group channels (capped at d)
};

constexpr Format kFormats[] = {
    {"f32", true, KvFormat::kF32, 0, 0},
    {"f16", true, KvFormat::kF16, 0, 0},
    {"bf16", true, KvFormat::kBF16, 0, 0},
    {"fp8", true, KvFormat::kFp8, 0, 0},
    {"int8", false, KvFormat::kF32, 8, kKiviGroup},
    {"int4", false, KvFormat::kF32, 4, kKiviGroup},
    {"int3", false, KvFormat::kF32, 3, kKiviGroup},
    {"int2", false, KvFormat::kF32, 2, kKiviGroup},
    {"kivi4", false, KvFormat::kF32, 4, kKiviPolicyGroup},
    {"kivi2", false, KvFormat::kF32, 2, kKiviPolicyGroup},
};
constexpr Layout kLayouts[] = {{9, 3, 64}, {32, 8, 128}};  // SmolLM2-135M, Llama-3-8B
constexpr int kContexts[] = {1024, 4096, 16384, 32768, 65536};
constexpr int kBatches[] = {1, 8};

IntFormat kivi_keys(const Format& f) { return {KvFormat::kIntChannel, f.bits, f.group}; }
IntFormat kivi_values(const Format& f, int d) { return {KvFormat::kIntToken, f.bits, std::min(f.group, d)}; }

// xorshift64; normal-ish values: the sum of four 16-bit uniforms of one draw, centred, unit
// variance.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull) {}
  float normal() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    const uint64_t x = s;
    const uint32_t sum = uint32_t(x & 0xffff) + uint32_t((x >> 16) & 0xffff) + uint32_t((x >> 32) & 0xffff) +
                         uint32_t(x >> 48);
    return (float(sum) * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
  }
};

// Keys: channel c of each head is an outlier channel when c % 32 == 7 (2 of 64, 4 of 128).
void fill_keys(Rng& rng, float* k, int n_tokens, const Layout& l) {
  for (int t = 0; t < n_tokens; ++t) {
    for (int h = 0; h < l.kv; ++h) {
      for (int c = 0; c < l.d; ++c) {
        const float x = rng.normal();
        *k++ = c % 32 == 7 ? 4.0f + 6.0f * x : x;
      }
    }
  }
}

void fill_normal(Rng& rng, float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] = rng.normal();
}

// One sequence's history in one layer, in its own store, with its own ledger.
struct SeqStore {
  MemoryLedger ledger;
  std::unique_ptr<TokenRing> ring;    // dense formats
  std::unique_ptr<BlockStore> blocks; // integer formats
  int64_t bytes = 0;                  // ledger.report().kv_bytes() once built
};

// The store as the engine sees it: TieredPolicy's History over one tier (its recent ring for
// the dense formats, its quantized blocks for KIVI), built per step as the policy does.
class StoreHistory final : public KvHistory {
 public:
  explicit StoreHistory(const SeqStore& s)
      : ring_(s.ring.get()), blocks_(s.blocks.get()), n_(ring_ ? ring_->n_runs() : blocks_->n_blocks()) {}
  int n_blocks() const override { return n_; }
  HistoryBlock block(int b, int kv_head) const override {
    HistoryBlock hb;
    int first = 0;
    if (ring_) {
      ring_->run(b, kv_head, &hb.k, &hb.v, &first);
    } else {
      blocks_->block(b, kv_head, &hb.k, &hb.v, &first);
    }
    hb.first_pos = first;  // the history starts at position 0
    return hb;
  }

 private:
  const TokenRing* ring_;
  const BlockStore* blocks_;
  int n_;
};

// Bytes one sequence's store will hold (codes / elements and scales; no page-table bookkeeping):
// for the memory check before building.
int64_t estimate_store_bytes(const Format& f, const Layout& l, int ctx) {
  if (f.dense) {
    const int64_t page = ring_page_tokens(ctx);
    const int64_t tokens = (ctx + page - 1) / page * page;
    return 2 * l.kv * kv_block_bytes(f.dense_format, tokens, l.d);
  }
  const IntFormat kf = kivi_keys(f), vf = kivi_values(f, l.d);
  const int64_t per_block = kv_block_bytes(kf.format, kKiviGroup, l.d, kf.bits, kf.group) +
                            kv_block_bytes(vf.format, kKiviGroup, l.d, vf.bits, vf.group);
  return int64_t(l.kv) * per_block * ((ctx + kKiviGroup - 1) / kKiviGroup);
}

int64_t available_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return -1;  // unknown
}

std::unique_ptr<SeqStore> build_store(const Format& f, const Layout& l, int ctx, uint64_t seed) {
  auto s = std::make_unique<SeqStore>();
  if (f.dense) {
    s->ring = std::make_unique<TokenRing>(&s->ledger, MemoryKind::kExact, f.dense_format, l.kv, l.d, ctx);
  } else {
    s->blocks = std::make_unique<BlockStore>(&s->ledger, l.kv, l.d, kKiviGroup, kivi_keys(f), kivi_values(f, l.d));
  }
  const int kv_dim = l.kv * l.d;
  std::vector<float> k(size_t(kGenTokens) * kv_dim), v(k.size());
  Rng rng(seed);
  for (int t0 = 0; t0 < ctx; t0 += kGenTokens) {
    const int n = std::min(kGenTokens, ctx - t0);
    fill_keys(rng, k.data(), n, l);
    fill_normal(rng, v.data(), size_t(n) * kv_dim);
    if (s->ring) {
      for (int t = 0; t < n; ++t) s->ring->push(&k[size_t(t) * kv_dim], &v[size_t(t) * kv_dim]);
    } else {
      s->blocks->append(k.data(), v.data(), n, kv_dim);  // n == 128: the contexts are multiples of 128
    }
  }
  s->bytes = s->ledger.report().kv_bytes();
  return s;
}

// The stores of the configuration being measured (one configuration at a time: see "Histories").
struct Pool {
  int format = -1, layout = -1, ctx = 0;
  std::vector<std::unique_ptr<SeqStore>> stores;
};
Pool g_pool;

double seconds_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Makes g_pool hold at least `batch` stores of (format, layout, ctx), and at least kColdBytes;
// returns an error message or "".
std::string prepare_pool(int fi, int li, int ctx, int batch) {
  const Format& f = kFormats[fi];
  const Layout& l = kLayouts[li];
  if (!(g_pool.format == fi && g_pool.layout == li && g_pool.ctx == ctx)) {
    g_pool = Pool();  // frees the previous configuration first
  }
  if (!f.dense && ctx % kKiviGroup != 0) return "context not a multiple of 128";
  const int64_t est = estimate_store_bytes(f, l, ctx);
  const int n_stores = int(std::max<int64_t>(batch, (kColdBytes + est - 1) / est));
  const int have = int(g_pool.stores.size());
  if (have >= n_stores) return "";
  const int64_t need = est * (n_stores - have), avail = available_memory_bytes();
  if (avail >= 0 && need > avail - (int64_t(1) << 30)) {
    g_pool = Pool();
    return "not enough memory to build the histories: " + format_bytes(need) + " needed, " + format_bytes(avail) +
           " available";
  }
  // The stores are independent (each with its own ledger and seed): built by all threads.
  const double t0 = seconds_now();
  std::vector<std::unique_ptr<SeqStore>> built(size_t(n_stores - have));
  std::atomic<bool> out_of_memory{false};
#pragma omp parallel for schedule(dynamic, 1)
  for (int i = have; i < n_stores; ++i) {
    try {
      built[size_t(i - have)] = build_store(f, l, ctx, uint64_t(i + 1) * 1000003u + uint64_t(ctx));
    } catch (const std::bad_alloc&) {
      out_of_memory = true;
    }
  }
  if (out_of_memory) {
    built.clear();
    g_pool = Pool();
    return "out of memory while building the histories (" + format_bytes(need) + " wanted)";
  }
  for (auto& s : built) g_pool.stores.push_back(std::move(s));
  for (const auto& s : g_pool.stores) {
    if (s->bytes != g_pool.stores.front()->bytes) {
      g_pool = Pool();
      return "stores of one configuration differ in size";
    }
  }
  g_pool.format = fi;
  g_pool.layout = li;
  g_pool.ctx = ctx;
  // stderr, so that --benchmark_format=json keeps stdout clean.
  std::fprintf(stderr, "attention_bench: built %s ctx:%d q:%d kv:%d d:%d: %d store(s) of %s (pool %d) in %.2f s\n",
               f.name, ctx, l.q, l.kv, l.d, n_stores - have, format_bytes(g_pool.stores.front()->bytes).c_str(),
               n_stores, seconds_now() - t0);
  return "";
}

void bm_decode(benchmark::State& state, int fi, int li, int ctx, int batch) {
  const std::string err = prepare_pool(fi, li, ctx, batch);
  if (!err.empty()) return state.SkipWithError(err.c_str());
  const Layout& l = kLayouts[li];
  const AttentionShape shape{l.q, l.kv, l.d, 1.0f / std::sqrt(float(l.d))};

  // The new token of each sequence: query, exact key and value, output.
  Rng rng(uint64_t(batch) * 7919u + uint64_t(ctx));
  std::vector<float> q(size_t(batch) * shape.q_dim()), kn(size_t(batch) * shape.kv_dim()),
      vn(size_t(batch) * shape.kv_dim()), out(size_t(batch) * shape.q_dim());
  fill_normal(rng, q.data(), q.size());
  fill_keys(rng, kn.data(), batch, l);
  fill_normal(rng, vn.data(), vn.size());
  const std::vector<int32_t> positions(size_t(batch), ctx);
  std::vector<SeqAttention> work(static_cast<size_t>(batch));
  for (int b = 0; b < batch; ++b) {
    SeqAttention& sa = work[size_t(b)];
    sa.seq = b;
    sa.n_new = 1;
    sa.positions = &positions[size_t(b)];
    sa.q = &q[size_t(b) * shape.q_dim()];
    sa.k_new = &kn[size_t(b) * shape.kv_dim()];
    sa.v_new = &vn[size_t(b) * shape.kv_dim()];
    sa.out = &out[size_t(b) * shape.q_dim()];
  }

  const auto& stores = g_pool.stores;
  std::vector<StoreHistory> histories;
  histories.reserve(size_t(batch));
  // Wall-clock seconds of the steps, timed here: UseRealTime() would append "/real_time" to the
  // names, and the main thread's CPU time (the default) misses the time it waits for the others.
  double wall_s = 0;
  size_t next = 0;
  for (auto _ : state) {
    const double t0 = seconds_now();
    histories.clear();
    for (int b = 0; b < batch; ++b) {
      histories.emplace_back(*stores[next]);
      work[size_t(b)].history = &histories.back();
      if (++next == stores.size()) next = 0;
    }
    attend(shape, work, /*layer=*/0, /*observer=*/nullptr);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    wall_s += seconds_now() - t0;
  }

  // Every store of the pool holds the same bytes (checked while building); a step reads `batch`
  // distinct stores.
  const double bytes = double(batch) * double(stores.front()->bytes);
  const double step_s = wall_s / double(std::max<int64_t>(1, state.iterations()));
  state.counters["bytes_read"] = bytes;
  state.counters["GBps"] = bytes / step_s * 1e-9;
  state.counters["stream_frac"] = bytes / step_s * 1e-9 / g_stream_gbps;
  state.counters["us_per_token"] = step_s * 1e6 / batch;
}

void register_benchmarks() {
  for (int fi = 0; fi < int(std::size(kFormats)); ++fi) {
    for (int li = 0; li < int(std::size(kLayouts)); ++li) {
      const Layout& l = kLayouts[li];
      for (int ctx : kContexts) {
        for (int batch : kBatches) {  // innermost: b:1 and b:8 share the pool
          const std::string name = std::string("decode_attention/") + kFormats[fi].name + "/ctx:" +
                                   std::to_string(ctx) + "/q:" + std::to_string(l.q) + "/kv:" +
                                   std::to_string(l.kv) + "/d:" + std::to_string(l.d) + "/b:" + std::to_string(batch);
          benchmark::RegisterBenchmark(name.c_str(), bm_decode, fi, li, ctx, batch)->Unit(benchmark::kMicrosecond);
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvlab

int main(int argc, char** argv) {
  using namespace kvlab;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  g_stream_gbps = measure_read_bandwidth_gbps();
  benchmark::AddCustomContext("stream_read_GBps", std::to_string(g_stream_gbps));
  benchmark::AddCustomContext("kivi_group", std::to_string(kKiviGroup));
  benchmark::AddCustomContext(
      "int_layout", "KIVI group 128: keys kIntChannel per channel over blocks of 128 tokens, values kIntToken in "
                    "groups of min(128, head_dim) channels, f16 scale and zero per group (kvcache/block_store.h)");
  benchmark::AddCustomContext("dense_layout", "TokenRing, ring_page_tokens(ctx)-token pages: 128 from 2048 slots, 32 from 32 (kvcache/token_ring.h)");
  benchmark::AddCustomContext("history_pool_bytes", std::to_string(kColdBytes));
  register_benchmarks();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  g_pool = Pool();
  return 0;
}
