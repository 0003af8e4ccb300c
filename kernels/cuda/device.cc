#include "kernels/cuda/device.h"

#include <cuda_runtime.h>

#include <string>

namespace kvlab::cuda {
Status cuda_status(int error, const std::string& what) {
  const auto e = static_cast<cudaError_t>(error);
  if (e == cudaSuccess) return Status::Ok();
  return internal_error(what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

StatusOr<DeviceInfo> device_info() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear it: a machine without a driver is not an error state to keep
    return unsupported(std::string("no CUDA device: ") + cudaGetErrorString(e));
  }
  if (count == 0) return unsupported("no CUDA device: the driver reports none");
  cudaDeviceProp prop;
  KVLAB_RETURN_IF_ERROR(cuda_status(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties"));
  DeviceInfo info;
  info.name = prop.name;
  info.sm_count = prop.multiProcessorCount;
  info.major = prop.major;
  info.minor = prop.minor;
  info.memory_bytes = prop.totalGlobalMem;
  return info;
}

StatusOr<DeviceBuffer> DeviceBuffer::allocate(size_t bytes) {
  DeviceBuffer b;
  if (bytes == 0) return b;
  KVLAB_RETURN_IF_ERROR(cuda_status(cudaMalloc(&b.p_, bytes), "cudaMalloc of " + std::to_string(bytes) + " bytes"));
  b.bytes_ = bytes;
  return b;
}

DeviceBuffer::~DeviceBuffer() {
  if (p_) cudaFree(p_);
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (p_) cudaFree(p_);
    p_ = o.p_, bytes_ = o.bytes_;
    o.p_ = nullptr, o.bytes_ = 0;
  }
  return *this;
}

Status DeviceBuffer::upload(const void* host, size_t n, size_t offset) {
  if (offset > bytes_ || n > bytes_ - offset) return out_of_range("upload past the end of a device buffer");
  if (n == 0) return Status::Ok();
  return cuda_status(cudaMemcpy(static_cast<char*>(p_) + offset, host, n, cudaMemcpyHostToDevice), "cudaMemcpy to device");
}

Status DeviceBuffer::download(void* host, size_t n, size_t offset) const {
  if (offset > bytes_ || n > bytes_ - offset) return out_of_range("download past the end of a device buffer");
  if (n == 0) return Status::Ok();
  return cuda_status(cudaMemcpy(host, static_cast<const char*>(p_) + offset, n, cudaMemcpyDeviceToHost),
                     "cudaMemcpy to host");
}

Status last_error(const char* what) { return cuda_status(cudaGetLastError(), what); }

Status synchronize(const char* what) { return cuda_status(cudaDeviceSynchronize(), what); }

}  // namespace kvlab::cuda
