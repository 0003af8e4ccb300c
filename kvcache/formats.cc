#include "kvcache/formats.h"

#include <cstring>

#include "kernels/cpu/convert.h"

namespace kvlab {

const char* element_type_name(ElementType t) {
  switch (t) {
    case ElementType::kF32: return "f32";
    case ElementType::kF16: return "f16";
    case ElementType::kBF16: return "bf16";
  }
  return "?";
}

StatusOr<ElementType> parse_element_type(const std::string& name) {
  if (name == "f32") return ElementType::kF32;
  if (name == "f16") return ElementType::kF16;
  if (name == "bf16") return ElementType::kBF16;
  return invalid_argument("unknown element type '" + name + "' (valid: f32, f16, bf16)");
}

size_t element_size(ElementType t) { return t == ElementType::kF32 ? 4 : 2; }

double element_relative_error(ElementType t) {
  switch (t) {
    case ElementType::kF32: return 0.0;
    case ElementType::kF16: return 1.0 / 2048;
    case ElementType::kBF16: return 1.0 / 256;
  }
  return 1.0;
}

void encode_elements(ElementType t, const float* src, void* dst, size_t n) {
  switch (t) {
    case ElementType::kF32: std::memcpy(dst, src, n * 4); return;
    case ElementType::kF16: convert_f32_to_f16(src, static_cast<uint16_t*>(dst), n); return;
    case ElementType::kBF16: convert_f32_to_bf16(src, static_cast<uint16_t*>(dst), n); return;
  }
}

void decode_elements(ElementType t, const void* src, float* dst, size_t n) {
  switch (t) {
    case ElementType::kF32: std::memcpy(dst, src, n * 4); return;
    case ElementType::kF16: convert_f16_to_f32(static_cast<const uint16_t*>(src), dst, n); return;
    case ElementType::kBF16: convert_bf16_to_f32(static_cast<const uint16_t*>(src), dst, n); return;
  }
}

}  // namespace kvlab
