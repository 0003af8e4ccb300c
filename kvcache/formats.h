// Element storage types of K/V values and their conversions to and from f32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "base/status.h"

namespace kvlab {

enum class ElementType { kF32, kF16, kBF16 };

const char* element_type_name(ElementType t);
StatusOr<ElementType> parse_element_type(const std::string& name);
size_t element_size(ElementType t);
// Largest |decode(encode(x)) - x| / |x| over normal values: 0 for f32, 2^-11 for f16, 2^-8 for bf16.
double element_relative_error(ElementType t);

// n values f32 -> storage (round to nearest even) and back.
void encode_elements(ElementType t, const float* src, void* dst, size_t n);
void decode_elements(ElementType t, const void* src, float* dst, size_t n);

}  // namespace kvlab
