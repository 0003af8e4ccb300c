#include "kvcache/policies/tiered_policy.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kvcache/policies/batch_attention.h"
#include "base/check.h"
#include "kvcache/token_ring.h"

namespace kvlab {
namespace {

constexpr uint32_t kStateVersion = 1;

class TieredPolicy final : public Policy {
 public:
  TieredPolicy(const PolicyContext& ctx, const TieredConfig& config) : Policy(ctx), cfg_(config) {
    const KvGeometry& g = ctx.geometry;
    if (cfg_.overflow != TieredConfig::Overflow::kCompress) {
      // No blocks are ever written; give the (empty) block store a format valid for any head.
      cfg_.k_format = cfg_.v_format = IntFormat{KvFormat::kIntToken, 8, g.head_dim};
    }
    const TieredConfig& cfg = cfg_;
    int recent_capacity = g.max_seq_len;
    if (cfg.overflow == TieredConfig::Overflow::kCompress) recent_capacity = std::min(g.max_seq_len, cfg.recent + cfg.chunk);
    if (cfg.overflow == TieredConfig::Overflow::kDrop) recent_capacity = std::min(g.max_seq_len, cfg.recent);
    const int n_slots = (ctx.last_layer - ctx.first_layer + 1) * ctx.max_seqs;
    slots_.reserve(size_t(n_slots));
    for (int i = 0; i < n_slots; ++i) {
      slots_.push_back(Slot{
          TokenRing(ctx.ledger, cfg.exact_kind, cfg.exact_format, g.n_kv_heads, g.head_dim, std::max(1, cfg.sink)),
          BlockStore(ctx.ledger, g.n_kv_heads, g.head_dim, cfg.block_tokens, cfg.k_format, cfg.v_format),
          TokenRing(ctx.ledger, cfg.exact_kind, cfg.exact_format, g.n_kv_heads, g.head_dim, std::max(1, recent_capacity)),
          0});
    }
  }

  void attend(int layer, const ForwardBatch& batch, const float* q, const float* k, const float* v,
              float* out) override {
    const int kv_dim = ctx_.geometry.kv_dim();
    std::vector<History> histories;
    histories.reserve(batch.seqs.size());
    std::vector<const KvHistory*> views;
    for (const SeqSpan& sp : batch.seqs) {
      const Slot& sl = slot(layer, sp.seq);
      KVLAB_CHECK(sl.next == sp.start_pos);
      histories.emplace_back(this, &sl);
      views.push_back(&histories.back());
    }
    // Keys are stored post-RoPE: rotated once, read many times.
    const std::vector<float> k_rot = attend_batch(ctx_, layer, batch, q, k, v, out, views);
    for (const SeqSpan& sp : batch.seqs) {
      if (!sp.store) continue;
      Slot& sl = slot(layer, sp.seq);
      for (int t = 0; t < sp.n_new; ++t) {
        write(sl, k_rot.data() + size_t(sp.row + t) * kv_dim, v + size_t(sp.row + t) * kv_dim);
      }
    }
  }

  int stored_tokens(int layer, int seq) const override {
    const Slot& sl = slot(layer, seq);
    return sl.sink.size() + sl.blocks.size() + sl.recent.size();
  }

  Status crop(int seq, int n) override {
    for (int l = ctx_.first_layer; l <= ctx_.last_layer; ++l) {
      Slot& sl = slot(l, seq);
      sl.sink.truncate(std::min(sl.sink.size(), n));
      sl.blocks.truncate(std::clamp(n - cfg_.sink, 0, sl.blocks.size()));
      const int recent_first = sl.next - sl.recent.size();
      sl.recent.truncate(std::clamp(n - recent_first, 0, sl.recent.size()));
      sl.next = std::min(sl.next, n);
    }
    return Status::Ok();
  }

  void reset(int seq) override {
    for (int l = ctx_.first_layer; l <= ctx_.last_layer; ++l) {
      Slot& sl = slot(l, seq);
      sl.sink.clear();
      sl.blocks.clear();
      sl.recent.clear();
      sl.next = 0;
    }
  }

  LayerContents read(int layer, int seq) const override {
    const Slot& sl = slot(layer, seq);
    const int kv_dim = ctx_.geometry.kv_dim();
    LayerContents c;
    c.reserve(sl.sink.size() + sl.blocks.size() + sl.recent.size(), kv_dim);
    auto take = [&](int32_t first_pos, const auto& store) {
      auto [k, v] = c.append(first_pos, kv_dim, store.size());
      store.read(0, store.size(), k, v);
    };
    take(0, sl.sink);
    take(cfg_.sink, sl.blocks);
    take(sl.next - sl.recent.size(), sl.recent);
    return c;
  }

  Status adopt(int layer, int seq, const LayerContents& c, int length) {
    KVLAB_CHECK(cfg_.overflow != TieredConfig::Overflow::kCompress);
    const int kv_dim = ctx_.geometry.kv_dim();
    Slot& sl = slot(layer, seq);
    sl.sink.clear();
    sl.blocks.clear();
    sl.recent.clear();
    sl.next = 0;
    const int n = int(c.positions.size());
    int i = 0;
    for (; i < n && c.positions[size_t(i)] < cfg_.sink; ++i) {
      if (c.positions[size_t(i)] != i) return invalid_argument("tiered_adopt: sink tokens must be positions 0, 1, ...");
      sl.sink.push(&c.k[size_t(i) * kv_dim], &c.v[size_t(i) * kv_dim]);
    }
    const int n_recent = n - i;
    const bool consecutive = n_recent == 0 || (c.positions.back() == length - 1 &&
                                               c.positions[size_t(i)] == length - n_recent);
    const int room = cfg_.overflow == TieredConfig::Overflow::kDrop ? cfg_.recent : sl.recent.capacity();
    if (!consecutive || n_recent > room || length < n) {
      sl.sink.clear();
      return invalid_argument("tiered_adopt: the tokens after the sink must be the last ones of the sequence and fit the ring");
    }
    // The ring as writing the sequence token by token would have left it (same slots, so the
    // same attention blocks and summation order as the streaming policy's).
    sl.recent.clear(std::max(0, length - cfg_.sink - n_recent));
    for (; i < n; ++i) sl.recent.push(&c.k[size_t(i) * kv_dim], &c.v[size_t(i) * kv_dim]);
    sl.next = length;
    return Status::Ok();
  }

