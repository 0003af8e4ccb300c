// `lighttransfer` (LightTransfer, Zhang et al. 2025, and its v1 SimLayerKV): per sequence, the
// layers whose attention is "lazy" become StreamingLLM layers, the others keep a base policy.
// ../shared/research/algorithms.md section 3.
//
// Lazy score of layer l (3.2), from the attention probabilities a_h(j) of identification queries
// at positions t, averaged over query heads and queries:
//   r_l = mean [ sum_{j < S} a_h(j) + sum_{j > t - W} a_h(j) ]
// i.e. the attention mass that a sink + window layer would still see. The queries are
//   ident=prefill  the last `queries` queries of the sequence's first forward (its prompt);
//   ident=decode   the first query after the prompt (SimLayerKV's setting).
// A prompt of at most S + W tokens compresses nothing (every score would be 1); the report counts
// such sequences.
//
// Rules (3.3): ratio (LightTransfer: the round(rho * L) laziest layers), threshold (SimLayerKV:
// r_l > tau; tau = 0 is StreamingLLM in every layer), and the baselines random (a fixed seed),
// first and last (round(rho * L) layers each, whatever their scores).
//
// A layer is converted as soon as it is decided, right after its attention in the identifying
// forward: its base storage gives up the first S and the last W tokens to a sink + ring store
// and is freed. The ratio rule decides with a priority queue of the layers kept so far: when it
// is full, the lazier of the new layer and the laziest queued one is converted at once, so no
// more than (1 - rho) L + 1 layers ever hold the whole prompt (report: peak_kv_bytes).
// Lazy layers keep their tokens' original positions (keys post-RoPE) and, once the ring is full,
// a constant number of bytes however long the decode.
//
// Each layer has its own instance of the base policy and of the streaming store, because the
// lazy set differs per sequence and a lazy layer's base storage is freed per sequence. Bases
// whose state spans layers (AQUA-KV's predictor chain, xKV groups) are refused.
#include <algorithm>
#include <cmath>
#include <random>

#include "base/check.h"
#include "kvcache/formats.h"
#include "kvcache/policies/policies.h"
#include "kvcache/policies/tiered_policy.h"

namespace kvlab {
namespace {

constexpr uint32_t kStateVersion = 1;

enum class Rule { kRatio, kThreshold, kRandom, kFirst, kLast };

struct LightTransferConfig {
  Rule rule = Rule::kRatio;
  double rho = 0.5, tau = 0.9;
  int sink = 4, window = 1024, queries = 32;
  bool ident_decode = false;
  uint32_t seed = 1;
  KvFormat dtype = KvFormat::kF16;
  PolicySpec base;
};

// Rows of a forward batch that belong to some of its sequences, gathered into arrays of their
// own (a policy's attend() and commit() see only its sequences).
struct SubBatch {
  ForwardBatch batch;
  std::vector<int> rows;  // [n_rows of batch]: the row of the full batch each row came from
};

SubBatch sub_batch(const ForwardBatch& full, const std::vector<int>& which) {
  SubBatch s;
  for (int i : which) {
    SeqSpan sp = full.seqs[size_t(i)];
    const int from = sp.row;
    sp.row = s.batch.n_rows();
    s.batch.seqs.push_back(sp);
    for (int t = 0; t < sp.n_new; ++t) {
      s.batch.positions.push_back(full.positions[size_t(from + t)]);
      s.rows.push_back(from + t);
    }
  }
  return s;
}

std::vector<float> gather_rows(const float* x, int width, const std::vector<int>& rows) {
  std::vector<float> out(rows.size() * size_t(width));
  for (size_t r = 0; r < rows.size(); ++r) {
    std::copy_n(x + size_t(rows[r]) * width, width, out.data() + r * width);
  }
  return out;
}

class LightTransferPolicy final : public Policy {
 public:
  LightTransferPolicy(const PolicyContext& ctx, LightTransferConfig cfg)
      : Policy(ctx), cfg_(std::move(cfg)), observer_(this) {
    const int L = n_layers();
    n_lazy_ = int(std::lround(cfg_.rho * L));
    // The fixed baseline sets: round(rho * L) layers by index.
    std::vector<int> order(static_cast<size_t>(L));
    for (int i = 0; i < L; ++i) order[size_t(i)] = i;
    if (cfg_.rule == Rule::kRandom) {
      std::mt19937 rng(cfg_.seed);
      for (int i = L - 1; i > 0; --i) std::swap(order[size_t(i)], order[size_t(rng() % uint32_t(i + 1))]);
    }
    if (cfg_.rule == Rule::kLast) std::reverse(order.begin(), order.end());
    fixed_lazy_.assign(size_t(L), 0);
    for (int i = 0; i < n_lazy_; ++i) fixed_lazy_[size_t(order[size_t(i)])] = 1;

    lazy_.assign(size_t(L) * ctx.max_seqs, 0);
    seqs_.resize(size_t(ctx.max_seqs));
    score_sum_.assign(size_t(L), 0.0);
    chosen_.assign(size_t(L), 0);
  }

