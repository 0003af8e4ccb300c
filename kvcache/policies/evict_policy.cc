// `evict`: score-based eviction of generated tokens in layers >= K, the baselines of decode
// sparsification (dynsparse_policy.cc) at equal bytes. ../shared/research/algorithms.md section 4.
//
// The protocol is dynsparse's: layers < K keep every token (an instance of `full`); in layers
// >= K every prompt token is kept (a forward of more than one token, or a sequence's first
// forward, is prompt) and a generated token (a one-token forward after the prompt) is stored, then
// evicted down to a budget of ceil(keep * G) generated tokens, G = the sequence's generated tokens
// so far, current one included. So at every step a layer >= K holds as many generated tokens as
// dynsparse at the same keep keeps on average, in the same pages. Eviction happens in commit(),
// after the forward, per layer and per sequence (the new token has attended to itself and to
// everything stored), removing the lowest-scored stored generated tokens:
//
//   h2o     H2O (Zhang et al. 2023): the attention probability the token has received, summed
//           over the layer's query heads and every query since it was stored (its own step
//           included); the newest min(recent, budget) stored generated tokens are never evicted.
//   tova    TOVA (Oren et al. 2024): the probability from the current query, averaged over the
//           layer's query heads; the token just written is a candidate too.
//   recent  the oldest generated token (StreamingLLM's window over the generated tokens only).
//   random, knorm, probe, mlp
//           the dynsparse deciders' score (kvcache/dynsparse_decider.h, TokenScorer), given once
//           when the token enters layer K and never changed: dynsparse's decide-once from the
//           same information, applied late. dynsparse drops half of the newest tokens, which the
//           next queries need most (rel_ppl +220-480% on SmolLM2, docs/results.md); here the
//           newest min(recent, budget) generated tokens are never evicted, as with h2o, and the
//           lowest-scored older ones go first. Not in the Dynamic-LLaVA paper: our variant.
//
// The probabilities come from an AttentionObserver that the policy puts between the attention
// engine and the cache's own observer (as lighttransfer does); it asks only for the generated
// queries of layers >= K, and the engine computes them inside attend(), so their cost is part of
// this policy's attention time. recent, the decider scores and keep=1 observe nothing.
//
// Storage in layers >= K: per (layer, sequence) a dense store of exact tokens (f32, f16 or bf16,
// keys post-RoPE) in slots 0..n-1, laid out as the full cache's ring (kvcache/token_ring.h):
// pages of P = ring_page_tokens(max_seq_len) slots, [n_kv_heads][K: P x head_dim | V: P x
// head_dim] elements, allocated when first used. An evicted slot takes the last slot's token (the
// order of keys does not matter to softmax; each slot has its position), and a page is freed when
// the last slot leaves it, so bytes follow the stored tokens. With nothing evicted (keep = 1) the
// attention engine sees the full cache's blocks, hence its summation order: `full` bit for bit.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <string>
#include <vector>

#include "base/check.h"
#include "kernels/cpu/kv_quantize.h"
#include "kvcache/dynsparse_decider.h"
#include "kvcache/formats.h"
#include "kvcache/policies/batch_attention.h"
#include "kvcache/policies/policies.h"
#include "kvcache/token_ring.h"

namespace kvlab {
namespace {

constexpr uint32_t kStateVersion = 1;

enum class Score { kH2o, kTova, kRecent, kDecider };

struct EvictConfig {
  double keep = 0.5;
  int layer = 2;
  Score score = Score::kH2o;
  int recent = 32;
  KvFormat dtype = KvFormat::kF16;
  TokenScorer scorer;  // kDecider
};

class EvictPolicy final : public Policy {
 public:
  EvictPolicy(const PolicyContext& ctx, EvictConfig cfg)
      : Policy(ctx),
        cfg_(std::move(cfg)),
        page_tokens_(ring_page_tokens(ctx.geometry.max_seq_len)),
        elem_bytes_(int64_t(ctx.geometry.head_dim) * element_bytes(cfg_.dtype)),
        page_bytes_(2 * int64_t(ctx.geometry.n_kv_heads) * page_tokens_ * elem_bytes_),
        observer_(this) {
    hi_ctx_ = ctx;
    hi_ctx_.observer = &observer_slot_;
    seqs_.reserve(size_t(ctx.max_seqs));
    for (int s = 0; s < ctx.max_seqs; ++s) seqs_.emplace_back(ctx.ledger);
    const size_t n_stores = size_t(ctx.last_layer - cfg_.layer + 1) * ctx.max_seqs;
    stores_.reserve(n_stores);
    for (size_t i = 0; i < n_stores; ++i) stores_.emplace_back(ctx.ledger);
    side_bytes_ = cfg_.scorer.n_params() * int64_t(sizeof(float));
    ctx_.ledger->add(MemoryKind::kSide, side_bytes_);
  }
  ~EvictPolicy() override { ctx_.ledger->sub(MemoryKind::kSide, side_bytes_); }

