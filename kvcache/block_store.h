// Quantized tokens of one (layer, sequence) in blocks of up to `block_tokens` tokens, keys and
// values each in an integer format of kernels/cpu/kv_format.h:
//   kIntChannel  per-channel over the block's tokens (KIVI keys): a block is written whole
//   kIntToken    per-token, groups of `group` channels (KIVI values, the `quant` policy)
// Block page (payload), kv head after kv head, each head's keys and values back to back:
//   [head][K codes | V codes]
//   codes of one side: kIntChannel [head_dim][packed_bytes(block_tokens, bits)] |
//                      kIntToken [block_tokens][packed_bytes(head_dim, bits)]
// Meta page (f16), the same way: [head][K scale | K zero | V scale | V zero], [block_tokens / group]
// [head_dim] entries each for kIntChannel (a block holds one or more token groups, kv_format.h),
// [block_tokens][head_dim / group] for kIntToken.
// A decode step reads a block page front to back (the attention engine takes the kv heads of a
// block one after the other), and the fused kernels read ahead the bytes that follow the block
// they work on (kernels/cpu/kv_attention.h): the next kv head's keys while a head's values are
// accumulated, a head's values while its scores are computed. save() writes one canonical order
// (K codes of every head, then V; K scales, K zeros, V scales, V zeros), whatever the layout.
#pragma once

#include <cstdint>
#include <vector>

#include "base/serialize.h"
#include "base/status.h"
#include "kernels/cpu/kv_format.h"
#include "kvcache/memory.h"
#include "kvcache/page_table.h"

namespace kvlab {

struct IntFormat {
  KvFormat format = KvFormat::kIntToken;  // kIntToken or kIntChannel
  int bits = 4;                           // 2, 3, 4, 8
  int group = 32;  // kIntToken: channels per group (divides head_dim); kIntChannel: tokens per
                   // group (divides block_tokens; group * bits a multiple of 8 when smaller)
};

class BlockStore {
 public:
  BlockStore(MemoryLedger* ledger, int n_kv_heads, int head_dim, int block_tokens, IntFormat k, IntFormat v);
  BlockStore(BlockStore&&) noexcept = default;

  int size() const { return size_; }
  int block_tokens() const { return block_tokens_; }
  // Whether tokens can be appended one at a time (no per-channel format).
  bool token_granular() const;
  // Tokens appended at a time: the kIntChannel token group, or 1.
  int chunk_tokens() const;
  // Appends n tokens. k, v: [n, n_kv_heads * head_dim] f32, rows `ld` floats apart.
  // The last block is filled first, chunk_tokens() at a time: n is a multiple of it (after a
  // truncate inside a token group, the next tokens start a new block).
  void append(const float* k, const float* v, int n, int64_t ld);
  // Keeps the first n tokens (a block may end up partly used; its codes stay valid).
  void truncate(int n);
  void clear();

  int n_blocks() const { return int(counts_.size()); }
  // Block b of kv head h; *first_token receives the index of its first token.
  void block(int b, int kv_head, KvBlock* k, KvBlock* v, int* first_token) const;
  // Tokens [first, first + n) dequantized. k, v: [n, n_kv_heads * head_dim].
  void read(int first, int n, float* k, float* v) const;

  void save(BinaryWriter& out) const;
  Status load(BinaryReader& in);

 private:
  // Byte sizes per head of one block: codes and f16 scale-or-zero entries.
  int64_t code_bytes(const IntFormat& f) const;
  int64_t meta_entries(const IntFormat& f) const;
  // Offsets inside a block's pages of side 0 (K) / 1 (V) of head h: codes in bytes, the scale
  // (zero = 0) or zero (zero = 1) entries in f16 entries.
  int64_t code_offset(int side, int h) const;
  int64_t meta_offset(int side, int zero, int h) const;
  KvBlock view(int side, const uint8_t* codes, const uint16_t* meta, int n, int h) const;

  int n_kv_heads_, head_dim_, block_tokens_;
  IntFormat kf_, vf_;
  PageTable codes_;     // one page per block
  PageTable meta_;      // one page per block
  TrackedVector<int32_t> counts_;  // [n_blocks] tokens in each block
  TrackedVector<int32_t> firsts_;  // [n_blocks] index of each block's first token
  int size_ = 0;
};

}  // namespace kvlab
