// Exact tokens of one (layer, sequence) in a dense format (f32, f16, bf16 or fp8), in a ring of
// `capacity` slots: appended at the back, dropped from the front (sliding windows, buffers whose
// oldest tokens get compressed). Slots live in pages of P tokens, each page kv head after kv head,
// a head's keys and values back to back:
//   [n_kv_heads][K: P x head_dim | V: P x head_dim] elements
// plus, for fp8, a meta page of f16 scales [n_kv_heads][K: P | V: P]. A decode step reads a page
// front to back (the attention engine takes the kv heads of a run one after the other, and the
// fused kernels read ahead the bytes that follow the run they work on: kernels/cpu/kv_attention.h).
// P is ring_page_tokens(capacity): long rings use long pages because the attention kernels read
// one head's run of a page as one stream (a 128-token run of f16 streams at about twice the
// speed of four 32-token runs in separate pages); short rings keep short pages so that a page's
// unused slots stay few.
// A page is allocated when one of its slots is first used and kept until clear(), so a ring that
// has wrapped holds a constant number of bytes. A ring that has not wrapped frees the pages past
// its end on truncate().
#pragma once

#include <algorithm>

#include <cstdint>
#include <vector>

#include "base/serialize.h"
#include "base/status.h"
#include "kernels/cpu/kv_format.h"
#include "kvcache/memory.h"

namespace kvlab {

// Tokens per page of a ring of `capacity` slots.
// Rings under 32 slots (attention sinks, AQUA-KV's prefix) are one page of exactly their size:
// a 32-token page for 4 sink tokens would book 8 times their bytes.
constexpr int ring_page_tokens(int capacity) { return capacity >= 2048 ? 128 : (capacity >= 32 ? 32 : std::max(1, capacity)); }

class TokenRing {
 public:
  // format: kF32, kF16, kBF16 or kFp8. Pages are booked under `kind` (scales under kMeta). The
  // capacity is rounded up to whole pages (pages are allocated whole anyway).
  TokenRing(MemoryLedger* ledger, MemoryKind kind, KvFormat format, int n_kv_heads, int head_dim, int capacity);
  ~TokenRing();
  TokenRing(TokenRing&& o) noexcept;
  TokenRing(const TokenRing&) = delete;
  TokenRing& operator=(const TokenRing&) = delete;
  TokenRing& operator=(TokenRing&&) = delete;

  int size() const { return size_; }
  int capacity() const { return capacity_; }
  int page_tokens() const { return page_tokens_; }
  // Appends one token. k, v: [n_kv_heads * head_dim] f32 (keys post-RoPE).
  // REQUIRES: size() < capacity().
  void push(const float* k, const float* v);
  // Drops the n oldest tokens.
  void pop_front(int n);
  // Keeps the n oldest tokens.
  void truncate(int n);
  // Frees every page. The next token goes to the slot a ring that had dropped `dropped` tokens
  // would give it, so that a ring filled at once has the layout (and attention over it the
  // summation order) of one written token by token.
  void clear(int dropped = 0);

  // Tokens [first, first + n) (0 = oldest) as f32. k, v: [n, n_kv_heads * head_dim].
  void read(int first, int n, float* k, float* v) const;
  // The tokens as runs of consecutive slots within one page (O(1) each): run r covers tokens
  // [first(r), first(r) + length(r)).
  int n_runs() const;
  // Run r of kv head h as packed blocks; *first_token receives the index of its first token.
  void run(int r, int kv_head, KvBlock* k, KvBlock* v, int* first_token) const;

  // Raw token records in order (for save/load).
  void save(BinaryWriter& out) const;
  Status load(BinaryReader& in);

 private:
  int slot(int i) const { return (start_ + i) % capacity_; }
  uint8_t* ensure_page(int page);
  // fp8: marks slot s's page if the token just written there holds a NaN code.
  void note_nan_codes(int s);
  // Tokens [i, i + n) of kv head h as packed blocks. REQUIRES: they lie in one page.
  void view(int i, int n, int kv_head, KvBlock* k, KvBlock* v) const;
  // Byte offsets inside a page of token slot s (within page), head h; indices of its fp8 scales
  // inside the meta page.
  int64_t key_offset(int s, int h) const;
  int64_t value_offset(int s, int h) const;
  int64_t key_scale(int s, int h) const;
  int64_t value_scale(int s, int h) const;

  TrackedAllocator<uint8_t> page_alloc_, meta_alloc_;
  KvFormat format_;
  int n_kv_heads_, head_dim_, page_tokens_, capacity_;
  int64_t page_bytes_, meta_bytes_;
  TrackedVector<uint8_t*> pages_;  // [capacity / page_tokens] grown on demand
  TrackedVector<uint8_t*> metas_;  // fp8 scale pages, parallel to pages_
  // fp8 only (else empty): per page, 1 once a NaN code (a NaN element) has been written to it,
  // until the page is freed; pages without one tell the kernels to skip their NaN scan
  // (KvBlock::fp8_nan_free). Booked as index bytes: one per page.
  TrackedVector<uint8_t> nan_codes_;
  int start_ = 0;   // slot of the oldest token
  int size_ = 0;
  bool wrapped_ = false;  // some token has lived in a slot before start_
};

}  // namespace kvlab
