// Scores and value accumulation over the integer formats (kIntChannel, kIntToken, 2/3/4/8-bit
// codes) in f32 arithmetic, written once over the vector width V (simd_vec.h); exact to within
// f32 rounding. Blocks the integer dot-product paths (kv_int_vnni.cc, kv_int_avx2.cc) do not
// take come here. Included only by isa_avx2.cc and isa_avx512.cc (see
// kv_dense.h).
//
// Order of operations per output:
//   kIntChannel scores      lanes = tokens: fma(q[c] * scale[c], code, acc) for c ascending, then
//                           + z, z = fma chain of q[c] * zero[c] over c.
//   kIntToken scores        tokens dequantized to a stack tile (fma(code, scale, zero), exact
//                           product), then the dense f32 dots (kv_dense.h).
//   kIntToken accumulate    lanes = channels: fma(p * scale[j, g], code, acc) for j ascending, then
//                           + the fma chain of p * zero[j, g] over j.
//   kIntChannel accumulate  per (row, channel): lanes = tokens, fma over the tokens, V::hsums'
//                           tree, then fma(dot, scale[c], psum * zero[c]), psum by the same tree.
#pragma once

#include <cmath>

#include "kernels/cpu/kv_dense.h"
#include "kernels/cpu/kv_kernels_internal.h"
#include "kernels/cpu/simd_vec.h"

namespace kvlab {
namespace {

// ---- kIntChannel scores: tiles of R rows x TV vectors of tokens ------------------------------

template <class V, int R, int TV>
void int_channel_scores_tile(const KvBlock& k, const float* q, const float* z, int j0, float* s) {
  using F = typename V::F;
  constexpr int L = V::kLanes;
  const int n = k.n, d = k.d;
  const int64_t sb = packed_bytes(n, k.bits);
  F acc[R][TV];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int t = 0; t < TV; ++t) acc[r][t] = V::zero();
  }
  for (int c = 0; c < d; ++c) {
    const uint8_t* stream = k.data + c * k.stride;
    F code[TV];
    KVLAB_UNROLL
    for (int t = 0; t < TV; ++t) code[t] = V::codes(stream, j0 + L * t, k.bits, sb);
    const float sc = V::h2f(k.scale[c]);
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const F qv = V::set1(q[r * d + c] * sc);
      KVLAB_UNROLL
      for (int t = 0; t < TV; ++t) acc[r][t] = V::fma(qv, code[t], acc[r][t]);
    }
  }
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int t = 0; t < TV; ++t) {
      V::store(s + r * n + j0 + L * t, V::tail(n - j0 - L * t), V::add(acc[r][t], V::set1(z[r])));
    }
  }
}

template <class V, int R>
void int_channel_scores_rows(const KvBlock& k, const float* q, float* s) {
  constexpr int W = V::kLanes * V::kTile;  // tokens per tile
  float z[R];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    float zr = 0.0f;
    for (int c = 0; c < k.d; ++c) zr = std::fma(q[r * k.d + c], V::h2f(k.zero[c]), zr);
    z[r] = zr;
  }
  for (int j0 = 0; j0 < k.n; j0 += W) {
    with_rows((std::min(W, k.n - j0) + V::kLanes - 1) / V::kLanes, [&]<int TV>() {
      if constexpr (TV <= V::kTile) int_channel_scores_tile<V, R, TV>(k, q, z, j0, s);
    });
  }
}

// ---- kIntToken: scale and zero lanes of channels c .. c + kLanes - 1 of token j ----------------

template <class V>
inline void token_lanes(const KvBlock& b, int j, int c, typename V::F* sl, typename V::F* zl) {
  const int G = groups_of(b);
  if (b.group % V::kLanes == 0) {
    *sl = V::set1(V::h2f(b.scale[j * G + c / b.group]));
    *zl = V::set1(V::h2f(b.zero[j * G + c / b.group]));
    return;
  }
  alignas(64) float sv[V::kLanes], zv[V::kLanes];
  KVLAB_UNROLL
  for (int i = 0; i < V::kLanes; ++i) {
    const int g = std::min((c + i) / b.group, G - 1);
    sv[i] = V::h2f(b.scale[j * G + g]);
    zv[i] = V::h2f(b.zero[j * G + g]);
  }
  *sl = V::load(sv);
  *zl = V::load(zv);
}

