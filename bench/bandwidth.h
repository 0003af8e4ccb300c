// STREAM-style read bandwidth of this machine, the yardstick for memory-bound kernels: a decode
// matmul or an attention kernel reports its GB/s as a fraction of this number, measured in the
// same binary on the same run (shared/DESIGN.md, "Measuring").
#pragma once

#include <cstddef>

namespace kvlab {

// Sums a `bytes`-long float array (1 GiB by default: far larger than any last-level cache) with
// all OpenMP threads (omp_get_max_threads(); each thread reads its own contiguous part of every
// slice, a part it touched first). The array is read as consecutive 64 MiB slices (2x a 32 MiB
// L3, and evicted by the rest of the array before it comes round again), each slice timed on
// its own, `repeats` times over. Returns the fastest slice in GB/s (1e9 bytes per second): on a
// machine shared with other jobs, a 1-2 ms slice often runs undisturbed where a whole 1 GiB pass
// rarely does. Allocates and frees the array on every call: call it once per binary and keep
// the number.
double measure_read_bandwidth_gbps(size_t bytes = size_t(1) << 30, int repeats = 5);

}  // namespace kvlab
