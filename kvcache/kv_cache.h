// The model-level cache: one object per decoding session, holding every layer's policy for a
// fixed number of sequence slots. The decoder drives it through one forward at a time:
//
//   ForwardBatch b = cache.plan(slots, counts)      validates slots and lengths
//   for l in 0..L-1:
//     if cache.wants_hidden(l): cache.observe_hidden(l, b, h)
//     cache.attend(l, b, q, k, v, out)
//   cache.commit(b)                                  policies compress / evict; lengths advance
//
// Each layer belongs to one Policy instance (kvcache/policy.h); the instances come from a
// policy spec (kvcache/policy_spec.h), so layers can mix policies. A cache serves one forward at
// a time (the policies use every core inside it); it is not safe to call from several threads.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "attention/observer.h"
#include "attention/rope.h"
#include "base/status.h"
#include "kvcache/memory.h"
#include "kvcache/policy.h"
#include "kvcache/policy_spec.h"

namespace kvlab {

// Receives the residual stream entering the layers it wants (calibration: the features of a
// learned decider), beside the policies that want it.
class HiddenObserver {
 public:
  virtual ~HiddenObserver() = default;
  virtual bool wants(int layer) const = 0;
  //   h: [n_rows, dim]
  virtual void observe(int layer, const ForwardBatch& batch, const float* h, int dim) const = 0;
};

class KvCache {
 public:
  // `rope` must outlive the cache (the model owns it).
  static StatusOr<std::unique_ptr<KvCache>> create(const KvGeometry& geometry, const RopeTable* rope,
                                                   std::string_view spec, int max_seqs);
  // Reads a file written by save() into a new cache. The geometry must be the model's; the spec
  // and slot count come from the file. Bad magic, another version, another model shape or a
  // truncated file are errors; nothing is modified on failure.
  static StatusOr<std::unique_ptr<KvCache>> restore(const std::string& path, const KvGeometry& geometry,
                                                    const RopeTable* rope);
  ~KvCache();

  const KvGeometry& geometry() const { return geometry_; }
  int max_seqs() const { return max_seqs_; }
  const std::string& spec() const { return spec_; }
  const std::vector<LayerAssignment>& layout() const { return layout_; }

  // --- one forward ---
  // Plans a forward appending counts[i] >= 1 tokens to slot seqs[i] (distinct slots). Errors: a
  // slot out of range or repeated, a zero count, a sequence that would pass max_seq_len.
  StatusOr<ForwardBatch> plan(std::span<const int> seqs, std::span<const int> counts) const;
  bool wants_hidden(int layer) const;
  //   h: [n_rows, dim] residual stream entering `layer`
  void observe_hidden(int layer, const ForwardBatch& batch, const float* h, int dim);
  // See Policy::attend: q post-RoPE [n_rows, q_dim], k pre-RoPE and v [n_rows, kv_dim].
  void attend(int layer, const ForwardBatch& batch, const float* q, const float* k, const float* v,
              float* out);
  void commit(const ForwardBatch& batch);

  // --- sequences ---
  int seq_length(int seq) const { return lengths_[seq]; }  // tokens written = next position
  int stored_tokens(int layer, int seq) const;
  // Keeps the first n_tokens positions of `seq` (0 <= n_tokens <= seq_length(seq)).
  Status crop(int seq, int n_tokens);
  void reset(int seq);
  void reset_all();
  LayerContents read(int layer, int seq) const;

  // Bytes held, by kind (kvcache/memory.h); K/V state is memory().kv_bytes().
  MemoryReport memory() const { return ledger_.report(); }
  // What each policy instance decided ("L0-29": {...}), for the evaluation's JSON; instances
  // with nothing to say are left out.
  JsonObject report() const;
  // Writes all slots to `path` (atomically: a temporary file and a rename).
  Status save(const std::string& path) const;

  // Receives attention probabilities of the queries it wants (null: none).
  void set_observer(const AttentionObserver* observer) { observer_ = observer; }
  void set_hidden_observer(const HiddenObserver* observer) { hidden_observer_ = observer; }

 private:
  KvCache() = default;
  Policy& policy_of(int layer) const { return *layer_policy_[layer]; }

  KvGeometry geometry_;
  int max_seqs_ = 0;
  std::string spec_;
  std::vector<LayerAssignment> layout_;
  MemoryLedger ledger_;  // declared before the policies: they return memory to it when destroyed
  const AttentionObserver* observer_ = nullptr;
  const HiddenObserver* hidden_observer_ = nullptr;
  std::vector<std::unique_ptr<Policy>> policies_;  // one per layout_ entry
  std::vector<Policy*> layer_policy_;              // [n_layers]
  std::vector<int> lengths_;                       // [max_seqs]
};

}  // namespace kvlab
