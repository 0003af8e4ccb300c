// f16 / bf16 <-> f32 for arrays, SIMD with runtime dispatch. For every non-NaN input the result
// is bit-identical to the scalar conversions of base/half.h on every ISA (round to nearest even
// going down), so the ISA never changes what a cache stores; NaNs stay NaN.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/cpu_features.h"

namespace kvlab {

void convert_f16_to_f32(const uint16_t* src, float* dst, size_t n);
void convert_f32_to_f16(const float* src, uint16_t* dst, size_t n);
void convert_bf16_to_f32(const uint16_t* src, float* dst, size_t n);
void convert_f32_to_bf16(const float* src, uint16_t* dst, size_t n);

// The same with an explicit ISA, for tests. REQUIRES: the CPU supports `isa`.
void convert_f16_to_f32_isa(Isa isa, const uint16_t* src, float* dst, size_t n);
void convert_f32_to_f16_isa(Isa isa, const float* src, uint16_t* dst, size_t n);
void convert_bf16_to_f32_isa(Isa isa, const uint16_t* src, float* dst, size_t n);
void convert_f32_to_bf16_isa(Isa isa, const float* src, uint16_t* dst, size_t n);

}  // namespace kvlab
