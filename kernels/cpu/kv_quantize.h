// Writers and the reference reader of the packed K/V layouts of kernels/cpu/kv_format.h.
// Scalar code: a token is written once, read thousands of times; the fused readers are in
// kernels/cpu/kv_attention.h.
#pragma once

#include <cstdint>

#include "kernels/cpu/kv_format.h"

namespace kvlab {

// fp8 e4m3 (kv_format.h): f32 -> e4m3 rounds to nearest even; finite values beyond +-448
// saturate to +-448 (there is no infinity), NaN becomes 0x7f. e4m3 -> f32 is exact.
uint8_t f32_to_e4m3(float x);
float e4m3_to_f32(uint8_t b);

// Writes one token's d values in a token-major format (kF32, kF16, kBF16, kFp8, kIntToken):
// `data` receives the token's elements / codes (element_bytes * d, or packed_bytes(d, bits)),
// `scale` / `zero` its f16 scale (kFp8: one; kIntToken: d / group of each) where the format has
// them (else ignored, may be null).
void quantize_token(KvFormat format, int bits, int group, const float* x, int d, uint8_t* data,
                    uint16_t* scale, uint16_t* zero);

// Writes a block of n tokens per channel (kIntChannel). x: [n, d] f32 with rows ldx floats
// apart; channel c's codes go to data + c * stride (packed_bytes(n, bits) used), its f16 scale
// and zero to scale[c], zero[c].
void quantize_channels(int bits, const float* x, int n, int64_t ldx, int d, uint8_t* data, int64_t stride,
                       uint16_t* scale, uint16_t* zero);

// The reference reader: the block as f32, out: [n, d].
void dequantize_block(const KvBlock& block, float* out);

// The largest |dequantized - original| the writer can produce for a group whose values lie in
// [lo, hi] with `bits` bits (min-max asymmetric quantizer with f16 scale and zero): half a step
// plus the f16 rounding of scale and zero, derived in kv_quantize.cc. Tests and policies use it
// as the error budget of a format.
double int_quant_error_bound(double lo, double hi, int bits);

}  // namespace kvlab
