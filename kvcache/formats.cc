#include "kvcache/formats.h"

#include "kernels/cpu/kv_quantize.h"

namespace kvlab {

StatusOr<KvFormat> parse_dense_format(const std::string& name) {
  if (name == "f32") return KvFormat::kF32;
  if (name == "f16") return KvFormat::kF16;
  if (name == "bf16") return KvFormat::kBF16;
  if (name == "fp8") return KvFormat::kFp8;
  return invalid_argument("unknown storage type '" + name + "' (valid: f32, f16, bf16, fp8)");
}

const char* format_name(KvFormat f) {
  switch (f) {
    case KvFormat::kF32: return "f32";
    case KvFormat::kF16: return "f16";
    case KvFormat::kBF16: return "bf16";
    case KvFormat::kFp8: return "fp8";
    case KvFormat::kIntToken: return "int-per-token";
    case KvFormat::kIntChannel: return "int-per-channel";
  }
  return "?";
}

double dense_relative_error(KvFormat f) {
  switch (f) {
    case KvFormat::kF32: return 0.0;
    case KvFormat::kF16: return 1.0 / 2048;
    case KvFormat::kBF16: return 1.0 / 256;
    // e4m3 keeps 3 mantissa bits (half an ulp is 2^-4 of the value) with the scale chosen so the
    // largest value maps to 448; the f16 rounding of the scale and the subnormal range (steps of
    // 2^-9 * scale) add at most 2^-10 of the largest value.
    case KvFormat::kFp8: return 1.0 / 16 + 1.0 / 1024;
    default: return 1.0;
  }
}

double int_relative_error(int bits) { return int_quant_error_bound(-1.0, 1.0, bits); }

}  // namespace kvlab
