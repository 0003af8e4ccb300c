// See bandwidth.h. The sum is plain portable C++ (no ISA dispatch): 32 independent float
// accumulators give the compiler eight 4-lane vector add chains even at the x86-64 baseline
// (SSE2), about 40 bytes per cycle per core, well above what DRAM can deliver to one core, so
// the loop measures memory and not the adder latency (given an optimized build: Release, -O3,
// is the project default; an unoptimized build under-reports).
#include "bench/bandwidth.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

namespace kvlab {
namespace {

constexpr int64_t kLanes = 32;  // independent accumulators; the array is read in blocks of these
constexpr int64_t kSliceBytes = int64_t(64) << 20;  // one timed read

// Thread `tid` of `n_threads` owns blocks [begin, end) of the array (the same split every pass).
void thread_range(int64_t n_blocks, int tid, int n_threads, int64_t* begin, int64_t* end) {
  *begin = n_blocks * tid / n_threads;
  *end = n_blocks * (tid + 1) / n_threads;
}

float sum_blocks(const float* a, int64_t begin, int64_t end) {
  float acc[kLanes] = {};
  for (int64_t b = begin; b < end; ++b) {
    const float* p = a + b * kLanes;
    for (int64_t j = 0; j < kLanes; ++j) acc[j] += p[j];
  }
  float s = 0.0f;
  for (int64_t j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};

}  // namespace

size_t last_level_cache_bytes() {
  size_t best = size_t(32) << 20;
  int best_level = 0;
  for (int i = 0; i < 16; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream level_file(dir + "level"), size_file(dir + "size");
    int level = 0;
    std::string size;  // "491520K"
    if (!(level_file >> level) || !(size_file >> size) || size.empty()) continue;
    size_t value = std::strtoull(size.c_str(), nullptr, 10);
    if (size.back() == 'K') value <<= 10;
    if (size.back() == 'M') value <<= 20;
    if (level > best_level) best_level = level, best = std::max(value, size_t(32) << 20);
  }
  return best;
}

size_t cold_bytes(size_t floor) { return std::max(floor, 2 * last_level_cache_bytes()); }

double measure_read_bandwidth_gbps(size_t bytes, int repeats) {
  if (bytes == 0) bytes = std::max(size_t(1) << 30, 4 * last_level_cache_bytes());
  const int64_t block_bytes = kLanes * int64_t(sizeof(float));
  const int64_t n_blocks = std::max<int64_t>(1, int64_t(bytes) / block_bytes);
  const int64_t slice_blocks = std::min(n_blocks, kSliceBytes / block_bytes);
  const int64_t n_slices = n_blocks / slice_blocks;  // a partial last slice is not read
  const size_t alloc_bytes = size_t(n_blocks * block_bytes);  // a multiple of 128
  std::unique_ptr<float[], FreeDeleter> a(static_cast<float*>(std::aligned_alloc(64, alloc_bytes)));
  if (!a) return 0.0;
  const int n_threads = omp_get_max_threads();

  // First touch by the thread that will read each part (pages land on its NUMA node).
#pragma omp parallel num_threads(n_threads)
  for (int64_t s = 0; s < n_slices; ++s) {
    int64_t begin, end;
    thread_range(slice_blocks, omp_get_thread_num(), omp_get_num_threads(), &begin, &end);
    float* p = a.get() + (s * slice_blocks) * kLanes;
    std::fill(p + begin * kLanes, p + end * kLanes, 1.0f);
  }

  double best_s = 1e30;
  volatile float sink = 0.0f;  // keeps the sums alive
  for (int rep = 0; rep < std::max(1, repeats); ++rep) {
    for (int64_t s = 0; s < n_slices; ++s) {
      const float* p = a.get() + (s * slice_blocks) * kLanes;
      float total = 0.0f;
      const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(n_threads) reduction(+ : total)
      {
        int64_t begin, end;
        thread_range(slice_blocks, omp_get_thread_num(), omp_get_num_threads(), &begin, &end);
        total += sum_blocks(p, begin, end);
      }
      const auto t1 = std::chrono::steady_clock::now();
      sink = sink + total;
      best_s = std::min(best_s, std::chrono::duration<double>(t1 - t0).count());
    }
  }
  return double(slice_blocks * block_bytes) / best_s / 1e9;
}

}  // namespace kvlab