  // Builds the per-layer instances; fails on a base that cannot run one layer at a time.
  Status init() {
    const PolicyInfo* info = find_policy(cfg_.base.name);
    for (int l = ctx_.first_layer; l <= ctx_.last_layer; ++l) {
      PolicyContext c = ctx_;
      c.first_layer = c.last_layer = l;
      c.observer = &observer_slot_;
      c.spec_text = cfg_.base.text;
      KVLAB_ASSIGN_OR_RETURN(auto base, info->make(c, cfg_.base.params));
      base_.push_back(std::move(base));
      stream_.push_back(make_tiered_policy(c, streaming_config(cfg_.dtype, cfg_.sink, cfg_.window)));
    }
    return Status::Ok();
  }

  void attend(int layer, const ForwardBatch& batch, const float* q, const float* k, const float* v,
              float* out) override {
    if (layer == ctx_.first_layer) begin_forward(batch);
    const int i = idx(layer);
    std::vector<int> to_base, to_stream;
    for (size_t s = 0; s < batch.seqs.size(); ++s) {
      (is_lazy(layer, batch.seqs[s].seq) ? to_stream : to_base).push_back(int(s));
    }
    attend_some(*base_[size_t(i)], layer, batch, to_base, q, k, v, out);
    attend_some(*stream_[size_t(i)], layer, batch, to_stream, q, k, v, out);
    for (const SeqSpan& sp : batch.seqs) {
      if (seqs_[size_t(sp.seq)].identifying()) decide(layer, sp.seq);
    }
  }

  void commit(const ForwardBatch& batch) override {
    for (int l = ctx_.first_layer; l <= ctx_.last_layer; ++l) {
      std::vector<int> to_base, to_stream;
      for (size_t s = 0; s < batch.seqs.size(); ++s) {
        (is_lazy(l, batch.seqs[s].seq) ? to_stream : to_base).push_back(int(s));
      }
      if (!to_base.empty()) base_[size_t(idx(l))]->commit(sub_batch(batch, to_base).batch);
      if (!to_stream.empty()) stream_[size_t(idx(l))]->commit(sub_batch(batch, to_stream).batch);
    }
    for (const SeqSpan& sp : batch.seqs) {
      Seq& s = seqs_[size_t(sp.seq)];
      if (!s.identifying()) continue;
      ++identified_;
      s = Seq{};  // frees the identification's scratch: nothing stays allocated off the ledger
      s.phase = Phase::kDone;
    }
  }

  int stored_tokens(int layer, int seq) const override { return owner(layer, seq).stored_tokens(layer, seq); }

  Status crop(int seq, int n) override {
    if (n == 0) {
      reset(seq);
      return Status::Ok();
    }
    for (int i = 0; i < n_layers(); ++i) {
      KVLAB_RETURN_IF_ERROR(base_[size_t(i)]->crop(seq, n));
      KVLAB_RETURN_IF_ERROR(stream_[size_t(i)]->crop(seq, n));
    }
    return Status::Ok();
  }

