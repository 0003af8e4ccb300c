// Observers of attention probabilities. A policy that decides what to keep from attention
// (LightTransfer's lazy-layer test, H2O's accumulated scores) or an evaluation tool (attention
// error) asks the attention engine for the probabilities of some queries.
#pragma once

#include <cstdint>
#include <span>

namespace kvlab {

class AttentionObserver {
 public:
  virtual ~AttentionObserver() = default;
  // Whether the probabilities of the query at `query_pos` of slot `seq` in `layer` are wanted.
  virtual bool wants(int layer, int seq, int32_t query_pos) const = 0;
  // One query head's probabilities over every key it attended (history then new tokens), with
  // the keys' positions. Called serially after the forward's attention of that layer.
  virtual void observe(int layer, int seq, int32_t query_pos, int head, std::span<const float> probs,
                       std::span<const int32_t> key_positions) const = 0;
};

}  // namespace kvlab