// kIntToken scores: tiles of kTile tokens dequantized (code * scale + zero, one rounding) to a
// stack tile, then the dense f32 dot products.
template <class V>
void int_token_scores(const KvBlock& k, const float* q, int rows, float* s) {
  using F = typename V::F;
  constexpr int T = V::kTile, L = V::kLanes;
  const int n = k.n, d = k.d;
  const int dp = (d + L - 1) / L * L;
  alignas(64) float tile[T * kMaxSimdD];
  const int64_t rb = packed_bytes(d, k.bits);
  for (int j0 = 0; j0 < n; j0 += T) {
    const int tn = std::min(T, n - j0);
    for (int t = 0; t < tn; ++t) {
      const uint8_t* row = k.data + (j0 + t) * k.stride;
      for (int c = 0; c < d; c += L) {
        F sl, zl;
        token_lanes<V>(k, j0 + t, c, &sl, &zl);
        V::store(tile + t * dp + c, V::fma(V::codes(row, c, k.bits, rb), sl, zl));
      }
    }
    const uint8_t* tb = reinterpret_cast<const uint8_t*>(tile);
    for (int r0 = 0; r0 < rows; r0 += 4) {
      const float* qr = q + int64_t(r0) * d;
      float* sr = s + int64_t(r0) * n + j0;
      // The tile's token t sits at tile + t * dp; scores land at sr[r * n + t].
      with_rows(rows - r0, [&]<int R>() {
        with_rows(tn, [&]<int N>() {
          if constexpr (N <= T) dense_scores_tile<V, KvFormat::kF32, R, N, false>(tb, dp * 4, nullptr, 0, qr, d, sr, n, nullptr);
        });
      });
    }
  }
}

// ---- kIntToken accumulate: scale folded into p ------------------------------------------------
//   acc[r, c] = (acc[r, c] + sum_j (p[r, j] * scale[j, g]) * code(j, c))   (fma, j ascending)
//             + zs[r, g],  zs[r, g] = sum_j p[r, j] * zero[j, g]           (fma, j ascending)

template <class V, int R, int C>
void int_token_acc_tile(const KvBlock& v, const float* p, const float* zs, int c0, float* acc) {
  using F = typename V::F;
  constexpr int L = V::kLanes;
  const int n = v.n, d = v.d, G = groups_of(v);
  const int64_t rb = packed_bytes(d, v.bits);
  typename V::Tail m[C];
  F a[R][C];
  load_acc_tile<V, R, C>(acc, d, c0, m, a);
  // One group over the whole tile: p * scale is one number per (row, token), the same product
  // every lane would round.
  const bool one_group = c0 / v.group == (c0 + L * C - 1) / v.group;
  for (int j = 0; j < n; ++j) {
    const uint8_t* row = v.data + j * v.stride;
    F code[C];
    KVLAB_UNROLL
    for (int c = 0; c < C; ++c) code[c] = V::codes(row, c0 + L * c, v.bits, rb);
    if (one_group) {
      const float sc = V::h2f(v.scale[j * G + c0 / v.group]);
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) {
        const F ps = V::set1(p[r * n + j] * sc);
        KVLAB_UNROLL
        for (int c = 0; c < C; ++c) a[r][c] = V::fma(ps, code[c], a[r][c]);
      }
      continue;
    }
    F sl[C];
    KVLAB_UNROLL
    for (int c = 0; c < C; ++c) {
      F zl;
      token_lanes<V>(v, j, c0 + L * c, &sl[c], &zl);
    }
    KVLAB_UNROLL
    for (int r = 0; r < R; ++r) {
      const F pb = V::set1(p[r * n + j]);
      KVLAB_UNROLL
      for (int c = 0; c < C; ++c) a[r][c] = V::fma(V::mul(pb, sl[c]), code[c], a[r][c]);
    }
  }
  // Zero terms: lane c gets zs[r, c / group].
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    KVLAB_UNROLL
    for (int c = 0; c < C; ++c) {
      alignas(64) float zl[L];
      KVLAB_UNROLL
      for (int i = 0; i < L; ++i) zl[i] = zs[r * G + std::min((c0 + L * c + i) / v.group, G - 1)];
      V::store(acc + r * d + c0 + L * c, m[c], V::add(a[r][c], V::load(zl)));
    }
  }
}

template <class V, int R>
void int_token_acc_rows(const KvBlock& v, const float* p, float* acc) {
  constexpr int W = V::kLanes * V::kTile;  // channels per tile
  const int G = groups_of(v), n = v.n;
  float zs[4 * kMaxSimdD];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    for (int g = 0; g < G; ++g) {
      float z = 0.0f;
      for (int j = 0; j < n; ++j) z = std::fma(p[r * n + j], V::h2f(v.zero[j * G + g]), z);
      zs[r * G + g] = z;
    }
  }
  for (int c0 = 0; c0 < v.d; c0 += W) {
    with_rows((std::min(W, v.d - c0) + V::kLanes - 1) / V::kLanes, [&]<int C>() {
      if constexpr (C <= V::kTile) int_token_acc_tile<V, R, C>(v, p, zs, c0, acc);
    });
  }
}