  void save(BinaryWriter& out) const override {
    out.put<uint32_t>(kStateVersion);
    for (const Slot& sl : slots_) {
      out.put<int32_t>(sl.next);
      sl.sink.save(out);
      sl.blocks.save(out);
      sl.recent.save(out);
    }
  }

  Status load(BinaryReader& in) override {
    KVLAB_RETURN_IF_ERROR(in.expect_version(kStateVersion, "policy state"));
    for (Slot& sl : slots_) {
      int32_t next = 0;
      KVLAB_RETURN_IF_ERROR(in.get(&next));
      KVLAB_RETURN_IF_ERROR(sl.sink.load(in));
      KVLAB_RETURN_IF_ERROR(sl.blocks.load(in));
      KVLAB_RETURN_IF_ERROR(sl.recent.load(in));
      const int stored = sl.sink.size() + sl.blocks.size() + sl.recent.size();
      if (next < stored || next > ctx_.geometry.max_seq_len) return data_loss(in.what() + ": inconsistent slot lengths");
      sl.next = next;
    }
    return Status::Ok();
  }

 private:
  struct Slot {
    TokenRing sink;
    BlockStore blocks;
    TokenRing recent;
    int next = 0;  // position of the next token = tokens written to this slot
  };

  // A slot's tiers as attention blocks: sink runs, quantized blocks, recent runs.
  class History final : public KvHistory {
   public:
    History(const TieredPolicy* p, const Slot* s)
        : p_(p), s_(s), n_sink_(s->sink.n_runs()), n_blocks_(s->blocks.n_blocks()), n_recent_(s->recent.n_runs()) {}
    int n_blocks() const override { return n_sink_ + n_blocks_ + n_recent_; }
    HistoryBlock block(int b, int kv_head) const override {
      HistoryBlock hb;
      int first = 0;
      if (b < n_sink_) {
        s_->sink.run(b, kv_head, &hb.k, &hb.v, &first);
        hb.first_pos = first;
      } else if (b < n_sink_ + n_blocks_) {
        s_->blocks.block(b - n_sink_, kv_head, &hb.k, &hb.v, &first);
        hb.first_pos = p_->cfg_.sink + first;
      } else {
        s_->recent.run(b - n_sink_ - n_blocks_, kv_head, &hb.k, &hb.v, &first);
        hb.first_pos = s_->next - s_->recent.size() + first;
      }
      return hb;
    }

   private:
    const TieredPolicy* p_;
    const Slot* s_;
    int n_sink_, n_blocks_, n_recent_;
  };

  Slot& slot(int layer, int seq) { return slots_[size_t(layer - ctx_.first_layer) * ctx_.max_seqs + seq]; }
  const Slot& slot(int layer, int seq) const {
    return slots_[size_t(layer - ctx_.first_layer) * ctx_.max_seqs + seq];
  }

  // Stores one token (k post-RoPE) at position sl.next.
  void write(Slot& sl, const float* k, const float* v) {
    ++sl.next;
    if (sl.sink.size() < cfg_.sink) {
      sl.sink.push(k, v);
      return;
    }
    if (cfg_.overflow == TieredConfig::Overflow::kDrop && sl.recent.size() == cfg_.recent) {
      sl.recent.pop_front(1);
    }
    sl.recent.push(k, v);
    if (cfg_.overflow == TieredConfig::Overflow::kCompress && sl.recent.size() >= cfg_.recent + cfg_.chunk) {
      // The oldest chunk of the recent tier, as stored (the exact format), becomes a block.
      const int kv_dim = ctx_.geometry.kv_dim();
      std::vector<float> ck(size_t(cfg_.chunk) * kv_dim), cv(ck.size());
      sl.recent.read(0, cfg_.chunk, ck.data(), cv.data());
      sl.blocks.append(ck.data(), cv.data(), cfg_.chunk, kv_dim);
      sl.recent.pop_front(cfg_.chunk);
    }
  }

  TieredConfig cfg_;
  std::vector<Slot> slots_;  // [layers of the range, max_seqs]; fixed at construction
};

}  // namespace

std::unique_ptr<Policy> make_tiered_policy(const PolicyContext& ctx, const TieredConfig& config) {
  return std::make_unique<TieredPolicy>(ctx, config);
}

TieredConfig streaming_config(KvFormat format, int sink, int window) {
  TieredConfig cfg;
  cfg.exact_format = format;
  cfg.exact_kind = MemoryKind::kPayload;
  cfg.sink = sink;
  cfg.recent = window;
  cfg.overflow = TieredConfig::Overflow::kDrop;
  return cfg;
}

Status tiered_adopt(Policy& policy, int layer, int seq, const LayerContents& tokens, int length) {
  auto* tiered = dynamic_cast<TieredPolicy*>(&policy);
  KVLAB_CHECK(tiered != nullptr);
  return tiered->adopt(layer, seq, tokens, length);
}

}  // namespace kvlab