  // Layers < K: the full cache in the store's element type.
  Status init() {
    if (cfg_.layer == ctx_.first_layer) return Status::Ok();
    KVLAB_ASSIGN_OR_RETURN(const PolicySpec full, parse_policy_spec(std::string("full:dtype=") + format_name(cfg_.dtype)));
    PolicyContext c = ctx_;
    c.last_layer = cfg_.layer - 1;
    c.spec_text = full.text;
    KVLAB_ASSIGN_OR_RETURN(lo_, find_policy("full")->make(c, full.params));
    return Status::Ok();
  }

  void attend(int layer, const ForwardBatch& batch, const float* q, const float* k, const float* v,
              float* out) override {
    if (layer < cfg_.layer) return lo_->attend(layer, batch, q, k, v, out);
    if (layer == cfg_.layer) {
      for (const SeqSpan& sp : batch.seqs) {
        Seq& s = seqs_[size_t(sp.seq)];
        s.step_pos = TokenScorer::generated(sp) ? sp.start_pos : -1;
        //   k: pre-RoPE keys of layer K, [n_rows, kv_dim]
        if (s.step_pos >= 0 && cfg_.score == Score::kDecider) {
          s.step_score = cfg_.scorer.score(sp.row, k + size_t(sp.row) * ctx_.geometry.kv_dim(), uint64_t(s.count()));
        }
      }
    }
    std::vector<History> histories;
    histories.reserve(batch.seqs.size());
    std::vector<const KvHistory*> views;
    for (const SeqSpan& sp : batch.seqs) {
      KVLAB_CHECK(sp.store);  // the registry entry does not claim stores_selectively
      Store& st = store(layer, sp.seq);
      // The observer adds this step's probabilities to the scores (TOVA: replaces them); a
      // decider's score is the token's own from layer K.
      st.new_score = cfg_.score == Score::kDecider ? seqs_[size_t(sp.seq)].step_score : 0;
      if (cfg_.score == Score::kTova && observing(sp.seq, sp.start_pos)) std::fill(st.scores.begin(), st.scores.end(), 0.0f);
      histories.emplace_back(this, &st);
      views.push_back(&histories.back());
    }
    const std::vector<float> k_rot = attend_batch(hi_ctx_, layer, batch, q, k, v, out, views);
    const int kv_dim = ctx_.geometry.kv_dim();
    for (const SeqSpan& sp : batch.seqs) {
      Store& st = store(layer, sp.seq);
      const bool generated = seqs_[size_t(sp.seq)].step_pos >= 0;
      for (int t = 0; t < sp.n_new; ++t) {
        const size_t row = size_t(sp.row + t);
        append(st, k_rot.data() + row * kv_dim, v + row * kv_dim, batch.positions[row], st.new_score);
      }
      st.n_generated += generated;
    }
  }

  void commit(const ForwardBatch& batch) override {
    if (lo_) lo_->commit(batch);
    cfg_.scorer.clear();
    for (const SeqSpan& sp : batch.seqs) {
      Seq& s = seqs_[size_t(sp.seq)];
      if (s.step_pos >= 0) {
        add_generated(s, s.step_pos);
        ++generated_;
      }
      s.step_pos = -1;
      const int64_t budget = generated_budget(s);
      for (int l = cfg_.layer; l <= ctx_.last_layer; ++l) {
        Store& st = store(l, sp.seq);
        while (st.n_generated > budget) {
          remove(st, s, victim(st, s, budget));
          ++evicted_;
        }
      }
    }
  }

  int stored_tokens(int layer, int seq) const override {
    return layer < cfg_.layer ? lo_->stored_tokens(layer, seq) : int(store(layer, seq).positions.size());
  }

