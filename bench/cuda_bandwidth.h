// Yardsticks of the GPU benchmarks: the device's read bandwidth measured in the same binary, L2
// eviction between timed calls, and CUDA-event timing. No CUDA header here.
#pragma once

#include <cstddef>

#include "base/status.h"
#include "kernels/cuda/device.h"

namespace kvlab::cuda {

// Read bandwidth of device memory in GB/s (1e9 bytes per second): a float reduction over a
// `bytes`-long buffer (default 4 GiB, 80x an H100's 50 MiB L2), the fastest of `repeats` (>= 1)
// passes after a warm-up, timed with CUDA events.
StatusOr<double> measure_device_read_gbps(size_t bytes = size_t(4) << 30, int repeats = 10);

// Evicts the L2 by writing a buffer of twice its size.
class L2Flush {
 public:
  static StatusOr<L2Flush> create();
  Status run();

 private:
  DeviceBuffer scratch_;
};

// CUDA-event timing on the default stream: start(), the work, then stop_ms().
class EventTimer {
 public:
  static StatusOr<EventTimer> create();
  EventTimer(EventTimer&& o) noexcept : start_(o.start_), stop_(o.stop_) { o.start_ = o.stop_ = nullptr; }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  EventTimer& operator=(EventTimer&&) = delete;
  ~EventTimer();
  Status start();
  StatusOr<float> stop_ms();

 private:
  EventTimer() = default;
  void* start_ = nullptr;  // cudaEvent_t
  void* stop_ = nullptr;
};

}  // namespace kvlab::cuda
