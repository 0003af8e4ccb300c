// Benchmark for kernels/cpu/matmul.h, for every ISA this CPU supports.
//
//   matmul_decode/<isa>/k:576/n_out:1536/threads:2/cold   n_tokens = 1: memory-bound. Counters:
//       bytes_read (w + x per call); GB/s and stream_frac (GB/s over the STREAM-style read
//       bandwidth measured at start-up with the same thread count) from the mean time;
//       best_GB/s and best_stream_frac from the fastest single call. "cold" cycles through
//       enough copies of w (>= 256 MiB) that every call reads w from DRAM, as a decoder does with
//       its many layers; "hot" reuses one w, which for a 3.5 MiB w measures L2/L3 instead.
//   matmul_prefill/<isa>/n_tokens:N/threads:T             k = 576, n_out = 1536: compute-bound.
//       Counters GFLOP/s (mean) and best_GFLOP/s (fastest call), 2 * n_tokens * k * n_out each.
//
// The decode shapes are SmolLM2-135M's: 576 -> 1536 (gate/up), 1536 -> 576 (down),
// 576 -> 49152 (tied-embedding logits).
//
// Why "best" counters: on a machine shared with other jobs, one busy process on one core makes
// every 2-thread OpenMP barrier wait for a scheduler tick (4 ms), and the mean measures that.
// The STREAM number is itself a best (see bench/bandwidth.h), so best_stream_frac compares like
// with like. With --benchmark_repetitions=N the "_max" rows keep the best of the N runs.
//
// Usage: matmul_bench [--benchmark_filter=decode/avx512] [google benchmark flags]
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "bench/bandwidth.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/matmul.h"

namespace kvlab {
namespace {

// STREAM-style read bandwidth in GB/s, indexed by thread count (filled in main).
std::vector<double> g_stream_gbps;

// Every call of a cold decode benchmark reads a w that is not in any cache: copies of w cycled
// through until this many bytes have passed (256 MiB, 8x a 32 MiB L3; 2x the last-level cache
// where that is larger: bench/bandwidth.h).
const size_t kColdBytes = cold_bytes(size_t(256) << 20);

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::vector<float> v(n);
  for (float& f : v) {
    seed = seed * 1664525u + 1013904223u;
    f = float(int32_t(seed)) * (1.0f / 2147483648.0f);
  }
  return v;
}

double seconds_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Runs `body` with `threads` OpenMP threads and restores the previous count.
template <class F>
void with_threads(int threads, F body) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  body();
  omp_set_num_threads(saved);
}

void bm_decode(benchmark::State& state, Isa isa, int64_t k, int64_t n_out, int threads, bool cold) {
  const size_t w_floats = size_t(k * n_out);
  const size_t copies = cold ? std::max<size_t>(2, kColdBytes / (w_floats * sizeof(float)) + 1) : 1;
  std::vector<std::vector<float>> ws;
  for (size_t c = 0; c < copies; ++c) ws.push_back(random_floats(w_floats, uint32_t(c + 1)));
  const std::vector<float> x = random_floats(size_t(k), 99);
  std::vector<float> y(static_cast<size_t>(n_out));

  double best_s = 1e30;
  with_threads(threads, [&] {
    size_t c = 0;
    for (auto _ : state) {
      const double t0 = seconds_now();
      matmul_isa(isa, x.data(), 1, k, ws[c].data(), n_out, y.data());
      benchmark::DoNotOptimize(y.data());
      benchmark::ClobberMemory();
      best_s = std::min(best_s, seconds_now() - t0);
      if (++c == copies) c = 0;
    }
  });

  const double bytes = double(w_floats + size_t(k)) * sizeof(float);
  const double stream = g_stream_gbps[size_t(threads)];
  const double iters = double(state.iterations());
  state.counters["bytes_read"] = bytes;
  state.counters["GB/s"] = benchmark::Counter(bytes * iters / 1e9, benchmark::Counter::kIsRate);
  state.counters["stream_frac"] =
      benchmark::Counter(bytes * iters / 1e9 / stream, benchmark::Counter::kIsRate);
  state.counters["best_GB/s"] = bytes / best_s / 1e9;
  state.counters["best_stream_frac"] = bytes / best_s / 1e9 / stream;
}

