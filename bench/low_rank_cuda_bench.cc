// xKV's group factorization on the GPU (kernels/cuda/low_rank.h) against the CPU's
// (kvcache/xkv.h) on the same data, at the protocol's prompt of 3,584 tokens and SmolLM2's
// kv_dim of 192 per layer: groups of 1, 2 and 4 layers (width 192, 384, 768), rank 128.
//
//   low_rank/<cpu|cuda>/tokens:<T>/width:<W>/rank:<R>
//
// Wall-clock time of one whole call (the GPU's includes its library handles, allocations and the
// copy of the spectrum back; the input already on the device). Without a GPU the cuda rows are
// skipped with the reason.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cuda/device.h"
#include "kernels/cuda/low_rank.h"
#include "kvcache/xkv.h"

namespace kvlab {
namespace {

std::vector<float> keys_like(int64_t tokens, int width) {
  std::vector<float> x(size_t(tokens) * width);
  uint64_t s = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < x.size(); ++i) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    x[i] = float(int64_t(s % 2001) - 1000) * 1e-3f * (i % 32 == 7 ? 8.0f : 1.0f);
  }
  return x;
}

void BM_low_rank(benchmark::State& state, bool gpu, int64_t tokens, int width, int rank) {
  const std::vector<float> x = keys_like(tokens, width);
  if (!gpu) {
    for (auto _ : state) benchmark::DoNotOptimize(factorize_low_rank(x.data(), tokens, width, width, rank).a.data());
    return;
  }
  const StatusOr<cuda::DeviceInfo> info = cuda::device_info();
  if (!info.ok()) return state.SkipWithError(info.status().message().c_str());
  auto xd = cuda::DeviceBuffer::allocate(x.size() * 4);
  if (!xd.ok() || !xd->upload(x.data(), x.size() * 4).ok()) return state.SkipWithError("upload failed");
  const float* xp = static_cast<const float*>(xd->data());
  if (!cuda::factorize_low_rank(xp, tokens, width, width, rank).ok()) return state.SkipWithError("factorization failed");
  for (auto _ : state) {
    StatusOr<cuda::DeviceLowRank> f = cuda::factorize_low_rank(xp, tokens, width, width, rank);
    if (!f.ok()) return state.SkipWithError(f.status().to_string().c_str());
  }
}

void register_benchmarks() {
  for (bool gpu : {false, true}) {
    for (int width : {192, 384, 768}) {
      const std::string name = std::string("low_rank/") + (gpu ? "cuda" : "cpu") + "/tokens:3584/width:" +
                               std::to_string(width) + "/rank:128";
      benchmark::RegisterBenchmark(name.c_str(), BM_low_rank, gpu, int64_t(3584), width, 128)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  }
}

}  // namespace
}  // namespace kvlab

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  kvlab::register_benchmarks();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
