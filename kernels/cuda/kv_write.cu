// The writers of kv_write.h: a thread per token (write_tokens) or per channel (write_channels),
// each running the CPU writer's code (kernels/cpu/kv_codec.h).
#include <cuda_runtime.h>

#include <string>

#include "kernels/cpu/kv_codec.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/kv_write.h"

namespace kvlab::cuda {
namespace {

constexpr int kThreads = 128;

__global__ void write_tokens_kernel(KvFormat format, int bits, int group, const float* x, int n, int64_t ldx, int d,
                                    uint8_t* data, int64_t stride, uint16_t* scale, uint16_t* zero) {
  const int j = blockIdx.x * kThreads + threadIdx.x;
  if (j >= n) return;
  const int s = format == KvFormat::kIntToken ? d / group : 1;
  write_token(format, bits, group, x + j * ldx, d, data + j * stride, scale ? scale + int64_t(j) * s : nullptr,
              zero ? zero + int64_t(j) * s : nullptr);
}

__global__ void write_channels_kernel(int bits, const float* x, int n, int64_t ldx, int d, uint8_t* data,
                                      int64_t stride, uint16_t* scale, uint16_t* zero) {
  const int c = blockIdx.x * kThreads + threadIdx.x;
  if (c >= d) return;
  write_channel(bits, x + c, n, ldx, data + c * stride, scale + c, zero + c);
}

Status check_bits(int bits) {
  if (bits == 2 || bits == 3 || bits == 4 || bits == 8) return Status::Ok();
  return invalid_argument("GPU writer: " + std::to_string(bits) + "-bit codes (2, 3, 4 or 8)");
}

Status check_shape(int n, int64_t ldx, int d, const void* x, const void* data) {
  if (n < 0 || d < 1 || ldx < d) {
    return invalid_argument("GPU writer: " + std::to_string(n) + " tokens of " + std::to_string(d) + " values, rows " +
                            std::to_string(ldx) + " apart");
  }
  if (!x || !data) return invalid_argument("GPU writer: a null device pointer");
  return Status::Ok();
}

}  // namespace

Status write_tokens(KvFormat format, int bits, int group, const float* x, int n, int64_t ldx, int d, uint8_t* data,
                    int64_t stride, uint16_t* scale, uint16_t* zero, void* stream) {
  KVLAB_RETURN_IF_ERROR(check_shape(n, ldx, d, x, data));
  int64_t row = element_bytes(format) * d;
  switch (format) {
    case KvFormat::kF32:
    case KvFormat::kF16:
    case KvFormat::kBF16:
      break;
    case KvFormat::kFp8:
      if (!scale) return invalid_argument("GPU writer: fp8 needs its token scales");
      break;
    case KvFormat::kIntToken:
      KVLAB_RETURN_IF_ERROR(check_bits(bits));
      if (group < 1 || d % group != 0) {
        return invalid_argument("GPU writer: channel group " + std::to_string(group) + " does not divide " + std::to_string(d));
      }
      if (!scale || !zero) return invalid_argument("GPU writer: integer tokens need scales and zeros");
      row = packed_bytes(d, bits);
      break;
    case KvFormat::kIntChannel:
      return invalid_argument("GPU writer: kIntChannel is written per token group (write_channels)");
  }
  if (n > 1 && stride < row) return invalid_argument("GPU writer: stride " + std::to_string(stride) + " below a row of " + std::to_string(row));
  if (n == 0) return Status::Ok();
  write_tokens_kernel<<<(n + kThreads - 1) / kThreads, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      format, bits, group, x, n, ldx, d, data, stride, scale, zero);
  return last_error("write_tokens launch");
}

Status write_channels(int bits, const float* x, int n, int64_t ldx, int d, uint8_t* data, int64_t stride,
                      uint16_t* scale, uint16_t* zero, void* stream) {
  KVLAB_RETURN_IF_ERROR(check_bits(bits));
  KVLAB_RETURN_IF_ERROR(check_shape(n, ldx, d, x, data));
  if (n < 1) return invalid_argument("GPU writer: a token group of no tokens");
  if (!scale || !zero) return invalid_argument("GPU writer: integer channels need scales and zeros");
  if (d > 1 && stride < packed_bytes(n, bits)) {
    return invalid_argument("GPU writer: stride " + std::to_string(stride) + " below a channel of " +
                            std::to_string(packed_bytes(n, bits)) + " bytes");
  }
  write_channels_kernel<<<(d + kThreads - 1) / kThreads, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      bits, x, n, ldx, d, data, stride, scale, zero);
  return last_error("write_channels launch");
}

}  // namespace kvlab::cuda
