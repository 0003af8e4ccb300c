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
//   element(j, c)   f32 / f16 / bf16 exact; fp8 e4m3 exact (times the token scale: exact);
//                   integers fmaf(code, scale, zero), the same bits as dequantize_block.
//   token_scores    s[r] = sum_c q[r, c] * K(j, c), fp8 elements without their token scale,
//                   which then multiplies the sum.
//   channel_sums    acc[r] += sum_j (p[r, j] * token scale of j) * V(j, c), likewise (scale 1
//                   but for fp8).
// The error against exact arithmetic is within the f32 budget of the CPU kernels' tests:
// |error| <= (len + 4) u sum |terms|, u = 2^-24, len = d (scores) or n + 1 (values).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "base/half.h"
#include "base/hd.h"
#include "kernels/cpu/kv_codec.h"
#include "kernels/cpu/kv_format.h"

namespace kvlab::cuda {

// How the elements of a dense block are loaded: 16 bytes at a time (data and stride multiples of
// 16, d of the elements 16 bytes hold: every row is whole 16-byte vectors), whole (data and stride
// multiples of the element size) or byte by byte (any layout; kv_format.h allows odd strides).
// Only the scores read vectors (a thread walks its token's row); single elements are read whole
// for kVec16 too.
enum class Load { kBytes, kWhole, kVec16 };

KVLAB_HD uint32_t load_bytes(const uint8_t* p, int n) {
  uint32_t v = 0;
  for (int i = 0; i < n; ++i) v |= uint32_t(p[i]) << (8 * i);
  return v;
}

// An aligned 2- or 4-byte element (little-endian, as on both sides).
template <typename T>
KVLAB_HD T load_whole(const uint8_t* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const T*>(p);
#else
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
#endif
}

// Element (j, c) of a block of format F as f32; kFp8 without its token scale (token_scale).
template <KvFormat F, Load L>
KVLAB_HD float element_of(const KvBlock& b, int j, int c) {
  if constexpr (F == KvFormat::kF32) {
    const uint8_t* p = b.data + j * b.stride + 4 * int64_t(c);
    return f32_from_bits(L != Load::kBytes ? load_whole<uint32_t>(p) : load_bytes(p, 4));
  } else if constexpr (F == KvFormat::kF16 || F == KvFormat::kBF16) {
    const uint8_t* p = b.data + j * b.stride + 2 * int64_t(c);
    const uint16_t h = L != Load::kBytes ? load_whole<uint16_t>(p) : uint16_t(load_bytes(p, 2));
    return F == KvFormat::kF16 ? f16_to_f32(h) : bf16_to_f32(h);
  } else if constexpr (F == KvFormat::kFp8) {
    return e4m3_to_float(b.data[j * b.stride + c]);
  } else if constexpr (F == KvFormat::kIntToken) {
    const int64_t g = int64_t(j) * (b.d / b.group) + c / b.group;
    const float code = float(code_at(b.data + j * b.stride, c, b.bits));
    return fmaf(code, f16_to_f32(b.scale[g]), f16_to_f32(b.zero[g]));
  } else {
    // kIntChannel. Token group t's codes start on a byte (kv_format.h), so code j of the whole
    // stream is code j - t * group of group t's stream.
    const int64_t s = int64_t(j / channel_group_tokens(b)) * b.d + c;
    const float code = float(code_at(b.data + c * b.stride, j, b.bits));
    return fmaf(code, f16_to_f32(b.scale[s]), f16_to_f32(b.zero[s]));
  }
}

// The factor of token j that element_of leaves out: fp8's f16 token scale, else 1.
template <KvFormat F>
KVLAB_HD float token_scale_of(const KvBlock& b, int j) {
  if constexpr (F == KvFormat::kFp8) return f16_to_f32(b.scale[j]);
  return 1.0f;
}

// Calls Op::template run<F, L>(args...) for the block's format and load: the format is
// dispatched once per call (a token's scores, a channel's sums over a tile), not per element.
template <class Op, class... Args>
KVLAB_HD auto with_layout(const KvBlock& b, Args&&... args) {
  const int64_t e = element_bytes(b.format);
  const uintptr_t at = reinterpret_cast<uintptr_t>(b.data);
  const bool vec = at % 16 == 0 && b.stride % 16 == 0 && b.d % (16 / e) == 0;
  const bool whole = at % e == 0 && b.stride % e == 0;
  switch (b.format) {
    case KvFormat::kF32:
      return vec     ? Op::template run<KvFormat::kF32, Load::kVec16>(b, args...)
             : whole ? Op::template run<KvFormat::kF32, Load::kWhole>(b, args...)
                     : Op::template run<KvFormat::kF32, Load::kBytes>(b, args...);
    case KvFormat::kF16:
      return vec     ? Op::template run<KvFormat::kF16, Load::kVec16>(b, args...)
             : whole ? Op::template run<KvFormat::kF16, Load::kWhole>(b, args...)
                     : Op::template run<KvFormat::kF16, Load::kBytes>(b, args...);
    case KvFormat::kBF16:
      return vec     ? Op::template run<KvFormat::kBF16, Load::kVec16>(b, args...)
             : whole ? Op::template run<KvFormat::kBF16, Load::kWhole>(b, args...)
                     : Op::template run<KvFormat::kBF16, Load::kBytes>(b, args...);
    case KvFormat::kFp8:
      return Op::template run<KvFormat::kFp8, Load::kBytes>(b, args...);
    case KvFormat::kIntToken:
      return Op::template run<KvFormat::kIntToken, Load::kBytes>(b, args...);
    case KvFormat::kIntChannel:
      break;
  }
  return Op::template run<KvFormat::kIntChannel, Load::kBytes>(b, args...);
}

// 16 aligned bytes as four little-endian 32-bit words (one vector load on the device).
struct Words4 {
  uint32_t w[4];
};
KVLAB_HD Words4 load16(const uint8_t* p) {
#if defined(__CUDA_ARCH__)
  const uint4 v = *reinterpret_cast<const uint4*>(p);
  return {{v.x, v.y, v.z, v.w}};
#else
  Words4 v;
  std::memcpy(v.w, p, 16);
  return v;
#endif
}

// Element i (< 16 / element size) of a 16-byte vector of a dense format.
template <KvFormat F>
KVLAB_HD float vec_element(const Words4& v, int i) {
  if constexpr (F == KvFormat::kF32) {
    return f32_from_bits(v.w[i]);
  } else {
    const uint16_t h = uint16_t(v.w[i / 2] >> (16 * (i % 2)));
    return F == KvFormat::kF16 ? f16_to_f32(h) : bf16_to_f32(h);
  }
}

struct ElementOp {
  template <KvFormat F, Load L>
  KVLAB_HD static float run(const KvBlock& b, int j, int c) {
    return element_of<F, L>(b, j, c) * token_scale_of<F>(b, j);
  }
};

// Element (j, c) of block b as f32, fp8's token scale included (what dequantize_block gives).
KVLAB_HD float element(const KvBlock& b, int j, int c) { return with_layout<ElementOp>(b, j, c); }

// Scores of token j for R query rows: s[r * lds] = sum_c q[r * d + c] * K(j, c), fp8's token
// scale applied to the sum. q: [R, d] f32, already times the softmax scale.
template <int R>
struct ScoresOp {
  template <KvFormat F, Load L>
  KVLAB_HD static void run(const KvBlock& k, int j, const float* q, float* s, int64_t lds) {
    float acc[R];  // registers: the array never leaves this function
    for (int r = 0; r < R; ++r) acc[r] = 0.0f;
    if constexpr (L == Load::kVec16) {
      constexpr int kPer = 16 / int(element_bytes(F));  // elements per vector
      const uint8_t* row = k.data + j * k.stride;
      for (int c0 = 0; c0 < k.d; c0 += kPer) {
        const Words4 v = load16(row + c0 * element_bytes(F));
        for (int i = 0; i < kPer; ++i) {
          const float x = vec_element<F>(v, i);
          for (int r = 0; r < R; ++r) acc[r] = fmaf(q[r * k.d + c0 + i], x, acc[r]);
        }
      }
    } else {
      for (int c = 0; c < k.d; ++c) {
        const float x = element_of<F, L>(k, j, c);
        for (int r = 0; r < R; ++r) acc[r] = fmaf(q[r * k.d + c], x, acc[r]);
      }
    }
    const float ts = token_scale_of<F>(k, j);
    for (int r = 0; r < R; ++r) s[r * lds] = F == KvFormat::kFp8 ? acc[r] * ts : acc[r];
  }
};

template <int R>
KVLAB_HD void token_scores(const KvBlock& k, int j, const float* q, float* s, int64_t lds) {
  with_layout<ScoresOp<R>>(k, j, q, s, lds);
}

// kIntChannel keys with the query folded in, the CPU reference's algebra
// (kv_attention_scalar.cc): per token group t, qs[r, c] = q[r, c] * scale(t, c) and
// z[r] = sum_c q[r, c] * zero(t, c), then s[r] = sum_c qs[r, c] * code(j, c) + z[r]: one product
// per element instead of a dequantization.
KVLAB_HD float folded_scale(const KvBlock& k, int t, int c) { return f16_to_f32(k.scale[int64_t(t) * k.d + c]); }

// z of one row q ([d]) for token group t.
KVLAB_HD float folded_zero_term(const KvBlock& k, int t, const float* q) {
  float z = 0.0f;
  for (int c = 0; c < k.d; ++c) z = fmaf(q[c], f16_to_f32(k.zero[int64_t(t) * k.d + c]), z);
  return z;
}

// Scores of token j for R rows from its group's qs ([R, d]) and z ([R]): s[r * lds].
template <int R>
KVLAB_HD void folded_token_scores(const KvBlock& k, int j, const float* qs, const float* z, float* s, int64_t lds) {
  float acc[R];
  for (int r = 0; r < R; ++r) acc[r] = 0.0f;
  for (int c = 0; c < k.d; ++c) {
    const float code = float(code_at(k.data + c * k.stride, j, k.bits));
    for (int r = 0; r < R; ++r) acc[r] = fmaf(qs[r * k.d + c], code, acc[r]);
  }
  for (int r = 0; r < R; ++r) s[r * lds] = acc[r] + z[r];
}

// Channel c of R rows over tokens [j0, j1): acc[r] += sum_j (p[r * ldp + j - j0] * token scale of
// j) * V(j, c). p: [R, ldp] f32 weights of the online softmax (unnormalized).
template <int R>
struct ChannelSumsOp {
  template <KvFormat F, Load L>
  KVLAB_HD static void run(const KvBlock& v, int c, int j0, int j1, const float* p, int ldp, float (&acc)[R]) {
    for (int j = j0; j < j1; ++j) {
      const float x = element_of<F, L>(v, j, c);
      const float ts = token_scale_of<F>(v, j);
      for (int r = 0; r < R; ++r) acc[r] = fmaf(p[r * ldp + j - j0] * ts, x, acc[r]);
    }
  }
};

template <int R>
KVLAB_HD void channel_sums(const KvBlock& v, int c, int j0, int j1, const float* p, int ldp, float (&acc)[R]) {
  with_layout<ChannelSumsOp<R>>(v, c, j0, j1, p, ldp, acc);
}

// kIntToken values with the weights folded in, the CPU reference's algebra: per token j and
// channel group g, pw[r, j, g] = p[r, j] * scale(j, g), and per group zs[r, g] = sum_j p[r, j] *
// zero(j, g); then acc[r] += sum_j pw[r, j, g(c)] * code(j, c) + zs[r, g(c)].
KVLAB_HD float folded_weight(const KvBlock& v, int j, int g, float p) {
  return p * f16_to_f32(v.scale[int64_t(j) * (v.d / v.group) + g]);
}

// zs of one row over tokens [j0, j1): p holds that row's weights from token j0 on.
KVLAB_HD float folded_zero_sum(const KvBlock& v, int g, int j0, int j1, const float* p) {
  float z = 0.0f;
  for (int j = j0; j < j1; ++j) z = fmaf(p[j - j0], f16_to_f32(v.zero[int64_t(j) * (v.d / v.group) + g]), z);
  return z;
}

// Channel c of R rows over tokens [j0, j1) from the folded weights pw ([R, ldw, groups]: row r,
// token j at (r * ldw + j - j0) * groups) and zs ([R, groups]).
template <int R>
KVLAB_HD void folded_channel_sums(const KvBlock& v, int c, int j0, int j1, const float* pw, int ldw, const float* zs,
                                  float (&acc)[R]) {
  const int groups = v.d / v.group, g = c / v.group;
  for (int j = j0; j < j1; ++j) {
    const float code = float(code_at(v.data + j * v.stride, c, v.bits));
    for (int r = 0; r < R; ++r) acc[r] = fmaf(pw[(int64_t(r) * ldw + j - j0) * groups + g], code, acc[r]);
  }
  for (int r = 0; r < R; ++r) acc[r] += zs[r * groups + g];
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
