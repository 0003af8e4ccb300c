// `dynsparse`: decode-time sparsification of generated tokens (Dynamic-LLaVA's output-text
// predictor, Huang et al. 2025, on a text decoder). ../shared/research/algorithms.md section 4.
//
// At each decode step the token entering layer K is scored once; the score decides whether its
// K/V is kept in layers >= K. Layers < K keep every token. The token always attends to itself in
// its own step (the base policy attends it with SeqSpan::store = false and stores nothing), and a
// dropped token is never written in layers >= K: no byte is allocated for it and positions are
// never re-indexed (keys are stored post-RoPE at their true positions). Prompt tokens are always
// kept: a forward of more than one token, or a sequence's first forward, is prompt.
//
// Layers >= K therefore hold a compacted sequence per slot: the base policy there sees
// start_pos = tokens kept so far while the batch's positions stay the true ones. The list of
// dropped positions (metadata, 4 bytes each) maps compacted indices back to positions for read()
// and crop(). One instance of the base covers layers < K and one covers layers >= K; both are
// policies of the tiered token store (full, kivi, quant, streaming), the ones that honour
// SeqSpan::store.
//
// Deciders (the score; higher = more worth keeping):
//   random  a hash of (seed, decode step): the rate-matched control (4.8 D)
//   knorm   minus the mean over kv heads of the layer-K key's L2 norm (4.8 C, the KNorm
//           observation that low-norm keys draw attention)
//   probe,  learned from the hidden state entering layer K (kvcache/dynsparse_decider.h),
//   mlp     trained by `kvlab calibrate` with the LM frozen; calib=FILE names the network
// A keep-rate controller turns scores into decisions: a token is kept when the fraction of the
// sequence's last kHistory scores above its own is below keep, corrected by the gap between the
// tokens kept and keep * tokens decided, so that the realized rate follows the asked one whatever
// the scores' scale (the paper's argmax has no rate control, pitfall 4.7.3). keep = 1 keeps every
// token and decides nothing: the base policy's cache exactly.
#include <algorithm>
#include <cmath>
#include <iterator>
#include <tuple>

#include "base/check.h"
#include "kvcache/dynsparse_decider.h"
#include "kvcache/policies/policies.h"

namespace kvlab {
namespace {

constexpr uint32_t kStateVersion = 1;
constexpr int kHistory = 256;   // scores the controller ranks a new score against, per sequence
constexpr double kGain = 16.0;  // tokens of keep-count error that move the rank threshold by 1

struct DynSparseConfig {
  double keep = 0.5;
  int layer = 2;
  TokenScorer scorer;
  PolicySpec base;
};

class DynSparsePolicy final : public Policy {
 public:
  DynSparsePolicy(const PolicyContext& ctx, DynSparseConfig cfg) : Policy(ctx), cfg_(std::move(cfg)) {
    seqs_.reserve(size_t(ctx.max_seqs));
    for (int s = 0; s < ctx.max_seqs; ++s) seqs_.emplace_back(ctx.ledger);
    side_bytes_ = cfg_.scorer.n_params() * int64_t(sizeof(float));
    ctx_.ledger->add(MemoryKind::kSide, side_bytes_);
  }
  ~DynSparsePolicy() override { ctx_.ledger->sub(MemoryKind::kSide, side_bytes_); }

  Status init() {
    const PolicyInfo* info = find_policy(cfg_.base.name);
    auto make = [&](int first, int last) -> StatusOr<std::unique_ptr<Policy>> {
      PolicyContext c = ctx_;
      c.first_layer = first;
      c.last_layer = last;
      c.spec_text = cfg_.base.text;
      return info->make(c, cfg_.base.params);
    };
    if (cfg_.layer > ctx_.first_layer) {
      KVLAB_ASSIGN_OR_RETURN(lo_, make(ctx_.first_layer, cfg_.layer - 1));
    }
    KVLAB_ASSIGN_OR_RETURN(hi_, make(cfg_.layer, ctx_.last_layer));
    return Status::Ok();
  }

