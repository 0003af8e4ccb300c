// STREAM-style read bandwidth of this machine, the yardstick for memory-bound kernels: a decode
// matmul or an attention kernel reports its GB/s as a fraction of this number, measured in the
// same binary on the same run (shared/DESIGN.md, "Measuring").
#pragma once

#include <cstddef>

namespace kvlab {

// The largest cache of this CPU in bytes (sysfs: the highest cache level of cpu0), at least
// 32 MiB (also where sysfs says nothing). Cold-data benchmarks read several times this much
// between two reads of the same byte: some machines have 480 MiB of L3, where a fixed 64 MiB
// working set would measure the cache instead of memory.
size_t last_level_cache_bytes();

// Bytes a benchmark reads before it comes back to the same data, so that none of it is still in
// the last-level cache: 2x last_level_cache_bytes(), at least `floor` bytes.
size_t cold_bytes(size_t floor);

// Sums a `bytes`-long float array (default: 4x the last-level cache, at least 1 GiB) with all
// OpenMP threads (omp_get_max_threads(); each thread reads its own contiguous part of every
// slice, a part it touched first). The array is read as consecutive 64 MiB slices (evicted by
// the rest of the array before they come round again), each slice timed on its own, `repeats`
// times over. Returns the fastest slice in GB/s (1e9 bytes per second): on a
// machine shared with other jobs, a 1-2 ms slice often runs undisturbed where a whole 1 GiB pass
// rarely does. Allocates and frees the array on every call: call it once per binary and keep
// the number.
double measure_read_bandwidth_gbps(size_t bytes = 0, int repeats = 5);

}  // namespace kvlab