  // Removes the stored tokens at positions >= n and the generated positions there. Nothing else
  // is evicted here (the tokens before the cut stay as they were): if the budget of the shorter
  // sequence is below what is stored, the next commit evicts down to it.
  Status crop(int seq, int n) override {
    if (lo_) KVLAB_RETURN_IF_ERROR(lo_->crop(seq, n));
    Seq& s = seqs_[size_t(seq)];
    for (int l = cfg_.layer; l <= ctx_.last_layer; ++l) {
      Store& st = store(l, seq);
      // Downwards: the last slot, moved into a removed one, has already been kept.
      for (int i = int(st.positions.size()) - 1; i >= 0; --i) {
        if (st.positions[size_t(i)] >= n) remove(st, s, i);
      }
    }
    // Generated runs: drop those from n on, cut the one across n.
    auto& r = s.generated;
    size_t keep = 0;
    while (keep < r.size() && r[keep] < n) keep += 2;
    r.resize(keep);
    if (keep) r[keep - 1] = std::min(r[keep - 1], n);
    if (r.empty()) r.shrink_to_fit();
    return Status::Ok();
  }

  void reset(int seq) override {
    if (lo_) lo_->reset(seq);
    for (int l = cfg_.layer; l <= ctx_.last_layer; ++l) store(l, seq) = Store(ctx_.ledger);
    seqs_[size_t(seq)] = Seq(ctx_.ledger);
  }

  LayerContents read(int layer, int seq) const override {
    if (layer < cfg_.layer) return lo_->read(layer, seq);
    const Store& st = store(layer, seq);
    std::vector<int> order(st.positions.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = int(i);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return st.positions[size_t(a)] < st.positions[size_t(b)]; });
    const KvGeometry& g = ctx_.geometry;
    LayerContents c;
    for (int i : order) {
      auto [k, v] = c.append(st.positions[size_t(i)], g.kv_dim());
      for (int h = 0; h < g.n_kv_heads; ++h) {
        KvBlock kb, vb;
        slot_blocks(st, i, h, &kb, &vb);
        dequantize_block(kb, k + size_t(h) * g.head_dim);
        dequantize_block(vb, v + size_t(h) * g.head_dim);
      }
    }
    return c;
  }

  // Per sequence its generated runs; per (layer >= K, sequence) its positions, scores and the
  // packed bytes of each slot, kv head after kv head (K then V); then the layers < K.
  void save(BinaryWriter& out) const override {
    out.put<uint32_t>(kStateVersion);
    for (const Seq& s : seqs_) out.put_array(s.generated.data(), s.generated.size());
    for (const Store& st : stores_) {
      out.put_array(st.positions.data(), st.positions.size());
      out.put_array(st.scores.data(), st.scores.size());
      for (int i = 0; i < int(st.positions.size()); ++i) {
        for (int h = 0; h < ctx_.geometry.n_kv_heads; ++h) {
          out.put_bytes(key(st, i, h), size_t(elem_bytes_));
          out.put_bytes(value(st, i, h), size_t(elem_bytes_));
        }
      }
    }
    if (lo_) lo_->save(out);
  }

  Status load(BinaryReader& in) override {
    KVLAB_RETURN_IF_ERROR(in.expect_version(kStateVersion, "evict state"));
    const int32_t context = ctx_.geometry.max_seq_len;
    for (Seq& s : seqs_) {
      Seq r(ctx_.ledger);
      KVLAB_RETURN_IF_ERROR(in.get_array(&r.generated));
      // Runs [from, to): non-empty, ascending, apart, inside the context.
      bool ok = r.generated.size() % 2 == 0;
      for (size_t i = 0; ok && i < r.generated.size(); ++i) {
        const int32_t lo = i ? r.generated[i - 1] : 0;
        ok = r.generated[i] >= lo && r.generated[i] <= context && (i % 2 == 0 || r.generated[i] > lo);
      }
      if (!ok) return data_loss(in.what() + ": bad evict generated runs");
      s = std::move(r);
    }
    const size_t stores_per_layer = size_t(ctx_.max_seqs);
    for (size_t j = 0; j < stores_.size(); ++j) {
      const Seq& s = seqs_[j % stores_per_layer];
      Store st(ctx_.ledger);
      KVLAB_RETURN_IF_ERROR(in.get_array(&st.positions));
      KVLAB_RETURN_IF_ERROR(in.get_array(&st.scores, cfg_.score == Score::kRecent ? 0 : int64_t(st.positions.size())));
      std::vector<int32_t> sorted(st.positions.begin(), st.positions.end());
      std::sort(sorted.begin(), sorted.end());
      if (sorted.size() > size_t(context) || (!sorted.empty() && (sorted.front() < 0 || sorted.back() >= context)) ||
          std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
        return data_loss(in.what() + ": bad evict store positions");
      }
      const int n = int(st.positions.size());
      st.pages.reserve(size_t((n + page_tokens_ - 1) / page_tokens_));
      for (int i = 0; i < n; ++i) {
        if (i % page_tokens_ == 0) st.pages.emplace_back(size_t(page_bytes_), uint8_t(0), page_allocator());
        for (int h = 0; h < ctx_.geometry.n_kv_heads; ++h) {
          KVLAB_RETURN_IF_ERROR(in.get_bytes(key(st, i, h), size_t(elem_bytes_)));
          KVLAB_RETURN_IF_ERROR(in.get_bytes(value(st, i, h), size_t(elem_bytes_)));
        }
        st.n_generated += s.generated_at(st.positions[size_t(i)]);
      }
      stores_[j] = std::move(st);
    }
    return lo_ ? lo_->load(in) : Status::Ok();
  }

