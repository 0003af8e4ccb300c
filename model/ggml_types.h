// ggml tensor types as stored in GGUF files: block sizes, byte sizes and dequantization.
//
// A ggml tensor of a quantized type is a sequence of fixed-size blocks; each block holds
// `block_size` consecutive elements of a row in `block_bytes` bytes. The table in ggml_types.cc
// covers every id in GgmlType; its sizes were checked against the `static_assert`s on the block
// structs in ggml's ggml-common.h (see the comment there for the one disagreement with the
// Python `gguf` package).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "kernels/cpu/matmul.h"

namespace kvlab {

// Values are the ggml type ids written in GGUF tensor infos.
enum class GgmlType : uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ8_1 = 9,
  kQ2_K = 10, kQ3_K = 11, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kQ8_K = 15,
  kIQ2_XXS = 16, kIQ2_XS = 17, kIQ3_XXS = 18, kIQ1_S = 19, kIQ4_NL = 20, kIQ3_S = 21,
  kIQ2_S = 22, kIQ4_XS = 23, kI8 = 24, kI16 = 25, kI32 = 26, kI64 = 27, kF64 = 28,
  kIQ1_M = 29, kBF16 = 30, kTQ1_0 = 34, kTQ2_0 = 35,
};

struct GgmlTypeInfo {
  const char* name;     // "Q4_1"
  int64_t block_size;   // elements per block
  int64_t block_bytes;  // bytes per block; 0 when kvlab does not know it (a file using the type
                        // is refused as kUnsupported rather than misread)
  bool dequantizable;   // kvlab has a dequantizer for it
};

// nullptr for an id that is not a known ggml type.
const GgmlTypeInfo* ggml_type_info(uint32_t type_id);
// Comma-separated names of the types that dequantize_row() handles.
std::string ggml_supported_type_names();
// Dequantizes `n` elements (a multiple of the block size) starting at `src`.
// REQUIRES: ggml_type_info(type)->dequantizable. `src` needs no particular alignment.
void dequantize_row(GgmlType type, const uint8_t* src, float* dst, int64_t n);

// The BlockMatrix format (kernels/cpu/matmul.h) that holds `type` as it is, if any: Q4_1, Q8_0.
std::optional<BlockFormat> block_format_of(GgmlType type);
// `n_blocks` blocks at `src` split into a BlockMatrix's planes: codes[n_blocks * code bytes per
// block], scales[n_blocks * scale floats per block] (the file's f16 widened). dequantize_rows of
// the planes gives, bit for bit, what dequantize_row gives. REQUIRES: block_format_of(type).
void split_blocks(GgmlType type, const uint8_t* src, int64_t n_blocks, uint8_t* codes, float* scales);

}  // namespace kvlab
