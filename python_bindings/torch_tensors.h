// Torch tensors in the Python module through the libtorch adapter (libtorch/kv_torch.h), when
// built with KVLAB_TORCH=ON: any CPU float32 / float16 / bfloat16 tensor, any strides, crosses as
// an at::Tensor by DLPack (no copy; the adapter converts what is not float32 with contiguous rows,
// once), and results come back as torch tensors. Without it, torch tensors are read through numpy
// (float32 and contiguous only).
#pragma once

#include <pybind11/pybind11.h>

#include "kvcache/kv_cache.h"

namespace kvlab::python {

bool is_torch_tensor(pybind11::handle x);

#ifdef KVLAB_WITH_TORCH
// cache.attend over torch tensors: a torch tensor [rows, q_dim] (`out` itself when given).
pybind11::object attend_torch(KvCache& cache, int layer, const ForwardBatch& batch, pybind11::handle q,
                              pybind11::handle k, pybind11::handle v, pybind11::handle out);
// cache.read as torch tensors (positions, keys, values), without a copy of the C++ result.
pybind11::tuple read_torch(const KvCache& cache, int layer, int slot);
#endif

}  // namespace kvlab::python