  // Over every sequence since the policy was made: generated tokens written, and evictions summed
  // over the evicting layers (divide by evicting_layers for the tokens one layer evicted).
  void report(JsonObject& out) const override {
    out.add("generated_tokens", generated_)
        .add("evicted_tokens", evicted_)
        .add("evicting_layers", int64_t(ctx_.last_layer - cfg_.layer + 1));
    cfg_.scorer.report(out);
  }

  bool wants_hidden(int layer) const override {
    return learned(layer) || (lo_ && layer < cfg_.layer && lo_->wants_hidden(layer));
  }
  //   h: [n_rows, dim] the residual stream entering `layer`
  void observe_hidden(int layer, const ForwardBatch& batch, const float* h, int dim) override {
    if (learned(layer)) cfg_.scorer.observe(batch, h, dim);
    if (lo_ && layer < cfg_.layer && lo_->wants_hidden(layer)) lo_->observe_hidden(layer, batch, h, dim);
  }

 private:
  // Per sequence: which positions are generated, and this forward's generated token.
  struct Seq {
    explicit Seq(MemoryLedger* ledger) : generated(tracked<int32_t>(ledger, MemoryKind::kIndex)) {}
    // Ascending runs [from, to) of generated positions, flattened: from0, to0, from1, to1, ...
    // (a decode is one run; a prompt chunk fed after generated tokens starts another).
    TrackedVector<int32_t> generated;
    int32_t step_pos = -1;  // position of this forward's generated token; -1: none
    float step_score = 0;   // its decider score (score=decider choices)

    int64_t count() const {
      int64_t g = 0;
      for (size_t i = 0; i < generated.size(); i += 2) g += generated[i + 1] - generated[i];
      return g;
    }
    bool generated_at(int32_t pos) const {
      // The first run end above pos; pos is inside that run iff its start is <= pos.
      const auto it = std::upper_bound(generated.begin(), generated.end(), pos);
      return (it - generated.begin()) % 2 == 1;
    }
  };

  using Page = TrackedVector<uint8_t>;  // [n_kv_heads][K: P x head_dim | V: P x head_dim] elements

  // One (layer >= K, sequence): n tokens in slots 0..n-1, in no particular order.
  struct Store {
    explicit Store(MemoryLedger* ledger)
        : pages(TrackedAllocator<Page>(ledger, MemoryKind::kIndex)),
          positions(tracked<int32_t>(ledger, MemoryKind::kMeta)),
          scores(tracked<float>(ledger, MemoryKind::kMeta)) {}
    TrackedVector<Page> pages;         // [ceil(n / P)] each page_bytes_ (kPayload)
    TrackedVector<int32_t> positions;  // [n]
    TrackedVector<float> scores;       // [n] h2o / tova / deciders (prompt slots: unused); recent: empty
    int n_generated = 0;               // slots holding generated tokens
    float new_score = 0;               // the token being written: its score in this step
  };

  // A store's pages as attention blocks; the engine reads the positions with each block.
  class History final : public KvHistory {
   public:
    History(const EvictPolicy* p, const Store* s) : p_(p), s_(s) {}
    int n_blocks() const override { return int(s_->pages.size()); }
    HistoryBlock block(int b, int kv_head) const override {
      HistoryBlock hb;
      const int first = b * p_->page_tokens_;
      p_->slot_blocks(*s_, first, kv_head, &hb.k, &hb.v);
      hb.k.n = hb.v.n = std::min(p_->page_tokens_, int(s_->positions.size()) - first);
      hb.positions = s_->positions.data() + first;
      return hb;
    }

