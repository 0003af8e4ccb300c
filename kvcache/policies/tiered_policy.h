// The token store behind the `full`, `kivi`, `quant` and `streaming` policies. Per layer and
// sequence slot, tokens live in up to three tiers, in position order:
//
//   sink     the first `sink` tokens, exact (dense format), kept for good
//   blocks   quantized tokens (kvcache/block_store.h), positions sink, sink + 1, ...
//   recent   the newest tokens, exact, in a ring (kvcache/token_ring.h)
//
// When the recent tier overflows `recent` tokens, its oldest tokens are either compressed into
// blocks `chunk` at a time (kCompress: KIVI's residual, which waits for a whole group), dropped
// (kDrop: StreamingLLM's sliding window), or the tier simply grows (kNone: the full cache).
// Tokens are stored after the forward's attention has used them exactly, so the tokens being
// written always see their own exact K/V; nothing needs to wait for commit().
#pragma once

#include <memory>

#include "base/status.h"
#include "kvcache/block_store.h"
#include "kvcache/policy.h"

namespace kvlab {

struct TieredConfig {
  enum class Overflow { kNone, kCompress, kDrop };
  KvFormat exact_format = KvFormat::kF16;        // sink and recent: kF32, kF16, kBF16, kFp8
  MemoryKind exact_kind = MemoryKind::kExact;    // how sink/recent bytes are booked
  int sink = 0;
  int recent = 0;  // tokens the recent tier holds before overflowing (ignored for kNone)
  Overflow overflow = Overflow::kNone;
  IntFormat k_format, v_format;  // kCompress
  int block_tokens = 32;         // kCompress: tokens per block
  int chunk = 1;                 // kCompress: tokens compressed at a time
};

std::unique_ptr<Policy> make_tiered_policy(const PolicyContext& ctx, const TieredConfig& config);

// StreamingLLM's store: the first `sink` tokens and a ring of the newest `window`, in `format`.
TieredConfig streaming_config(KvFormat format, int sink, int window);

// Makes slot `seq` of `layer` of a policy made by make_tiered_policy (overflow kDrop or kNone)
// hold `tokens`, as if the sequence had been written up to `length` tokens and its other tokens
// evicted: positions below the sink size fill the sink tier (0, 1, ...), the others, consecutive
// and ending at length - 1, the recent tier (at most its capacity). Keys post-RoPE. Anything
// else is an error and leaves the slot empty.
Status tiered_adopt(Policy& policy, int layer, int seq, const LayerContents& tokens, int length);

}  // namespace kvlab
