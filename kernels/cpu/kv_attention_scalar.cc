// The scalar reference of the decode-attention kernels (kv_attention.h): one float accumulator
// per output, terms added in index order, products and sums rounded separately (kIntChannel keys:
// (q * scale) * code per channel, then + sum q * zero; kIntToken values: (p * scale) * code per
// token, then + the group's sum p * zero). Every CPU runs it; the SIMD paths follow the same
// algebra in another fixed order.
#include <cstring>

#include "base/half.h"
#include "kernels/cpu/kv_kernels_internal.h"

namespace kvlab {
namespace {

// Element (j, c) of a token-major dense block, as f32 (kFp8 without its token scale).
inline float dense_at(const KvBlock& b, int j, int c) {
  const uint8_t* row = b.data + j * b.stride;
  switch (b.format) {
    case KvFormat::kF32: {
      float v;
      std::memcpy(&v, row + 4 * c, 4);
      return v;
    }
    case KvFormat::kF16: {
      uint16_t h;
      std::memcpy(&h, row + 2 * c, 2);
      return f16_to_f32(h);
    }
    case KvFormat::kBF16: {
      uint16_t h;
      std::memcpy(&h, row + 2 * c, 2);
      return bf16_to_f32(h);
    }
    default:
      return kE4m3[row[c]];
  }
}

}  // namespace

void scores_scalar(const KvBlock& k, const float* q, int rows, float* s) {
  const int n = k.n, d = k.d;
  for (int r = 0; r < rows; ++r) {
    const float* qr = q + int64_t(r) * d;
    float* sr = s + int64_t(r) * n;
    switch (k.format) {
      case KvFormat::kIntToken: {
        const int groups = groups_of(k);
        for (int j = 0; j < n; ++j) {
          const uint8_t* codes = k.data + j * k.stride;
          float sum = 0.0f;
          for (int c = 0; c < d; ++c) {
            const int g = j * groups + c / k.group;
            sum += qr[c] * (float(code_at(codes, c, k.bits)) * f16_to_f32(k.scale[g]) + f16_to_f32(k.zero[g]));
          }
          sr[j] = sum;
        }
        break;
      }
      case KvFormat::kIntChannel: {
        float zterm = 0.0f;
        for (int c = 0; c < d; ++c) zterm += qr[c] * f16_to_f32(k.zero[c]);
        for (int j = 0; j < n; ++j) {
          float sum = 0.0f;
          for (int c = 0; c < d; ++c) {
            sum += (qr[c] * f16_to_f32(k.scale[c])) * float(code_at(k.data + c * k.stride, j, k.bits));
          }
          sr[j] = sum + zterm;
        }
        break;
      }
      default: {
        for (int j = 0; j < n; ++j) {
          float sum = 0.0f;
          for (int c = 0; c < d; ++c) sum += qr[c] * dense_at(k, j, c);
          sr[j] = k.format == KvFormat::kFp8 ? sum * f16_to_f32(k.scale[j]) : sum;
        }
        break;
      }
    }
  }
}

void accumulate_scalar(const KvBlock& v, const float* p, int rows, float* acc) {
  const int n = v.n, d = v.d;
  for (int r = 0; r < rows; ++r) {
    const float* pr = p + int64_t(r) * n;
    float* a = acc + int64_t(r) * d;
    switch (v.format) {
      case KvFormat::kIntToken: {
        const int groups = groups_of(v);
        for (int g = 0; g < groups; ++g) {
          float zsum = 0.0f;
          for (int j = 0; j < n; ++j) {
            const float pj = pr[j] * f16_to_f32(v.scale[j * groups + g]);
            const uint8_t* codes = v.data + j * v.stride;
            for (int c = g * v.group; c < (g + 1) * v.group; ++c) a[c] += pj * float(code_at(codes, c, v.bits));
            zsum += pr[j] * f16_to_f32(v.zero[j * groups + g]);
          }
          for (int c = g * v.group; c < (g + 1) * v.group; ++c) a[c] += zsum;
        }
        break;
      }
      case KvFormat::kIntChannel: {
        float psum = 0.0f;
        for (int j = 0; j < n; ++j) psum += pr[j];
        for (int c = 0; c < d; ++c) {
          float dot = 0.0f;
          for (int j = 0; j < n; ++j) dot += pr[j] * float(code_at(v.data + c * v.stride, j, v.bits));
          a[c] += dot * f16_to_f32(v.scale[c]) + psum * f16_to_f32(v.zero[c]);
        }
        break;
      }
      default: {
        for (int j = 0; j < n; ++j) {
          const float pj = v.format == KvFormat::kFp8 ? pr[j] * f16_to_f32(v.scale[j]) : pr[j];
          for (int c = 0; c < d; ++c) a[c] += pj * dense_at(v, j, c);
        }
        break;
      }
    }
  }
}

}  // namespace kvlab