   private:
    const EvictPolicy* p_;
    const Store* s_;
  };

  // Passes the cache's observer through and collects the scores of the generated queries.
  class Observer final : public AttentionObserver {
   public:
    explicit Observer(EvictPolicy* p) : p_(p) {}
    bool wants(int layer, int seq, int32_t pos) const override {
      return p_->observing(seq, pos) || (outer() && outer()->wants(layer, seq, pos));
    }
    //   probs: [n + 1] over the store's slots in order (History), then the new token
    void observe(int layer, int seq, int32_t pos, int head, std::span<const float> probs,
                 std::span<const int32_t> key_pos) const override {
      if (outer() && outer()->wants(layer, seq, pos)) outer()->observe(layer, seq, pos, head, probs, key_pos);
      if (!p_->observing(seq, pos)) return;
      Store& st = p_->store(layer, seq);
      const size_t n = st.positions.size();
      KVLAB_CHECK(probs.size() == n + 1 && key_pos[n] == pos);
      // H2O sums over the query heads, TOVA averages them.
      const float w = p_->cfg_.score == Score::kTova ? 1.0f / float(p_->ctx_.geometry.n_heads) : 1.0f;
      for (size_t j = 0; j < n; ++j) st.scores[j] += w * probs[j];
      st.new_score += w * probs[n];
    }

   private:
    const AttentionObserver* outer() const { return p_->ctx_.observer ? *p_->ctx_.observer : nullptr; }
    EvictPolicy* p_;
  };

  Store& store(int layer, int seq) { return stores_[size_t(layer - cfg_.layer) * ctx_.max_seqs + seq]; }
  const Store& store(int layer, int seq) const {
    return stores_[size_t(layer - cfg_.layer) * ctx_.max_seqs + seq];
  }
  TrackedAllocator<uint8_t> page_allocator() const { return TrackedAllocator<uint8_t>(ctx_.ledger, MemoryKind::kPayload); }
  bool learned(int layer) const { return layer == cfg_.layer && cfg_.keep < 1.0 && cfg_.scorer.learned(); }

  // Whether the query at `pos` of `seq` is this forward's generated token, and its probabilities
  // are needed (only layers >= K attend through the observer).
  bool observing(int seq, int32_t pos) const {
    return (cfg_.score == Score::kH2o || cfg_.score == Score::kTova) && cfg_.keep < 1.0 &&
           seqs_[size_t(seq)].step_pos == pos;
  }

  // ceil(keep * G); the small margin keeps 0.3 * 10 = 3.0000000000000004 at 3.
  int64_t generated_budget(const Seq& s) const { return int64_t(std::ceil(cfg_.keep * double(s.count()) - 1e-9)); }

  // Packed key and value of slot i, kv head h (TokenRing's page layout).
  uint8_t* key(Store& st, int i, int h) const {
    return st.pages[size_t(i / page_tokens_)].data() + (int64_t(h) * 2 * page_tokens_ + i % page_tokens_) * elem_bytes_;
  }
  const uint8_t* key(const Store& st, int i, int h) const { return key(const_cast<Store&>(st), i, h); }
  uint8_t* value(Store& st, int i, int h) const { return key(st, i, h) + int64_t(page_tokens_) * elem_bytes_; }
  const uint8_t* value(const Store& st, int i, int h) const { return value(const_cast<Store&>(st), i, h); }

  // Kv head h's key and value blocks of one token from slot i (callers widen n within the page).
  void slot_blocks(const Store& st, int i, int h, KvBlock* k, KvBlock* v) const {
    for (KvBlock* b : {k, v}) {
      *b = KvBlock();
      b->format = cfg_.dtype;
      b->n = 1;
      b->d = ctx_.geometry.head_dim;
      b->stride = elem_bytes_;
    }
    k->data = key(st, i, h);
    v->data = value(st, i, h);
  }

