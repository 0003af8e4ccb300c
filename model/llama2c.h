// llama2.c checkpoints ("legacy v0": 7 int32 header, then f32 tensors; stories260K.bin) and
// llama2.c tokenizer files (tok512.bin, tokenizer.bin).
#pragma once

#include <string>

#include "base/status.h"
#include "model/config.h"
#include "model/weights.h"

namespace kvlab {

struct Checkpoint {
  ModelConfig config;
  Weights weights;
};

// Validates the header (positive sizes, n_heads % n_kv_heads == 0, dim % n_heads == 0) and that
// the file holds exactly the bytes the header implies (a shorter file is kDataLoss, a longer one
// too: it is not a v0 checkpoint). The newer llama2.c formats (magic "ak42") are kUnsupported.
StatusOr<Checkpoint> load_llama2c_checkpoint(const std::string& path);

}  // namespace kvlab