  void reset(int seq) override {
    for (int i = 0; i < n_layers(); ++i) {
      base_[size_t(i)]->reset(seq);
      stream_[size_t(i)]->reset(seq);
      lazy_[flag(i, seq)] = 0;
    }
    seqs_[size_t(seq)] = Seq{};
  }

  LayerContents read(int layer, int seq) const override { return owner(layer, seq).read(layer, seq); }

  void save(BinaryWriter& out) const override {
    out.put<uint32_t>(kStateVersion);
    for (const Seq& s : seqs_) out.put<uint8_t>(uint8_t(s.phase));
    for (uint8_t f : lazy_) out.put<uint8_t>(f);
    for (int i = 0; i < n_layers(); ++i) {
      base_[size_t(i)]->save(out);
      stream_[size_t(i)]->save(out);
    }
  }

  Status load(BinaryReader& in) override {
    KVLAB_RETURN_IF_ERROR(in.expect_version(kStateVersion, "lighttransfer state"));
    for (Seq& s : seqs_) {
      uint8_t phase = 0;
      KVLAB_RETURN_IF_ERROR(in.get(&phase));
      if (phase > uint8_t(Phase::kDone)) return data_loss(in.what() + ": bad lighttransfer sequence phase");
      s = Seq{};
      s.phase = Phase(phase);
    }
    for (uint8_t& f : lazy_) {
      KVLAB_RETURN_IF_ERROR(in.get(&f));
      if (f > 1) return data_loss(in.what() + ": bad lighttransfer layer flag");
    }
    for (int i = 0; i < n_layers(); ++i) {
      KVLAB_RETURN_IF_ERROR(base_[size_t(i)]->load(in));
      KVLAB_RETURN_IF_ERROR(stream_[size_t(i)]->load(in));
    }
    return Status::Ok();
  }

  void report(JsonObject& out) const override {
    const int L = n_layers();
    std::vector<double> mean_score(static_cast<size_t>(L)), chosen(static_cast<size_t>(L));
    double lazy_per_seq = 0;
    for (int i = 0; i < L; ++i) {
      mean_score[size_t(i)] = identified_ ? score_sum_[size_t(i)] / double(identified_) : 0.0;
      chosen[size_t(i)] = identified_ ? double(chosen_[size_t(i)]) / double(identified_) : 0.0;
      lazy_per_seq += chosen[size_t(i)];
    }
    out.add("identified_sequences", identified_)
        .add("short_prompts", short_prompts_)
        .add("lazy_layers_per_sequence", lazy_per_seq)
        .add("lazy_scores", json_numbers(mean_score))
        .add("lazy_chosen", json_numbers(chosen));
  }

  bool wants_hidden(int layer) const override { return base_[size_t(idx(layer))]->wants_hidden(layer); }
  void observe_hidden(int layer, const ForwardBatch& batch, const float* h, int dim) override {
    base_[size_t(idx(layer))]->observe_hidden(layer, batch, h, dim);
  }

 private:
  enum class Phase : uint8_t { kPrompt, kAwaitDecode, kDone };
  struct Seq {
    Phase phase = Phase::kPrompt;
    int length = 0;                     // tokens after the current forward
    int ident_from = -1, ident_to = -1;  // identifying queries' positions [from, to); -1: none
    std::vector<double> mass;           // [layers] lazy mass summed over (query, head)
    std::vector<int> n_obs;             // [layers]
    std::vector<std::pair<double, int>> kept;  // ratio rule: (score, layer) of layers kept full
    bool identifying() const { return ident_from >= 0; }
  };

