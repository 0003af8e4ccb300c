// The GPU as the rest of kvlab sees it: whether one is there, and device memory owned the C++
// way. No CUDA header is included here; callers need not be compiled by nvcc.
#pragma once

#include <cstddef>
#include <string>

#include "base/status.h"

namespace kvlab::cuda {

// The device kvlab uses (device 0), or why there is none ("no CUDA device: <driver's reason>").
struct DeviceInfo {
  std::string name;      // "NVIDIA H100 80GB HBM3"
  int sm_count = 0;      // streaming multiprocessors
  int major = 0, minor = 0;
  size_t memory_bytes = 0;
};
StatusOr<DeviceInfo> device_info();

// Device memory of `bytes` bytes, freed with its owner. Moves, never copies.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static StatusOr<DeviceBuffer> allocate(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr, o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return p_; }
  size_t bytes() const { return bytes_; }
  // Host <-> device copies into / out of [offset, offset + n); a range outside the buffer is an
  // error, as is a failed copy.
  Status upload(const void* host, size_t n, size_t offset = 0);
  Status download(void* host, size_t n, size_t offset = 0) const;

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// A CUDA runtime error code (a cudaError_t) as a Status naming `what`; Ok for cudaSuccess.
Status cuda_status(int error, const std::string& what);

// The last CUDA error (of a launch, say) as a Status naming `what`; Ok if none.
Status last_error(const char* what);
// Waits for the device; its error, if any, as a Status.
Status synchronize(const char* what);

}  // namespace kvlab::cuda