  void attend(int layer, const ForwardBatch& batch, const float* q, const float* k, const float* v,
              float* out) override {
    if (layer < cfg_.layer) return lo_->attend(layer, batch, q, k, v, out);
    if (layer == cfg_.layer) decide(batch, k);
    KVLAB_CHECK(hi_batch_.n_rows() == batch.n_rows());
    hi_->attend(layer, hi_batch_, q, k, v, out);
  }

  void commit(const ForwardBatch& batch) override {
    if (lo_) lo_->commit(batch);
    hi_->commit(hi_batch_);
    for (const SeqSpan& sp : hi_batch_.seqs) {
      Seq& s = seqs_[size_t(sp.seq)];
      if (sp.store) {
        s.stored += sp.n_new;
      } else {
        s.dropped.push_back(hi_batch_.positions[size_t(sp.row)]);
      }
    }
    hi_batch_ = ForwardBatch{};  // holds nothing between forwards (the ledger books all kept bytes)
    cfg_.scorer.clear();
  }

  int stored_tokens(int layer, int seq) const override { return part(layer).stored_tokens(layer, seq); }

  Status crop(int seq, int n) override {
    Seq& s = seqs_[size_t(seq)];
    const auto first_cut = std::lower_bound(s.dropped.begin(), s.dropped.end(), n);
    const int stored = n - int(first_cut - s.dropped.begin());
    if (lo_) KVLAB_RETURN_IF_ERROR(lo_->crop(seq, n));
    KVLAB_RETURN_IF_ERROR(hi_->crop(seq, stored));
    s.dropped.erase(first_cut, s.dropped.end());
    s.stored = stored;
    return Status::Ok();
  }

  void reset(int seq) override {
    if (lo_) lo_->reset(seq);
    hi_->reset(seq);
    seqs_[size_t(seq)] = Seq(ctx_.ledger);
  }

  LayerContents read(int layer, int seq) const override {
    LayerContents c = part(layer).read(layer, seq);
    if (layer < cfg_.layer) return c;
    // Compacted index -> position: skip the dropped positions at or below it (both ascending).
    const auto& dropped = seqs_[size_t(seq)].dropped;
    size_t j = 0;
    for (int32_t& p : c.positions) {
      const int32_t compact = p;
      p = compact + int32_t(j);
      while (j < dropped.size() && dropped[j] <= p) p = compact + int32_t(++j);
    }
    return c;
  }

  void save(BinaryWriter& out) const override {
    out.put<uint32_t>(kStateVersion);
    for (const Seq& s : seqs_) {
      out.put<int32_t>(s.stored);
      out.put<int64_t>(s.decided);
      out.put<int64_t>(s.kept);
      out.put_array(s.dropped.data(), s.dropped.size());
      out.put_array(s.scores.data(), s.scores.size());
    }
    if (lo_) lo_->save(out);
    hi_->save(out);
  }

  Status load(BinaryReader& in) override {
    KVLAB_RETURN_IF_ERROR(in.expect_version(kStateVersion, "dynsparse state"));
    for (Seq& s : seqs_) {
      Seq r(ctx_.ledger);
      KVLAB_RETURN_IF_ERROR(in.get(&r.stored));
      KVLAB_RETURN_IF_ERROR(in.get(&r.decided));
      KVLAB_RETURN_IF_ERROR(in.get(&r.kept));
      KVLAB_RETURN_IF_ERROR(in.get_array(&r.dropped));
      KVLAB_RETURN_IF_ERROR(in.get_array(&r.scores));
      const bool ascending = std::adjacent_find(r.dropped.begin(), r.dropped.end(), std::greater_equal<>()) ==
                             r.dropped.end();
      if (r.stored < 0 || r.kept < 0 || r.kept > r.decided || int64_t(r.dropped.size()) > r.decided || !ascending ||
          (!r.dropped.empty() && r.dropped.front() < 0) || r.scores.size() > size_t(kHistory)) {
        return data_loss(in.what() + ": bad dynsparse sequence state");
      }
      s = std::move(r);
    }
    if (lo_) KVLAB_RETURN_IF_ERROR(lo_->load(in));
    return hi_->load(in);
  }

