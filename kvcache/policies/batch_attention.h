// The attention step every policy's attend() shares: the new tokens of each sequence of a
// forward batch attend over that sequence's history (the policy's storage) and themselves,
// through one call of the engine (attention/attend.h).
#pragma once

#include <vector>

#include "attention/attend.h"
#include "kvcache/forward_batch.h"
#include "kvcache/policy.h"

namespace kvlab {

//   q:     [n_rows, q_dim] post-RoPE      k: [n_rows, kv_dim] PRE-RoPE      v: [n_rows, kv_dim]
//   out:   [n_rows, q_dim]
//   histories[i]: sequence batch.seqs[i]'s history (null or no blocks: none)
// Returns the new keys rotated at their positions, [n_rows, kv_dim], for the policy to store.
std::vector<float> attend_batch(const PolicyContext& ctx, int layer, const ForwardBatch& batch, const float* q,
                                const float* k, const float* v, float* out,
                                const std::vector<const KvHistory*>& histories);

}  // namespace kvlab
