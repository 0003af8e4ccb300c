// The decode-attention kernels of kv_attention_cuda.h: a split kernel (one thread block per
// sequence, kv head and split) and a merge kernel (one per query head and sequence).
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "kernels/cuda/kv_attention_cuda.h"
#include "kernels/cuda/kv_element.h"

namespace kvlab::cuda {
namespace {

constexpr int kThreads = 128;  // a token each when scoring a tile, a channel each when accumulating
constexpr int kWarps = kThreads / 32;
constexpr int kChannelsPerThread = kMaxHeadDim / kThreads;
// kIntChannel keys fold the query into each token group's scales in shared memory: up to 4
// groups per tile (KIVI's 32-token groups in 128-token pages), 32 KB.
constexpr int kFoldGroups = 4;
constexpr int kFoldFloats = 8192;
static_assert(kFoldGroups * kMaxGroup * kMaxHeadDim <= kFoldFloats, "the folded query of any tile fits");
static_assert(kFoldFloats % kThreads == 0, "zs_s holds G * groups sums whenever the folded weights fit");

__device__ float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

__device__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Partial states in the workspace: row r of (sequence b, kv head h), split s, is
// [m, l, acc[d]] at part + ((((b * n_kv_heads + h) * G + r) * splits + s) * (d + 2)): a row's
// splits are adjacent, as merge_splits reads them.
__host__ __device__ inline int64_t state_offset(int b, int h, int r, int s, int n_kv_heads, int G, int splits, int d) {
  return (((int64_t(b) * n_kv_heads + h) * G + r) * splits + s) * (d + 2);
}

template <int G>
__global__ void __launch_bounds__(kThreads) decode_split_kernel(DecodeAttention a, int splits, float* part) {
  const int s = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int d = a.head_dim;
  const int lo = a.first[b * a.n_kv_heads + h];
  const int nb = a.first[b * a.n_kv_heads + h + 1] - lo;
  const int blk0 = s * kBlocksPerSplit;
  if (blk0 >= nb) return;  // a shorter sequence has fewer splits; the merge reads only its own
  // The last split takes whatever is left: with a max_blocks below a sequence's real count (a
  // caller's error) the result stays right, only slower.
  const int blk1 = s == splits - 1 ? nb : min(nb, blk0 + kBlocksPerSplit);

  __shared__ float q_s[G * kMaxHeadDim];  // [G, d] the rows of this kv head, times the scale
  __shared__ float p_s[G * kThreads];     // [G, kThreads] a tile's scores, then its weights
  __shared__ float m_s[G], l_s[G], alpha_s[G];
  __shared__ float qs_s[kFoldFloats];     // kIntChannel keys: [groups of the tile, G, d] q * scale
  __shared__ float z_s[kFoldGroups * G];  // [groups of the tile, G] sum_c q * zero
  __shared__ float zs_s[kFoldFloats / kThreads];  // kIntToken values: [G, groups] sum_j p * zero

  const float* q = a.q + (int64_t(b) * a.n_heads + int64_t(h) * G) * d;
  for (int i = tid; i < G * d; i += kThreads) q_s[i] = q[i] * a.scale;
  if (tid < G) m_s[tid] = -INFINITY, l_s[tid] = 0.0f;
  float acc[kChannelsPerThread][G];  // channel tid + i * kThreads of each row
#pragma unroll
  for (int i = 0; i < kChannelsPerThread; ++i) {
    for (int r = 0; r < G; ++r) acc[i][r] = 0.0f;
  }
  __syncthreads();

  for (int blk = blk0; blk < blk1; ++blk) {
    const KvBlock kb = a.k[lo + blk];
    const KvBlock vb = a.v[lo + blk];
    for (int j0 = 0; j0 < kb.n; j0 += kThreads) {
      const int j1 = min(kb.n, j0 + kThreads);
      // kIntChannel keys: the query folded with the scales of the tile's token groups t0 ..
      // (at most kFoldGroups of them; groups of fewer than 32 tokens: every element dequantized).
      const int g = channel_group_tokens(kb), t0 = j0 / g, groups = (j1 - 1) / g + 1 - t0;
      const bool fold = kb.format == KvFormat::kIntChannel && groups <= kFoldGroups;
      if (fold) {
        for (int i = tid; i < groups * G * d; i += kThreads) {
          const int c = i % d, r = i / d % G, t = t0 + i / (G * d);
          qs_s[i] = q_s[r * d + c] * folded_scale(kb, t, c);
        }
        for (int i = tid; i < groups * G; i += kThreads) z_s[i] = folded_zero_term(kb, t0 + i / G, q_s + (i % G) * d);
        __syncthreads();
      }
      if (j0 + tid < j1) {
        const int j = j0 + tid;
        if (fold) {
          const int t = j / g - t0;
          folded_token_scores<G>(kb, j, qs_s + t * G * d, z_s + t * G, p_s + tid, kThreads);
        } else {
          token_scores<G>(kb, j, q_s, p_s + tid, kThreads);
        }
      } else {
        for (int r = 0; r < G; ++r) p_s[r * kThreads + tid] = -INFINITY;
      }
      __syncthreads();

      // The running softmax of the tile, a row per warp: m grows to the tile's max, the scores
      // become exp(s - m), l and (below) acc are rescaled by exp(m_old - m).
      for (int r = warp; r < G; r += kWarps) {
        float x[kThreads / 32];
        float mx = -INFINITY;
        for (int i = 0; i < kThreads / 32; ++i) {
          x[i] = p_s[r * kThreads + lane + 32 * i];
          mx = fmaxf(mx, x[i]);
        }
        const float m_old = m_s[r];
        const float m_new = fmaxf(m_old, warp_max(mx));
        float sum = 0.0f;
        for (int i = 0; i < kThreads / 32; ++i) {
          // -inf (a thread past the block's end) weighs 0; a NaN score gives a NaN weight.
          const float e = x[i] == -INFINITY ? 0.0f : expf(x[i] - m_new);
          p_s[r * kThreads + lane + 32 * i] = e;
          sum += e;
        }
        sum = warp_sum(sum);
        __syncwarp();  // every lane has read m_s[r] before lane 0 writes it
        if (lane == 0) {
          const float alpha = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
          alpha_s[r] = alpha;
          l_s[r] = fmaf(l_s[r], alpha, sum);
          m_s[r] = m_new;
        }
      }
      __syncthreads();

      // kIntToken values: the weights folded with the tokens' channel-group scales, in qs_s (free
      // since the scores), when the tile's [G, kThreads, groups] fit.
      const int vgroups = vb.format == KvFormat::kIntToken ? d / vb.group : 0;
      const bool vfold = vgroups > 0 && G * kThreads * vgroups <= kFoldFloats;
      if (vfold) {
        for (int i = tid; i < G * kThreads * vgroups; i += kThreads) {
          const int g = i % vgroups, jj = i / vgroups % kThreads, r = i / (vgroups * kThreads);
          qs_s[i] = j0 + jj < j1 ? folded_weight(vb, j0 + jj, g, p_s[r * kThreads + jj]) : 0.0f;
        }
        for (int i = tid; i < G * vgroups; i += kThreads) {
          zs_s[i] = folded_zero_sum(vb, i % vgroups, j0, j1, p_s + (i / vgroups) * kThreads);
        }
        __syncthreads();
      }
#pragma unroll  // acc stays in registers only if every index is a constant
      for (int i = 0; i < kChannelsPerThread; ++i) {
        const int c = tid + i * kThreads;
        if (c < d) {
          for (int r = 0; r < G; ++r) acc[i][r] *= alpha_s[r];
          if (vfold) {
            folded_channel_sums<G>(vb, c, j0, j1, qs_s, kThreads, zs_s, acc[i]);
          } else {
            channel_sums<G>(vb, c, j0, j1, p_s, kThreads, acc[i]);
          }
        }
      }
      __syncthreads();  // p_s, qs_s and zs_s are the next tile's
    }
  }

  for (int r = 0; r < G; ++r) {
    float* st = part + state_offset(b, h, r, s, a.n_kv_heads, G, splits, d);
    if (tid == 0) st[0] = m_s[r], st[1] = l_s[r];
#pragma unroll
    for (int i = 0; i < kChannelsPerThread; ++i) {
      const int c = tid + i * kThreads;
      if (c < d) st[2 + c] = acc[i][r];
    }
  }
}

__global__ void __launch_bounds__(kThreads) merge_kernel(DecodeAttention a, int splits, const float* part) {
  const int head = blockIdx.x, b = blockIdx.y;
  const int G = a.n_heads / a.n_kv_heads, h = head / G, r = head % G, d = a.head_dim;
  const int nb = a.first[b * a.n_kv_heads + h + 1] - a.first[b * a.n_kv_heads + h];
  const int own = min(splits, (nb + kBlocksPerSplit - 1) / kBlocksPerSplit);
  const float* row = part + state_offset(b, h, r, 0, a.n_kv_heads, G, splits, d);
  float* out = a.out + (int64_t(b) * a.n_heads + head) * d;
  for (int c = threadIdx.x; c < d; c += kThreads) out[c] = merge_splits(row, own, d + 2, c);
}

template <int G>
void launch_split(const DecodeAttention& a, int splits, float* part, cudaStream_t st) {
  decode_split_kernel<G><<<dim3(splits, a.n_kv_heads, a.batch), kThreads, 0, st>>>(a, splits, part);
}

}  // namespace

size_t decode_workspace_floats(const DecodeAttention& a) {
  return size_t(a.batch) * a.n_heads * decode_splits(a.max_blocks) * (a.head_dim + 2);
}

Status check(const DecodeAttention& a) {
  if (a.batch < 1 || a.batch > 65535) return invalid_argument("decode attention: batch " + std::to_string(a.batch) + " outside [1, 65535]");
  if (a.n_kv_heads < 1 || a.n_kv_heads > 65535 || a.n_heads < a.n_kv_heads || a.n_heads % a.n_kv_heads != 0) {
    return invalid_argument("decode attention: " + std::to_string(a.n_heads) + " query heads over " +
                            std::to_string(a.n_kv_heads) + " kv heads");
  }
  if (a.n_heads / a.n_kv_heads > kMaxGroup) {
    return unsupported("decode attention on the GPU: " + std::to_string(a.n_heads / a.n_kv_heads) +
                       " query heads per kv head (at most " + std::to_string(kMaxGroup) + ")");
  }
  if (int64_t(a.batch) * a.n_kv_heads >= (int64_t(1) << 31) - 1) {
    return invalid_argument("decode attention: " + std::to_string(a.batch) + " sequences x " + std::to_string(a.n_kv_heads) +
                            " kv heads overflow the int32 block index");
  }
  if (a.head_dim < 1 || a.head_dim > kMaxHeadDim) {
    return unsupported("decode attention on the GPU: head size " + std::to_string(a.head_dim) + " (1 to " +
                       std::to_string(kMaxHeadDim) + ")");
  }
  if (!std::isfinite(a.scale)) return invalid_argument("decode attention: the softmax scale is not finite");
  if (a.max_blocks < 0) return invalid_argument("decode attention: negative max_blocks");
  if (!a.q || !a.k || !a.v || !a.first || !a.out) return invalid_argument("decode attention: a null device pointer");
  return Status::Ok();
}

Status decode_attention(const DecodeAttention& a, float* workspace, void* stream) {
  KVLAB_RETURN_IF_ERROR(check(a));
  if (!workspace) return invalid_argument("decode attention: a null workspace");
  const int splits = decode_splits(a.max_blocks);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (a.n_heads / a.n_kv_heads) {
    case 1: launch_split<1>(a, splits, workspace, st); break;
    case 2: launch_split<2>(a, splits, workspace, st); break;
    case 3: launch_split<3>(a, splits, workspace, st); break;
    case 4: launch_split<4>(a, splits, workspace, st); break;
    case 5: launch_split<5>(a, splits, workspace, st); break;
    case 6: launch_split<6>(a, splits, workspace, st); break;
    case 7: launch_split<7>(a, splits, workspace, st); break;
    default: launch_split<8>(a, splits, workspace, st); break;
  }
  KVLAB_RETURN_IF_ERROR(last_error("decode attention (split kernel launch)"));
  merge_kernel<<<dim3(a.n_heads, a.batch), kThreads, 0, st>>>(a, splits, workspace);
  return last_error("decode attention (merge kernel launch)");
}

}  // namespace kvlab::cuda