  void report(JsonObject& out) const override {
    out.add("decided_tokens", decided_)
        .add("kept_tokens", kept_)
        .add("keep_rate", decided_ ? double(kept_) / double(decided_) : 1.0);
    cfg_.scorer.report(out);
  }

  bool wants_hidden(int layer) const override { return learned(layer) || part(layer).wants_hidden(layer); }
  //   h: [n_rows, dim] the residual stream entering `layer`
  void observe_hidden(int layer, const ForwardBatch& batch, const float* h, int dim) override {
    if (learned(layer)) cfg_.scorer.observe(batch, h, dim);
    if (part(layer).wants_hidden(layer)) part(layer).observe_hidden(layer, batch, h, dim);
  }

 private:
  struct Seq {
    explicit Seq(MemoryLedger* ledger)
        : dropped(tracked<int32_t>(ledger, MemoryKind::kMeta)), scores(tracked<float>(ledger, MemoryKind::kIndex)) {}
    int32_t stored = 0;              // tokens held in layers >= K
    int64_t decided = 0, kept = 0;   // generated tokens scored / kept
    TrackedVector<int32_t> dropped;  // ascending positions never written in layers >= K
    TrackedVector<float> scores;     // ring of the last kHistory scores, slot decided % kHistory
  };

  Policy& part(int layer) const { return layer < cfg_.layer ? *lo_ : *hi_; }
  bool learned(int layer) const {
    return layer == cfg_.layer && cfg_.keep < 1.0 && cfg_.scorer.learned();
  }

  // Layer K of a forward: each generated token's decision, and the batch layers >= K see.
  //   k: [n_rows, kv_dim] pre-RoPE keys of layer K
  void decide(const ForwardBatch& batch, const float* k) {
    hi_batch_ = batch;
    for (SeqSpan& sp : hi_batch_.seqs) {
      Seq& s = seqs_[size_t(sp.seq)];
      const bool gen = TokenScorer::generated(sp);
      sp.start_pos = s.stored;
      if (!gen || cfg_.keep >= 1.0) continue;
      sp.store = controlled_keep(s, cfg_.scorer.score(sp.row, k + size_t(sp.row) * ctx_.geometry.kv_dim(), uint64_t(s.decided)));
    }
  }

  bool controlled_keep(Seq& s, float score) {
    const int64_t above = std::count_if(s.scores.begin(), s.scores.end(), [&](float x) { return x > score; });
    const double rank = s.scores.empty() ? 0.0 : double(above) / double(s.scores.size());
    const double target = cfg_.keep + (cfg_.keep * double(s.decided) - double(s.kept)) / kGain;
    const bool keep = rank < target;
    if (s.scores.size() < size_t(kHistory)) {
      s.scores.push_back(score);
    } else {
      s.scores[size_t(s.decided % kHistory)] = score;
    }
    ++s.decided;
    s.kept += keep;
    ++decided_;
    kept_ += keep;
    return keep;
  }

