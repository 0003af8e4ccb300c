// The attention engine: softmax(q k^T * scale) v for the new tokens of a forward, over each
// sequence's stored history (read block by block from the policy's storage) and the new tokens'
// exact keys and values (causal by position).
//
// Work is split into items (sequence, kv head, query tile, key chunk) with a numerically stable
// merge of partial softmax states (flash-decoding): long prefills split over query tiles, single
// token decodes over chunks of history blocks, so both cores work at batch 1. The split depends
// only on each sequence's own lengths, never on the batch or the thread count: a sequence gets
// bit-identical output alone or in a batch. Per block, the fused kernels of
// kernels/cpu/kv_attention.h compute the scores of all query heads of the kv head from the packed
// keys, kernels/cpu/softmax.h folds them into the running softmax, and the packed values are
// accumulated.
#pragma once

#include <cstdint>
#include <span>

#include "attention/observer.h"
#include "kernels/cpu/kv_format.h"

namespace kvlab {

struct AttentionShape {
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  float scale = 0;  // usually 1 / sqrt(head_dim)
  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
};

// One block of one kv head's history: keys (post-RoPE) and values in their packed formats
// (kernels/cpu/kv_format.h), read by the fused kernels without a full-precision copy.
struct HistoryBlock {
  KvBlock k, v;                        // same n
  const int32_t* positions = nullptr;  // [n]; null means first_pos, first_pos + 1, ...
  int32_t first_pos = 0;
  // Values in factored form (xKV): v holds each token's v.d coefficients and its value is
  // coefficients x v_basis, v_basis [head_dim, v.d] (channel c's row at c * v.d). The engine
  // accumulates the coefficients and applies the basis once per work item (exact: the sum is
  // linear). Every factored block of one sequence's history and kv head has the same basis.
  const float* v_basis = nullptr;
};

// A sequence's stored history in one layer. Every stored position is below the positions of the
// tokens being written (positions only grow), so history blocks need no causal mask.
class KvHistory {
 public:
  virtual ~KvHistory() = default;
  virtual int n_blocks() const = 0;
  virtual HistoryBlock block(int b, int kv_head) const = 0;
  // Whether a block's arrays stay valid while the engine asks for the next one (views into the
  // store). A history that builds each block in scratch reused at its next call says false; the
  // engine then asks for a block only once the previous one is folded, and gives the kernels no
  // read-ahead hint (KvBlock::next) across blocks.
  virtual bool blocks_outlive_next_call() const { return true; }
};

struct SeqAttention {
  int seq = 0;
  int n_new = 0;
  const int32_t* positions = nullptr;  // [n_new]
  const float* q = nullptr;            // [n_new, q_dim]  post-RoPE
  const float* k_new = nullptr;        // [n_new, kv_dim] post-RoPE, exact
  const float* v_new = nullptr;        // [n_new, kv_dim]
  float* out = nullptr;                // [n_new, q_dim]
  const KvHistory* history = nullptr;  // null: no history
};

void attend(const AttentionShape& shape, std::span<const SeqAttention> seqs, int layer,
            const AttentionObserver* observer);

// Scalar double-precision reference over explicit arrays, for tests:
//   q [n_q, q_dim] at q_pos; keys k [n_k, kv_dim] and values v at k_pos; out [n_q, q_dim].
// Key j is visible to query i iff k_pos[j] <= q_pos[i].
void attend_reference(const AttentionShape& shape, const float* q, const int32_t* q_pos, int n_q,
                      const float* k, const float* v, const int32_t* k_pos, int n_k, float* out);

}  // namespace kvlab