void bm_prefill(benchmark::State& state, Isa isa, int64_t n_tokens, int threads) {
  const int64_t k = 576, n_out = 1536;
  const std::vector<float> x = random_floats(size_t(n_tokens * k), 1);
  const std::vector<float> w = random_floats(size_t(n_out * k), 2);
  std::vector<float> y(size_t(n_tokens * n_out));
  double best_s = 1e30;
  with_threads(threads, [&] {
    for (auto _ : state) {
      const double t0 = seconds_now();
      matmul_isa(isa, x.data(), n_tokens, k, w.data(), n_out, y.data());
      benchmark::DoNotOptimize(y.data());
      benchmark::ClobberMemory();
      best_s = std::min(best_s, seconds_now() - t0);
    }
  });
  const double flops = 2.0 * double(n_tokens) * double(k) * double(n_out);
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops * double(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.counters["best_GFLOP/s"] = flops / best_s / 1e9;
}

// The decoder's products at decode batch sizes, w from DRAM, f32 against the block formats the
// decoder keeps GGUF matrices in (matmul.h, BlockMatrix): matmul_weights/<isa>/<format>/k:K/
// n_out:N/tokens:T/threads:P. Counter weight_bytes: what one call reads of w.
void bm_weights(benchmark::State& state, Isa isa, int format, int64_t k, int64_t n_out, int64_t n_tokens,
                int threads) {
  // format: 0 f32, 1 q4_1, 2 q8_0
  const BlockFormat bf = format == 2 ? BlockFormat::kQ8_0 : BlockFormat::kQ4_1;
  const int64_t bytes = format == 0 ? k * n_out * 4
                                    : n_out * (block_code_bytes(bf, k) + 4 * block_scale_floats(bf, k));
  const size_t copies = std::max<size_t>(2, kColdBytes / size_t(bytes) + 1);
  std::vector<std::vector<float>> wf;
  std::vector<std::vector<uint8_t>> codes;
  std::vector<std::vector<float>> scales;
  for (size_t c = 0; c < copies; ++c) {
    if (format == 0) {
      wf.push_back(random_floats(size_t(k * n_out), uint32_t(c + 1)));
    } else {
      std::vector<uint8_t> q(size_t(n_out * block_code_bytes(bf, k)));
      for (size_t i = 0; i < q.size(); ++i) q[i] = uint8_t(i * 2654435761u >> 13);
      codes.push_back(std::move(q));
      scales.push_back(random_floats(size_t(n_out * block_scale_floats(bf, k)), uint32_t(c + 1)));
    }
  }
  const std::vector<float> x = random_floats(size_t(k * n_tokens), 99);
  std::vector<float> y(size_t(n_out * n_tokens));
  with_threads(threads, [&] {
    size_t c = 0;
    for (auto _ : state) {
      if (format == 0) {
        matmul_isa(isa, x.data(), n_tokens, k, wf[c].data(), n_out, y.data());
      } else {
        const BlockMatrix m{bf, codes[c].data(), scales[c].data(), k};
        matmul_isa(isa, x.data(), n_tokens, m, n_out, y.data());
      }
      benchmark::DoNotOptimize(y.data());
      benchmark::ClobberMemory();
      if (++c == copies) c = 0;
    }
  });
  state.counters["weight_bytes"] = double(bytes);
}

// With --benchmark_repetitions=N, the "_max" row holds the best rate of the N runs (and the
// worst time): on a machine shared with other jobs the best run is the one least disturbed.
double max_of(const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); }

void register_benchmarks(int max_threads) {
  struct DecodeShape {
    int64_t k, n_out;
  };
  const DecodeShape decode_shapes[] = {{576, 1536}, {1536, 576}, {576, 49152}};
  std::vector<int> thread_counts = {1};
  if (max_threads > 1) thread_counts.push_back(max_threads);

  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (int(isa) > int(detected_isa())) continue;
    const std::string name = isa_name(isa);
    for (const DecodeShape& s : decode_shapes) {
      for (int threads : thread_counts) {
        for (bool cold : {true, false}) {
          const std::string bm = "matmul_decode/" + name + "/k:" + std::to_string(s.k) +
                                 "/n_out:" + std::to_string(s.n_out) +
                                 "/threads:" + std::to_string(threads) + (cold ? "/cold" : "/hot");
          benchmark::RegisterBenchmark(bm.c_str(), bm_decode, isa, s.k, s.n_out, threads, cold)
              ->UseRealTime()
              ->ComputeStatistics("max", max_of)
              ->Unit(benchmark::kMicrosecond);
        }
      }
    }
    if (isa != Isa::kScalar) {
      for (const DecodeShape& s : decode_shapes) {
        for (int64_t n_tokens : {1, 4, 16}) {
          for (int format : {0, 1, 2}) {
            const char* fname[] = {"f32", "q4_1", "q8_0"};
            const std::string bm = "matmul_weights/" + name + "/" + fname[format] + "/k:" + std::to_string(s.k) +
                                   "/n_out:" + std::to_string(s.n_out) + "/tokens:" + std::to_string(n_tokens) +
                                   "/threads:" + std::to_string(max_threads);
            benchmark::RegisterBenchmark(bm.c_str(), bm_weights, isa, format, s.k, s.n_out, n_tokens, max_threads)
                ->UseRealTime()
                ->Unit(benchmark::kMicrosecond);
          }
        }
      }
    }
    // The scalar reference runs at a few GFLOP/s: one prefill size is enough to show it.
    const std::vector<int64_t> prefill_tokens = isa == Isa::kScalar
                                                    ? std::vector<int64_t>{512}
                                                    : std::vector<int64_t>{512, 1024, 2048, 4096};
    for (int64_t n_tokens : prefill_tokens) {
      for (int threads : thread_counts) {
        const std::string bm = "matmul_prefill/" + name + "/n_tokens:" + std::to_string(n_tokens) +
                               "/threads:" + std::to_string(threads);
        benchmark::RegisterBenchmark(bm.c_str(), bm_prefill, isa, n_tokens, threads)
            ->UseRealTime()
            ->ComputeStatistics("max", max_of)
            ->Unit(benchmark::kMillisecond);
      }
    }
  }
}

}  // namespace
}  // namespace kvlab

int main(int argc, char** argv) {
  using namespace kvlab;
  const int max_threads = omp_get_max_threads();
  g_stream_gbps.assign(size_t(max_threads) + 1, 0.0);
  for (int threads : {1, max_threads}) {
    with_threads(threads, [&] { g_stream_gbps[size_t(threads)] = measure_read_bandwidth_gbps(); });
    benchmark::AddCustomContext("stream_read_gbps_" + std::to_string(threads) + "_threads",
                                std::to_string(g_stream_gbps[size_t(threads)]));
  }
  benchmark::AddCustomContext("isa_detected", isa_name(detected_isa()));
  register_benchmarks(max_threads);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
