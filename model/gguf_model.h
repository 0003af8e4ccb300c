// Builds a Checkpoint (config + weights: the Q4_1 / Q8_0 matrices as stored, everything else as
// f32) from a GGUF file of architecture "llama".
#pragma once

#include "base/status.h"
#include "model/gguf.h"
#include "model/llama2c.h"

namespace kvlab {

// Reads llama.* metadata and the blk.N.* tensors, checks every shape against the config and
// dequantizes to f32. A missing tensor or key is kNotFound, a wrong shape kDataLoss, a tensor
// type without dequantizer kUnsupported (naming the tensor, its type and the supported types).
StatusOr<Checkpoint> load_gguf_checkpoint(const GgufFile& gguf);

}  // namespace kvlab