  DynSparseConfig cfg_;
  std::unique_ptr<Policy> lo_;  // layers [first_layer, K): every token; null when K == first_layer
  std::unique_ptr<Policy> hi_;  // layers [K, last_layer]: prompt and kept tokens
  std::vector<Seq> seqs_;       // [max_seqs]
  ForwardBatch hi_batch_;       // the current forward as layers >= K see it (set at layer K)
  int64_t decided_ = 0, kept_ = 0;  // over every sequence since the policy was made (report)
  int64_t side_bytes_ = 0;  // the decider network's weights (kSide)
};

}  // namespace

PolicyInfo dynsparse_policy_info() {
  PolicyInfo info;
  info.name = "dynsparse";
  info.summary = "Dynamic-LLaVA decode sparsification: generated tokens kept or dropped in layers >= K, decided once";
  info.params = {
      {"keep", ParamInfo::Kind::kFloat, "0.5", {}, 0, 1, "fraction of generated tokens kept in layers >= K (> 0)"},
      {"layer", ParamInfo::Kind::kInt, "2", {}, 0, 1 << 20, "K: the first layer where dropped tokens are not stored"},
      {"decider", ParamInfo::Kind::kChoice, "knorm", {std::begin(TokenScorer::kChoices), std::end(TokenScorer::kChoices)}, 0, 0,
       "random: rate-matched control; knorm: low layer-K key norm is kept; probe, mlp: learned (calib=FILE)"},
      {"calib", ParamInfo::Kind::kString, "none", {}, 0, 0, "decider file from kvlab calibrate (probe, mlp)"},
      {"seed", ParamInfo::Kind::kInt, "1", {}, 0, 2147483647, "seed of decider=random"},
      {"base", ParamInfo::Kind::kSpec, "full:dtype=f16", {}, 0, 0,
       "policy holding the kept tokens (full, kivi, quant or streaming)"},
  };
  info.make = [](const PolicyContext& ctx, const PolicyParams& p) -> StatusOr<std::unique_ptr<Policy>> {
    DynSparseConfig cfg;
    cfg.keep = p.get_float("keep");
    cfg.layer = p.get_int("layer");
    KVLAB_ASSIGN_OR_RETURN(cfg.base, p.get_spec("base"));
    if (!(cfg.keep > 0)) {
      return invalid_argument("dynsparse: keep=" + p.get("keep") + " keeps no generated token; keep is in (0, 1]");
    }
    if (cfg.layer < ctx.first_layer || cfg.layer > ctx.last_layer) {
      return invalid_argument("dynsparse: layer=" + std::to_string(cfg.layer) + " is outside the layers " +
                              std::to_string(ctx.first_layer) + ".." + std::to_string(ctx.last_layer) +
                              " this policy covers");
    }
    KVLAB_ASSIGN_OR_RETURN(cfg.scorer, TokenScorer::make("dynsparse", p.get("decider"),
                                                         p.get("calib") == "none" ? "" : p.get("calib"),
                                                         uint64_t(p.get_int("seed")), ctx.geometry, cfg.layer));
    if (!find_policy(cfg.base.name)->stores_selectively) {
      return invalid_argument("dynsparse: base=" + cfg.base.text + " cannot leave a token unstored; the kept tokens " +
                              "live in full, kivi, quant or streaming");
    }
    auto policy = std::make_unique<DynSparsePolicy>(ctx, std::move(cfg));
    KVLAB_RETURN_IF_ERROR(policy->init());
    return std::unique_ptr<Policy>(std::move(policy));
  };
  info.test_specs = {"dynsparse:keep=0.5,layer=1,decider=random",
                     "dynsparse:keep=0.3,layer=1,base=[kivi:bits=4,group=32,residual=16]",
                     "dynsparse:keep=0.7,layer=0,decider=random,seed=3,base=[full:dtype=fp8]",
                     "dynsparse:keep=0.5,layer=1,decider=mlp,calib={test_dir}/dynsparse_mlp1.bin",
                     "dynsparse:keep=0.4,layer=1,decider=probe,calib={test_dir}/dynsparse_probe1.bin,base=[full:dtype=bf16]"};
  info.prepare_test = [](const KvGeometry& g, const std::string& dir) -> Status {
    for (auto [kind, layer, name] : {std::tuple{DeciderKind::kMlp, 1, "/dynsparse_mlp1.bin"},
                                     std::tuple{DeciderKind::kProbe, 1, "/dynsparse_probe1.bin"}}) {
      KVLAB_RETURN_IF_ERROR(DeciderFile::untrained(g, layer, kind, uint64_t(layer)).save(dir + name));
    }
    return Status::Ok();
  };
  info.off_spec = "dynsparse:keep=1,base=[full:dtype=f32]";
  info.roundtrip_tolerance = [](const PolicyParams& p) {
    const PolicySpec base = p.get_spec("base").value();
    return find_policy(base.name)->roundtrip_tolerance(base.params);
  };
  return info;
}

}  // namespace kvlab