// ---- kIntChannel accumulate: per (row, channel) dot over tokens, lanes = tokens --------------
//   acc[r, c] += dot(p[r, :], code(:, c)) * scale[c] + psum[r] * zero[c]

template <class V, int R>
void int_channel_acc_rows(const KvBlock& v, const float* p, float* acc) {
  using F = typename V::F;
  constexpr int L = V::kLanes, CT = V::kTile;  // CT channels at a time
  const int n = v.n, d = v.d;
  const int64_t sb = packed_bytes(n, v.bits);
  float psum[R];
  KVLAB_UNROLL
  for (int r = 0; r < R; ++r) {
    F sv = V::zero();
    for (int j = 0; j < n; j += L) sv = V::add(sv, V::load(p + r * n + j, V::tail(n - j)));
    psum[r] = V::hsum(sv);
  }
  for (int c0 = 0; c0 < d; c0 += CT) {
    const int cc_n = std::min(CT, d - c0);
    F dots[CT * R];
    KVLAB_UNROLL
    for (int i = 0; i < CT * R; ++i) dots[i] = V::zero();
    for (int j = 0; j < n; j += L) {
      const typename V::Tail m = V::tail(n - j);
      F pv[R];
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) pv[r] = V::load(p + r * n + j, m);
      KVLAB_UNROLL
      for (int cc = 0; cc < CT; ++cc) {
        if (cc >= cc_n) break;
        const F code = V::codes(v.data + (c0 + cc) * v.stride, j, v.bits, sb);
        KVLAB_UNROLL
        for (int r = 0; r < R; ++r) dots[cc * R + r] = V::fma(pv[r], code, dots[cc * R + r]);
      }
    }
    float out[CT * R];  // out[cc * R + r]
    V::hsums(dots, out);
    for (int cc = 0; cc < cc_n; ++cc) {
      const float sc = V::h2f(v.scale[c0 + cc]), zr = V::h2f(v.zero[c0 + cc]);
      KVLAB_UNROLL
      for (int r = 0; r < R; ++r) acc[r * d + c0 + cc] += std::fma(out[cc * R + r], sc, psum[r] * zr);
    }
  }
}

// ---- the ISA's entry points: the integer dot-product paths where they take a block, else these

template <class V>
void scores_simd(const KvBlock& k, const float* q, int rows, float* s, bool (*int_take)(const KvBlock&),
                 void (*int_scores)(const KvBlock&, const float*, int, float*)) {
  switch (k.format) {
    case KvFormat::kF32: return dense_scores<V, KvFormat::kF32>(k, q, rows, s);
    case KvFormat::kF16: return dense_scores<V, KvFormat::kF16>(k, q, rows, s);
    case KvFormat::kBF16:
      return dense_scores<V, KvFormat::kBF16>(k, q, rows, s);
    case KvFormat::kFp8: return dense_scores<V, KvFormat::kFp8>(k, q, rows, s);
    default: break;
  }
  if (int_take(k)) return int_scores(k, q, rows, s);
  if (k.format == KvFormat::kIntToken) return int_token_scores<V>(k, q, rows, s);
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const float* qr = q + int64_t(r0) * k.d;
    float* sr = s + int64_t(r0) * k.n;
    with_rows(rows - r0, [&]<int R>() { int_channel_scores_rows<V, R>(k, qr, sr); });
  }
}

template <class V>
void accumulate_simd(const KvBlock& v, const float* p, int rows, float* acc, bool (*int_take)(const KvBlock&),
                     void (*int_accumulate)(const KvBlock&, const float*, int, float*)) {
  switch (v.format) {
    case KvFormat::kF32: return dense_acc<V, KvFormat::kF32>(v, p, rows, acc);
    case KvFormat::kF16: return dense_acc<V, KvFormat::kF16>(v, p, rows, acc);
    case KvFormat::kBF16: return dense_acc<V, KvFormat::kBF16>(v, p, rows, acc);
    case KvFormat::kFp8: return dense_acc<V, KvFormat::kFp8>(v, p, rows, acc);
    default: break;
  }
  if (int_take(v)) return int_accumulate(v, p, rows, acc);
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const float* pr = p + int64_t(r0) * v.n;
    float* ar = acc + int64_t(r0) * v.d;
    if (v.format == KvFormat::kIntChannel) {
      with_rows(rows - r0, [&]<int R>() { int_channel_acc_rows<V, R>(v, pr, ar); });
    } else {
      with_rows(rows - r0, [&]<int R>() { int_token_acc_rows<V, R>(v, pr, ar); });
    }
  }
}

}  // namespace
}  // namespace kvlab
