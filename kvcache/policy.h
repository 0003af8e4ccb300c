// The interface every cache policy implements.
//
// A Policy instance owns a contiguous range of layers (one entry of a policy spec, see
// kvcache/policy_spec.h) for all sequence slots. The model-level KvCache (kvcache/kv_cache.h)
// routes each layer to its instance. Within one forward the calls are, for each layer l of the
// range in increasing order:
//
//   observe_hidden(l, ...)   only if wants_hidden(l): the residual stream entering layer l
//   attend(l, ...)           stores the new tokens and computes their attention output
//
// and after the last layer of the model, once: commit(batch). The contract:
//
//  * Keys arrive PRE-RoPE with their original positions (batch.positions); a policy stores them
//    pre- or post-RoPE as it needs and rotates with ctx.rope. Positions are never re-indexed.
//  * The new tokens attend to their exact K/V in the forward that writes them (causally, by
//    position). Compression or eviction of them happens in commit(), which may look across all
//    layers of the instance (AQUA-KV's chain, xKV's groups).
//  * attend() computes attention on the policy's own storage (fused dequantization through the
//    attention engine in attention/attend.h), never by materializing a full-precision copy of the
//    history.
//  * Every byte is allocated through ctx.ledger (kvcache/memory.h).
//  * Lengths may differ per layer and per sequence.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "attention/observer.h"
#include "attention/rope.h"
#include "base/json.h"
#include "base/no_fill_vector.h"
#include "base/serialize.h"
#include "base/status.h"
#include "kvcache/forward_batch.h"
#include "kvcache/memory.h"

namespace kvlab {

// The K/V shape shared by all layers of a model.
struct KvGeometry {
  int n_layers = 0;
  int n_heads = 0;     // query heads
  int n_kv_heads = 0;  // GQA: query head h reads kv head h / (n_heads / n_kv_heads)
  int head_dim = 0;
  int max_seq_len = 0;  // positions are < max_seq_len
  // Identifies the model's K/V projections (Model::fingerprint); side data calibrated on one
  // model (AQUA-KV predictors) is refused for another. 0: unknown.
  uint64_t model_fingerprint = 0;
  int kv_dim() const { return n_kv_heads * head_dim; }
  int q_dim() const { return n_heads * head_dim; }
  int group() const { return n_heads / n_kv_heads; }
};

struct PolicyContext {
  KvGeometry geometry;
  int first_layer = 0;
  int last_layer = 0;  // inclusive
  int max_seqs = 0;
  const RopeTable* rope = nullptr;       // the model's rotation (outlives the cache)
  MemoryLedger* ledger = nullptr;        // the cache's byte accounting
  const AttentionObserver* const* observer = nullptr;  // the cache's observer slot (may hold null)
  std::string spec_text;                 // canonical spec of this instance
};

// A sequence's K/V in one layer as attention sees it: post-RoPE keys, values, positions. For
// tests and tools (round trips, attention error), not for the decode path.
struct LayerContents {
  std::vector<int32_t> positions;  // [n]
  NoFillVector<float> k;           // [n, kv_dim] post-RoPE
  NoFillVector<float> v;           // [n, kv_dim]

  // Room for n tokens, so that appending them reallocates nothing.
  void reserve(int n, int kv_dim) {
    positions.reserve(size_t(n));
    k.reserve(size_t(n) * size_t(kv_dim));
    v.reserve(size_t(n) * size_t(kv_dim));
  }
  // Adds n tokens at positions pos, pos + 1, ...; returns where their k and v ([n, kv_dim]
  // each, not initialized) go.
  std::pair<float*, float*> append(int32_t pos, int kv_dim, int n = 1) {
    for (int t = 0; t < n; ++t) positions.push_back(pos + t);
    const size_t at = k.size();
    k.resize(at + size_t(n) * size_t(kv_dim));
    v.resize(k.size());
    return {k.data() + at, v.data() + at};
  }
};

class Policy {
 public:
  explicit Policy(const PolicyContext& ctx) : ctx_(ctx) {}
  virtual ~Policy() = default;
  Policy(const Policy&) = delete;
  Policy& operator=(const Policy&) = delete;

  const PolicyContext& context() const { return ctx_; }

  // Stores the batch's new tokens in `layer` and computes their attention.
  //   q:   [n_rows, q_dim]  post-RoPE queries
  //   k:   [n_rows, kv_dim] PRE-RoPE keys
  //   v:   [n_rows, kv_dim]
  //   out: [n_rows, q_dim]  softmax(q k^T / sqrt(head_dim)) v over history + new tokens
  virtual void attend(int layer, const ForwardBatch& batch, const float* q, const float* k,
                      const float* v, float* out) = 0;
  // End of the forward: compress / evict what this forward wrote.
  virtual void commit(const ForwardBatch& batch) { (void)batch; }

  // Tokens of `seq` held in `layer` (at most the sequence length).
  virtual int stored_tokens(int layer, int seq) const = 0;
  // Drops every token of `seq` with position >= n_tokens, in all layers.
  virtual Status crop(int seq, int n_tokens) = 0;
  virtual void reset(int seq) = 0;
  virtual LayerContents read(int layer, int seq) const = 0;

  // Versioned state of all slots; load() accepts only what save() of the same spec wrote.
  virtual void save(BinaryWriter& out) const = 0;
  virtual Status load(BinaryReader& in) = 0;

  // What the policy decided since it was made (LightTransfer's lazy scores and layers), for the
  // evaluation's JSON; nothing by default.
  virtual void report(JsonObject& out) const { (void)out; }

  // Observation of the residual stream entering a layer (decode sparsification).
  //   h: [n_rows, dim]
  virtual bool wants_hidden(int layer) const { (void)layer; return false; }
  virtual void observe_hidden(int layer, const ForwardBatch& batch, const float* h, int dim) {
    (void)layer, (void)batch, (void)h, (void)dim;
  }

 protected:
  PolicyContext ctx_;
};

}  // namespace kvlab
