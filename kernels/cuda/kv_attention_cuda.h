// Decode attention on the GPU, read straight from the packed blocks of kernels/cpu/kv_format.h
// (every format: f32, f16, bf16, fp8 e4m3, integers of 2/3/4/8 bits per token or per channel):
//
//   out[b, h * G + r] = softmax_j(q[b, h * G + r] . K_bh(j) * scale) V_bh(j)
//
// for one new token per sequence b, over the blocks of its kv head h (G = n_heads / n_kv_heads
// query heads share a kv head: GQA). Blocks are paged: each is a descriptor with its own device
// pointers, so a sequence's history may lie anywhere and sequences may differ in length.
//
// Work (flash-decoding): one thread block per (sequence, kv head, split of kBlocksPerSplit
// blocks); it reads each K/V byte of its blocks once for all G rows, scores a tile of 128 tokens
// (a thread per token), folds them into a running softmax and accumulates the values (a thread
// per channel). A second kernel merges the splits' states in split order. The split of a
// sequence depends only on its own number of blocks, never on the batch: a sequence gets the same
// bits alone or in a batch. The per-thread arithmetic is in kv_element.h (shared with the host
// tests); error budget there.
//
// Limits (a larger problem is an error, never a silent fallback): head_dim <= 256, G <= 8.
// The new token's own key and value are not special: write them to the cache first (a block of
// any format) and they are attended like the rest.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "base/status.h"
#include "kernels/cpu/kv_format.h"
#include "kernels/cuda/device.h"

namespace kvlab::cuda {

constexpr int kBlocksPerSplit = 4;  // 512 tokens in pages of 128: 64 splits per kv head at 32K
constexpr int kMaxHeadDim = 256;
constexpr int kMaxGroup = 8;

// Packed blocks copied to device memory: one arena for their bytes, scales and zeros, and the
// descriptors (KvBlock, pointers into the arena) the kernels read.
struct DeviceBlocks {
  DeviceBuffer arena;
  DeviceBuffer descriptors;  // KvBlock[count]
  int count = 0;
  int64_t packed_bytes = 0;  // bytes the kernels read: codes / elements, scales and zeros
  const KvBlock* blocks() const { return static_cast<const KvBlock*>(descriptors.data()); }
};

// The bytes a block's readers touch: its data (n tokens or d channels of `stride` bytes, the last
// one only as long as its codes) and its f16 scales and zeros.
struct BlockExtent {
  int64_t data_bytes = 0;
  int64_t scales = 0;  // f16 values in scale (and in zero, for the integer formats)
  bool zeros = false;
};
BlockExtent block_extent(const KvBlock& b);

// Whether a host block is a well-formed kv_format.h block (format, bits, group, pointers); the
// message names what is wrong.
Status check_block(const KvBlock& b);

// Copies host blocks to the device. Every block is checked first.
StatusOr<DeviceBlocks> upload_blocks(std::span<const KvBlock> blocks);

// Keys and values copied to the device after the checks the kernels rely on: block i of k and of
// v hold the same tokens, and every block has head size head_dim.
struct DeviceHistory {
  DeviceBlocks k, v;
};
StatusOr<DeviceHistory> upload_history(std::span<const KvBlock> k, std::span<const KvBlock> v, int head_dim);

struct DecodeAttention {
  int batch = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  float scale = 0;                  // softmax scale, usually 1 / sqrt(head_dim)
  const float* q = nullptr;         // device [batch, n_heads, head_dim], post-RoPE
  const KvBlock* k = nullptr;       // device descriptors (DeviceBlocks::blocks): keys, post-RoPE
  const KvBlock* v = nullptr;       // device descriptors: values, block i as long as k's block i
  const int32_t* first = nullptr;   // device [batch * n_kv_heads + 1]: the blocks of sequence b,
                                    // kv head h are [first[b * n_kv_heads + h], first[... + 1])
  int max_blocks = 0;               // host: the most blocks any (b, h) has (sizes the grid; a
                                    // smaller value stays correct but loses speed and batch
                                    // invariance)
  float* out = nullptr;             // device [batch, n_heads, head_dim]
};

// Splits per (sequence, kv head) and the f32 workspace decode_attention needs.
inline int decode_splits(int max_blocks) { return max_blocks > 0 ? (max_blocks + kBlocksPerSplit - 1) / kBlocksPerSplit : 1; }
size_t decode_workspace_floats(const DecodeAttention& a);

// Shapes and limits; Ok or a message that names the problem.
Status check(const DecodeAttention& a);

// Runs both kernels on `stream` (a cudaStream_t; null: the default stream) and returns when they
// are queued. workspace: device, decode_workspace_floats(a) floats. A (b, h) with no blocks
// gives zeros.
Status decode_attention(const DecodeAttention& a, float* workspace, void* stream = nullptr);

}  // namespace kvlab::cuda
