// libtorch adapter (KVLAB_TORCH=ON): C++ code that holds at::Tensor queries, keys and values
// writes them to a kvlab cache and attends over it, through the same KvCache::attend as the
// decoder.
//
// Tensors: CPU; float32, float16 or bfloat16; any strides. A float32 tensor whose rows are
// contiguous ([rows, width], stride (width, 1)) is read where it lies; any other is converted once
// into a float32 contiguous tensor (the cache computes in float32). `out`, when given, must be
// float32 and contiguous and is written in place. read() hands the C++ result to at::Tensor
// without a copy.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "base/status.h"
#include "kvcache/kv_cache.h"

namespace kvlab::aten {

// Whether attend() reads `t` in place (no conversion).
bool read_in_place(const at::Tensor& t);

// KvCache::attend over tensors. batch: from cache.plan();
//   q [rows, q_dim] post-RoPE, k [rows, kv_dim] PRE-RoPE, v [rows, kv_dim]; returns out [rows, q_dim]
// (float32; `out` itself when given). Errors: a tensor not on the CPU, of another dtype, rank or
// shape, a layer out of range.
StatusOr<at::Tensor> attend(KvCache& cache, int layer, const ForwardBatch& batch, const at::Tensor& q,
                            const at::Tensor& k, const at::Tensor& v, std::optional<at::Tensor> out = std::nullopt);

// KvCache::read as tensors: positions int32 [n], post-RoPE keys float32 [n, kv_dim], values.
StatusOr<std::tuple<at::Tensor, at::Tensor, at::Tensor>> read(const KvCache& cache, int layer, int seq);

}  // namespace kvlab::aten
