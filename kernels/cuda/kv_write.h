// Writing K/V into the packed layouts of kernels/cpu/kv_format.h on the GPU: the same codecs as
// the CPU writers (kernels/cpu/kv_codec.h, run a thread per token or per channel), so a block
// written here holds the same bytes as one written by kernels/cpu/kv_quantize.h from the same
// floats. All pointers are device pointers; `stream` is a cudaStream_t (null: the default).
// Returns when the kernel is queued; bad arguments are an error before anything is written.
#pragma once

#include <cstdint>

#include "base/status.h"
#include "kernels/cpu/kv_format.h"

namespace kvlab::cuda {

// n tokens of d values, x [n, d] with rows ldx floats apart, in a token-major format (kF32,
// kF16, kBF16, kFp8, kIntToken): token j's elements or codes at data + j * stride, its scales at
// scale + j * s and zeros at zero + j * s, s = 1 (kFp8) or d / group (kIntToken).
Status write_tokens(KvFormat format, int bits, int group, const float* x, int n, int64_t ldx, int d, uint8_t* data,
                    int64_t stride, uint16_t* scale, uint16_t* zero, void* stream = nullptr);

// One kIntChannel token group: n tokens of d values (x as above) quantized per channel, channel
// c's codes at data + c * stride (packed_bytes(n, bits) bytes), its scale and zero at scale[c],
// zero[c].
Status write_channels(int bits, const float* x, int n, int64_t ldx, int d, uint8_t* data, int64_t stride,
                      uint16_t* scale, uint16_t* zero, void* stream = nullptr);

}  // namespace kvlab::cuda