  // Passes the cache's observer through and collects the identification queries' lazy mass.
  class Observer final : public AttentionObserver {
   public:
    explicit Observer(LightTransferPolicy* p) : p_(p) {}
    bool wants(int layer, int seq, int32_t pos) const override {
      return mine(seq, pos) || (outer() && outer()->wants(layer, seq, pos));
    }
    void observe(int layer, int seq, int32_t pos, int head, std::span<const float> probs,
                 std::span<const int32_t> key_pos) const override {
      if (outer() && outer()->wants(layer, seq, pos)) outer()->observe(layer, seq, pos, head, probs, key_pos);
      if (!mine(seq, pos)) return;
      double mass = 0;
      for (size_t j = 0; j < probs.size(); ++j) {
        if (key_pos[j] < p_->cfg_.sink || key_pos[j] > pos - p_->cfg_.window) mass += probs[j];
      }
      Seq& s = p_->seqs_[size_t(seq)];
      s.mass[size_t(p_->idx(layer))] += mass;
      s.n_obs[size_t(p_->idx(layer))] += 1;
    }

   private:
    bool mine(int seq, int32_t pos) const {
      const Seq& s = p_->seqs_[size_t(seq)];
      return s.identifying() && pos >= s.ident_from && pos < s.ident_to;
    }
    const AttentionObserver* outer() const { return p_->ctx_.observer ? *p_->ctx_.observer : nullptr; }
    LightTransferPolicy* p_;
  };

  int n_layers() const { return ctx_.last_layer - ctx_.first_layer + 1; }
  int idx(int layer) const { return layer - ctx_.first_layer; }
  size_t flag(int i, int seq) const { return size_t(i) * ctx_.max_seqs + size_t(seq); }
  bool is_lazy(int layer, int seq) const { return lazy_[flag(idx(layer), seq)] != 0; }
  const Policy& owner(int layer, int seq) const {
    return is_lazy(layer, seq) ? *stream_[size_t(idx(layer))] : *base_[size_t(idx(layer))];
  }

  // Which sequences identify in this forward, and which queries they use.
  void begin_forward(const ForwardBatch& batch) {
    for (const SeqSpan& sp : batch.seqs) {
      Seq& s = seqs_[size_t(sp.seq)];
      s.length = sp.start_pos + sp.n_new;
      int from = -1, to = -1;
      if (s.phase == Phase::kPrompt) {
        if (s.length <= cfg_.sink + cfg_.window) {
          ++short_prompts_;
          s.phase = Phase::kDone;
        } else if (cfg_.ident_decode) {
          s.phase = Phase::kAwaitDecode;
        } else {
          from = s.length - std::min(cfg_.queries, sp.n_new);
          to = s.length;
        }
      } else if (s.phase == Phase::kAwaitDecode) {
        from = sp.start_pos;
        to = from + 1;
      }
      if (from < 0) continue;
      s.ident_from = from;
      s.ident_to = to;
      s.mass.assign(size_t(n_layers()), 0.0);
      s.n_obs.assign(size_t(n_layers()), 0);
      s.kept.clear();
    }
  }

  void attend_some(Policy& p, int layer, const ForwardBatch& batch, const std::vector<int>& which, const float* q,
                   const float* k, const float* v, float* out) {
    if (which.empty()) return;
    if (which.size() == batch.seqs.size()) {
      p.attend(layer, batch, q, k, v, out);
      return;
    }
    const KvGeometry& g = ctx_.geometry;
    const SubBatch sub = sub_batch(batch, which);
    const std::vector<float> sq = gather_rows(q, g.q_dim(), sub.rows), sk = gather_rows(k, g.kv_dim(), sub.rows),
                             sv = gather_rows(v, g.kv_dim(), sub.rows);
    std::vector<float> so(sq.size());
    p.attend(layer, sub.batch, sq.data(), sk.data(), sv.data(), so.data());
    for (size_t r = 0; r < sub.rows.size(); ++r) {
      std::copy_n(so.data() + r * g.q_dim(), g.q_dim(), out + size_t(sub.rows[r]) * g.q_dim());
    }
  }