  //   k: [kv_dim] post-RoPE, v: [kv_dim]
  void append(Store& st, const float* k, const float* v, int32_t pos, float score) {
    const int i = int(st.positions.size());
    if (i % page_tokens_ == 0) st.pages.emplace_back(size_t(page_bytes_), uint8_t(0), page_allocator());
    const int d = ctx_.geometry.head_dim;
    for (int h = 0; h < ctx_.geometry.n_kv_heads; ++h) {
      quantize_token(cfg_.dtype, 0, 0, k + size_t(h) * d, d, key(st, i, h), nullptr, nullptr);
      quantize_token(cfg_.dtype, 0, 0, v + size_t(h) * d, d, value(st, i, h), nullptr, nullptr);
    }
    st.positions.push_back(pos);
    if (cfg_.score != Score::kRecent) st.scores.push_back(score);
  }

  // Slot i takes the last slot's token; a page the last slot leaves empty is freed.
  void remove(Store& st, const Seq& s, int i) {
    const int last = int(st.positions.size()) - 1;
    st.n_generated -= s.generated_at(st.positions[size_t(i)]);
    if (i != last) {
      for (int h = 0; h < ctx_.geometry.n_kv_heads; ++h) {
        std::memcpy(key(st, i, h), key(st, last, h), size_t(elem_bytes_));
        std::memcpy(value(st, i, h), value(st, last, h), size_t(elem_bytes_));
      }
      st.positions[size_t(i)] = st.positions[size_t(last)];
      if (!st.scores.empty()) st.scores[size_t(i)] = st.scores[size_t(last)];
    }
    st.positions.pop_back();
    if (!st.scores.empty()) st.scores.pop_back();
    if (last % page_tokens_ == 0) st.pages.pop_back();
    if (st.positions.empty()) st = Store(ctx_.ledger);  // an empty store holds no memory
  }

  // The slot to evict: the lowest score among the stored generated tokens (H2O and the
  // deciders: except the newest min(recent, budget)); recency: the lowest position. Ties go to
  // the lower slot.
  int victim(const Store& st, const Seq& s, int64_t budget) const {
    const int n = int(st.positions.size());
    int32_t protect_from = INT32_MAX;  // H2O: positions >= this are in the recent window
    if (cfg_.score == Score::kH2o || cfg_.score == Score::kDecider) {
      const int64_t r = std::min<int64_t>(cfg_.recent, budget);
      if (r > 0) {
        std::vector<int32_t> gen;  // [n_generated] positions of the stored generated tokens
        for (int i = 0; i < n; ++i) {
          if (s.generated_at(st.positions[size_t(i)])) gen.push_back(st.positions[size_t(i)]);
        }
        std::nth_element(gen.begin(), gen.begin() + (r - 1), gen.end(), std::greater<>());
        protect_from = gen[size_t(r - 1)];
      }
    }
    const auto lower = [&](int i, int j) {
      return cfg_.score == Score::kRecent ? st.positions[size_t(i)] < st.positions[size_t(j)]
                                          : st.scores[size_t(i)] < st.scores[size_t(j)];
    };
    int best = -1;
    for (int i = 0; i < n; ++i) {
      const int32_t p = st.positions[size_t(i)];
      if (p >= protect_from || !s.generated_at(p)) continue;
      if (best < 0 || lower(i, best)) best = i;
    }
    KVLAB_CHECK(best >= 0);  // more generated tokens are stored than the budget, which is >= r
    return best;
  }

  // Adds generated position `pos` (after every generated position so far) to the runs.
  static void add_generated(Seq& s, int32_t pos) {
    if (!s.generated.empty() && s.generated.back() == pos) {
      ++s.generated.back();
    } else {
      s.generated.push_back(pos);
      s.generated.push_back(pos + 1);
    }
  }

  EvictConfig cfg_;
  int page_tokens_;     // P: slots per page, as the full cache's ring of max_seq_len
  int64_t elem_bytes_;  // bytes of one head vector
  int64_t page_bytes_;
  std::unique_ptr<Policy> lo_;  // layers [first_layer, K): `full`; null when K == first_layer
  std::vector<Seq> seqs_;       // [max_seqs]
  std::vector<Store> stores_;   // [layers K..last_layer, max_seqs]
  Observer observer_;
  const AttentionObserver* observer_slot_ = &observer_;  // what attention in layers >= K reports to
  PolicyContext hi_ctx_;                                 // ctx_ with that observer
  int64_t generated_ = 0, evicted_ = 0;                  // report
  int64_t side_bytes_ = 0;                               // a learned decider's weights (kSide)
};

}  // namespace

