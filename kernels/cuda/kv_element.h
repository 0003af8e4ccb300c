// What one GPU thread computes of decode attention over a packed block (kernels/cpu/kv_format.h):
// the element reader of every layout, the scores of one token and the value sums of one channel.
// Written once for both sides (KVLAB_HD, base/hd.h), on the shared codecs (base/half.h,
// kernels/cpu/kv_codec.h): under nvcc these are device functions the kernels of kv_attention.cu
// call, under a plain C++ compiler the same source is host code, so that
// tests/cuda_kernels_test.cc checks the arithmetic the GPU runs against the CPU's scalar
// reference on machines without a GPU. Only the thread layout (which thread takes which token or
// channel, the softmax between the two passes, the merge of splits) lives in the .cu file.
//
// Arithmetic (f32, terms in index order, as the CPU reference kernels/cpu/kv_attention_scalar.cc):
//   element(j, c)   f32 / f16 / bf16 exact; fp8 e4m3 exact, without the token scale;
//                   integers fmaf(code, scale, zero), the same bits as dequantize_block.
//   token_scores    s[r] = sum_c q[r, c] * element(j, c), then (fp8) times the token's scale.
//   channel_sums    acc[r] += sum_j (p[r, j] * token_scale(j)) * element(j, c).
// The error against exact arithmetic is within the f32 budget of the CPU kernels' tests:
// |error| <= (len + 4) u sum |terms|, u = 2^-24, len = d (scores) or n + 1 (values).
#pragma once

#include <cmath>
#include <cstdint>

#include "base/half.h"
#include "base/hd.h"
#include "kernels/cpu/kv_codec.h"
#include "kernels/cpu/kv_format.h"

namespace kvlab::cuda {

// Element (j, c) of block b as f32; kFp8 without its token scale (token_scale).
KVLAB_HD float element(const KvBlock& b, int j, int c) {
  switch (b.format) {
    case KvFormat::kF32: {
      const uint8_t* p = b.data + j * b.stride + 4 * int64_t(c);
      return f32_from_bits(uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24);
    }
    case KvFormat::kF16:
    case KvFormat::kBF16: {
      const uint8_t* p = b.data + j * b.stride + 2 * int64_t(c);
      const uint16_t h = uint16_t(p[0] | p[1] << 8);
      return b.format == KvFormat::kF16 ? f16_to_f32(h) : bf16_to_f32(h);
    }
    case KvFormat::kFp8:
      return e4m3_value(b.data[j * b.stride + c]);
    case KvFormat::kIntToken: {
      const int64_t g = int64_t(j) * (b.d / b.group) + c / b.group;
      const float code = float(code_at(b.data + j * b.stride, c, b.bits));
      return fmaf(code, f16_to_f32(b.scale[g]), f16_to_f32(b.zero[g]));
    }
    case KvFormat::kIntChannel: {
      // Token group t's codes start on a byte (kv_format.h), so code j of the whole stream is
      // code j - t * group of group t's stream.
      const int64_t s = int64_t(j / channel_group_tokens(b)) * b.d + c;
      const float code = float(code_at(b.data + c * b.stride, j, b.bits));
      return fmaf(code, f16_to_f32(b.scale[s]), f16_to_f32(b.zero[s]));
    }
  }
  return 0.0f;
}

// The factor of token j that element() leaves out: fp8's f16 token scale, else 1.
KVLAB_HD float token_scale(const KvBlock& b, int j) {
  return b.format == KvFormat::kFp8 ? f16_to_f32(b.scale[j]) : 1.0f;
}

// Scores of token j for R query rows: s[r] = sum_c q[r * d + c] * K(j, c). q: [R, d] f32,
// already times the softmax scale.
template <int R>
KVLAB_HD void token_scores(const KvBlock& k, int j, const float* q, float (&s)[R]) {
  for (int r = 0; r < R; ++r) s[r] = 0.0f;
  for (int c = 0; c < k.d; ++c) {
    const float x = element(k, j, c);
    for (int r = 0; r < R; ++r) s[r] = fmaf(q[r * k.d + c], x, s[r]);
  }
  const float ts = token_scale(k, j);
  if (ts != 1.0f) {
    for (int r = 0; r < R; ++r) s[r] *= ts;
  }
}

// Channel c of R rows over tokens [j0, j1): acc[r] += sum_j (p[r * ldp + j - j0] * token_scale(j))
// * V(j, c). p: [R, ldp] f32 weights of the online softmax (unnormalized).
template <int R>
KVLAB_HD void channel_sums(const KvBlock& v, int c, int j0, int j1, const float* p, int ldp, float (&acc)[R]) {
  for (int j = j0; j < j1; ++j) {
    const float x = element(v, j, c);
    const float ts = token_scale(v, j);
    for (int r = 0; r < R; ++r) acc[r] = fmaf(p[r * ldp + j - j0] * ts, x, acc[r]);
  }
}

// Channel c of one query row, merged over `splits` partial softmax states (flash-decoding): part
// holds split s's state at part + s * stride as [m, l, acc[0 .. d)] (m the largest score seen, l
// the sum of exp(score - m), acc the sum of exp(score - m) * V). Splits in index order, so the
// result does not depend on how the GPU scheduled them. No state with l > 0: 0.
KVLAB_HD float merge_splits(const float* part, int splits, int64_t stride, int c) {
  float m = -INFINITY;
  for (int s = 0; s < splits; ++s) m = fmaxf(m, part[s * stride]);
  float l = 0.0f, acc = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float* ps = part + s * stride;
    if (ps[1] == 0.0f) continue;  // a split with no tokens (or whose weights all underflowed)
    const float w = expf(ps[0] - m);
    l = fmaf(w, ps[1], l);
    acc = fmaf(w, ps[2 + c], acc);
  }
  return l == 0.0f ? 0.0f : acc / l;  // a NaN l (NaN scores) stays NaN
}

}  // namespace kvlab::cuda