  // `layer` has just been attended in seq's identifying forward: score it and apply the rule.
  void decide(int layer, int seq) {
    Seq& s = seqs_[size_t(seq)];
    const int i = idx(layer);
    const double r = s.n_obs[size_t(i)] ? s.mass[size_t(i)] / s.n_obs[size_t(i)] : 0.0;
    score_sum_[size_t(i)] += r;
    switch (cfg_.rule) {
      case Rule::kThreshold:
        if (r > cfg_.tau) make_lazy(layer, seq);
        return;
      case Rule::kRandom:
      case Rule::kFirst:
      case Rule::kLast:
        if (fixed_lazy_[size_t(i)]) make_lazy(layer, seq);
        return;
      case Rule::kRatio: {
        const size_t keep = size_t(n_layers() - n_lazy_);
        if (s.kept.size() < keep) {
          s.kept.emplace_back(r, layer);
          return;
        }
        auto laziest = std::max_element(s.kept.begin(), s.kept.end());
        if (keep == 0 || r >= laziest->first) {
          make_lazy(layer, seq);
        } else {
          make_lazy(laziest->second, seq);
          *laziest = {r, layer};
        }
        return;
      }
    }
  }

  // The layer's first S and last W tokens move from the base storage to the sink + ring store.
  void make_lazy(int layer, int seq) {
    const int i = idx(layer);
    const int length = seqs_[size_t(seq)].length;
    const LayerContents all = base_[size_t(i)]->read(layer, seq);
    const int kv_dim = ctx_.geometry.kv_dim();
    LayerContents kept;
    for (size_t j = 0; j < all.positions.size(); ++j) {
      const int32_t p = all.positions[j];
      if (p >= cfg_.sink && p < length - cfg_.window) continue;
      auto [k, v] = kept.append(p, kv_dim);
      std::copy_n(&all.k[j * kv_dim], kv_dim, k);
      std::copy_n(&all.v[j * kv_dim], kv_dim, v);
    }
    base_[size_t(i)]->reset(seq);
    const Status st = tiered_adopt(*stream_[size_t(i)], layer, seq, kept, length);
    KVLAB_CHECK(st.ok());  // the base keeps every token of the sequence (make() refuses evicting bases)
    lazy_[flag(i, seq)] = 1;
    ++chosen_[size_t(i)];
  }