PolicyInfo evict_policy_info() {
  PolicyInfo info;
  info.name = "evict";
  info.summary = "H2O / TOVA / recency eviction of generated tokens in layers >= K, to dynsparse's budget";
  std::vector<std::string> scores = {"h2o", "tova", "recent"};
  scores.insert(scores.end(), std::begin(TokenScorer::kChoices), std::end(TokenScorer::kChoices));  // kDecider
  info.params = {
      {"keep", ParamInfo::Kind::kFloat, "0.5", {}, 0, 1,
       "generated tokens kept in layers >= K: ceil(keep * generated so far) (> 0)"},
      {"layer", ParamInfo::Kind::kInt, "2", {}, 0, 1 << 20, "K: the first layer that evicts"},
      {"score", ParamInfo::Kind::kChoice, "h2o", scores, 0, 0,
       "h2o: accumulated attention; tova: the current query's attention; recent: the oldest goes; "
       "random, knorm, probe, mlp: dynsparse's decider score at layer K, lowest goes (probe, mlp: calib=FILE)"},
      {"recent", ParamInfo::Kind::kInt, "32", {}, 0, 1 << 20, "h2o and the deciders: newest generated tokens never evicted"},
      {"calib", ParamInfo::Kind::kString, "none", {}, 0, 0, "decider file from kvlab calibrate (score=probe, mlp)"},
      {"seed", ParamInfo::Kind::kInt, "1", {}, 0, 2147483647, "seed of score=random"},
      {"dtype", ParamInfo::Kind::kChoice, "f16", {"f32", "f16", "bf16"}, 0, 0, "element type of stored keys and values"},
  };
  info.make = [](const PolicyContext& ctx, const PolicyParams& p) -> StatusOr<std::unique_ptr<Policy>> {
    EvictConfig cfg;
    cfg.keep = p.get_float("keep");
    cfg.layer = p.get_int("layer");
    const std::string score = p.get("score");
    cfg.score = score == "h2o" ? Score::kH2o : score == "tova" ? Score::kTova : score == "recent" ? Score::kRecent : Score::kDecider;
    cfg.recent = p.get_int("recent");
    KVLAB_ASSIGN_OR_RETURN(cfg.dtype, parse_dense_format(p.get("dtype")));
    if (!(cfg.keep > 0)) {
      return invalid_argument("evict: keep=" + p.get("keep") + " keeps no generated token; keep is in (0, 1]");
    }
    if (cfg.layer < ctx.first_layer || cfg.layer > ctx.last_layer) {
      return invalid_argument("evict: layer=" + std::to_string(cfg.layer) + " is outside the layers " +
                              std::to_string(ctx.first_layer) + ".." + std::to_string(ctx.last_layer) +
                              " this policy covers");
    }
    const std::string calib = p.get("calib") == "none" ? "" : p.get("calib");
    if (cfg.score == Score::kDecider) {
      KVLAB_ASSIGN_OR_RETURN(cfg.scorer, TokenScorer::make("evict", score, calib, uint64_t(p.get_int("seed")), ctx.geometry,
                                                           cfg.layer));
    } else if (!calib.empty()) {
      return invalid_argument("evict: calib=FILE given with score=" + score + ", which learns nothing");
    }
    auto policy = std::make_unique<EvictPolicy>(ctx, std::move(cfg));
    KVLAB_RETURN_IF_ERROR(policy->init());
    return std::unique_ptr<Policy>(std::move(policy));
  };
  info.test_specs = {"evict:keep=0.3,layer=1,score=h2o,recent=4",
                     "evict:keep=0.5,layer=1,score=tova,dtype=f32",
                     "evict:keep=0.4,layer=1,score=recent,dtype=bf16",
                     "evict:keep=0.5,layer=1,score=knorm,recent=2",
                     "evict:keep=0.4,layer=1,score=mlp,calib={test_dir}/evict_mlp1.bin,recent=3"};
  info.prepare_test = [](const KvGeometry& g, const std::string& dir) -> Status {
    return DeciderFile::untrained(g, 1, DeciderKind::kMlp, 1).save(dir + "/evict_mlp1.bin");
  };
  info.off_spec = "evict:keep=1,dtype=f32";
  info.roundtrip_tolerance = [](const PolicyParams& p) {
    return dense_relative_error(parse_dense_format(p.get("dtype")).value());
  };
  return info;
}

}  // namespace kvlab
