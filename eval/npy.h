// Writes float32 arrays as NumPy .npy files (format version 1.0), for comparisons in Python.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace kvlab {

// shape: e.g. {n_tokens, vocab}; data holds the product of the shape, row-major.
Status write_npy_f32(const std::string& path, const std::vector<int64_t>& shape, const float* data);

}  // namespace kvlab