  LightTransferConfig cfg_;
  int n_lazy_ = 0;                     // round(rho * L)
  std::vector<uint8_t> fixed_lazy_;    // [layers] the random / first / last baselines' set
  std::vector<std::unique_ptr<Policy>> base_, stream_;  // [layers]
  std::vector<uint8_t> lazy_;          // [layers, max_seqs]
  std::vector<Seq> seqs_;              // [max_seqs]
  Observer observer_;
  const AttentionObserver* observer_slot_ = &observer_;  // what the per-layer instances see
  // Report, over every identification since the policy was made.
  std::vector<double> score_sum_;      // [layers]
  std::vector<int64_t> chosen_;        // [layers]
  int64_t identified_ = 0, short_prompts_ = 0;
};

}  // namespace

PolicyInfo lighttransfer_policy_info() {
  PolicyInfo info;
  info.name = "lighttransfer";
  info.summary = "LightTransfer / SimLayerKV: lazy layers found per sequence become sink + window layers";
  info.params = {
      {"rule", ParamInfo::Kind::kChoice, "ratio", {"ratio", "threshold", "random", "first", "last"}, 0, 0,
       "ratio: the round(rho*L) laziest layers; threshold: lazy score > tau; random/first/last: baselines"},
      {"rho", ParamInfo::Kind::kFloat, "0.5", {}, 0, 1, "fraction of the layers made lazy (ratio, random, first, last)"},
      {"tau", ParamInfo::Kind::kFloat, "0.9", {}, 0, 1, "threshold on the lazy score (threshold)"},
      {"sink", ParamInfo::Kind::kInt, "4", {}, 0, 1 << 20, "first tokens a lazy layer keeps"},
      {"window", ParamInfo::Kind::kInt, "1024", {}, 1, 1 << 20, "newest tokens a lazy layer keeps"},
      {"ident", ParamInfo::Kind::kChoice, "prefill", {"prefill", "decode"}, 0, 0,
       "identify from the last prompt queries or from the first query after the prompt"},
      {"queries", ParamInfo::Kind::kInt, "32", {}, 1, 1 << 20, "prompt queries that identify (ident=prefill)"},
      {"seed", ParamInfo::Kind::kInt, "1", {}, 0, 2147483647, "seed of rule=random"},
      {"dtype", ParamInfo::Kind::kChoice, "f16", {"f32", "f16", "bf16", "fp8"}, 0, 0, "element type of lazy layers"},
      {"base", ParamInfo::Kind::kSpec, "full:dtype=f16", {}, 0, 0, "policy of the layers that are not lazy"},
  };
  info.make = [](const PolicyContext& ctx, const PolicyParams& p) -> StatusOr<std::unique_ptr<Policy>> {
    LightTransferConfig cfg;
    const std::string rule = p.get("rule");
    cfg.rule = rule == "ratio" ? Rule::kRatio
               : rule == "threshold" ? Rule::kThreshold
               : rule == "random" ? Rule::kRandom
               : rule == "first" ? Rule::kFirst
                                 : Rule::kLast;
    cfg.rho = p.get_float("rho");
    cfg.tau = p.get_float("tau");
    cfg.sink = p.get_int("sink");
    cfg.window = p.get_int("window");
    cfg.ident_decode = p.get("ident") == "decode";
    cfg.queries = p.get_int("queries");
    cfg.seed = uint32_t(p.get_int("seed"));
    KVLAB_ASSIGN_OR_RETURN(cfg.dtype, parse_dense_format(p.get("dtype")));
    KVLAB_ASSIGN_OR_RETURN(cfg.base, p.get_spec("base"));
    const int context = ctx.geometry.max_seq_len;
    if (int64_t(cfg.sink) + cfg.window >= context) {
      return invalid_argument("lighttransfer: sink " + std::to_string(cfg.sink) + " + window " +
                              std::to_string(cfg.window) + " is not below the model's context of " +
                              std::to_string(context) + " tokens: no layer could ever be compressed");
    }
    const PolicyInfo* base = find_policy(cfg.base.name);
    if (cfg.base.name == "lighttransfer" || cfg.base.name == "streaming" || cfg.base.name == "dynsparse") {
      return invalid_argument("lighttransfer: base=" + cfg.base.text + " evicts tokens itself; the base must keep every " +
                              "token (rule=threshold,tau=0 makes every layer streaming)");
    }
    if (base->crosses_layers && base->crosses_layers(cfg.base.params)) {
      return invalid_argument("lighttransfer: base=" + cfg.base.text + " keeps state across layers, but the lazy " +
                              "layers differ per sequence, so lighttransfer runs its base one layer at a time " +
                              "(aquakv: predictors=off; xkv: group=1)");
    }
    auto policy = std::make_unique<LightTransferPolicy>(ctx, std::move(cfg));
    KVLAB_RETURN_IF_ERROR(policy->init());
    return std::unique_ptr<Policy>(std::move(policy));
  };
  info.test_specs = {"lighttransfer:rho=0.4,sink=2,window=16",
                     "lighttransfer:rule=threshold,tau=0.5,sink=0,window=24,ident=decode,dtype=f32,"
                     "base=[kivi:bits=4,group=32,residual=16]",
                     "lighttransfer:rule=random,rho=0.6,sink=4,window=8,queries=4,dtype=fp8",
                     "lighttransfer:rule=last,rho=1,sink=1,window=40,base=[xkv:group=1,rank_k=8,rank_v=8]"};
  info.off_spec = "lighttransfer:rho=0,window=16,base=[full:dtype=f32]";
  info.roundtrip_tolerance = [](const PolicyParams& p) {
    const PolicySpec base = p.get_spec("base").value();
    return find_policy(base.name)->roundtrip_tolerance(base.params) +
           dense_relative_error(parse_dense_format(p.get("dtype")).value());
  };
  return info;
}

}  // namespace kvlab
