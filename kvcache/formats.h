// Names and error budgets of the K/V storage formats (layouts: kernels/cpu/kv_format.h).
#pragma once

#include <string>

#include "base/status.h"
#include "kernels/cpu/kv_format.h"

namespace kvlab {

// "f32", "f16", "bf16", "fp8" -> the dense formats exact tokens are kept in.
StatusOr<KvFormat> parse_dense_format(const std::string& name);
const char* format_name(KvFormat f);
// Largest |stored - x| relative to max|x| over the values stored together (a head vector for
// the dense formats): 0 for f32, 2^-11 for f16, 2^-8 for bf16, about 2^-4 for fp8 e4m3.
double dense_relative_error(KvFormat f);
// The same for the asymmetric integer formats of `bits` bits, from the quantizer's own bound.
double int_relative_error(int bits);

}  // namespace kvlab
