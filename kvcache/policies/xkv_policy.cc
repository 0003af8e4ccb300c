// `xkv` (xKV, ../shared/research/algorithms.md section 2): the instance's layers are cut into
// groups of `group` adjacent layers. A sequence's prompt (the tokens of its first forward, from
// position 0, if at least min_tokens) is held exactly (pre-RoPE K, V in f32) until the group's last
// layer has attended; then, per sequence, the group's keys X = [K_l0 | ... ] (tokens x G C) are
// factorized into a shared token basis A_K (tokens x r_K) and per-layer blocks B_K,l (r_K x C)
// (kvcache/xkv.h), the same for the values, and the exact copies are freed. Only A and B are kept
// for the prompt, in `dtype`. Tokens written later (decode, or any later forward) are stored
// densely in `dtype` and never refactorized, as in the paper.
//
// Attention reads the factors a tile of kTile tokens and one kv head at a time: keys A_K,tile
// B_K,l (rank-r product, kernels/cpu/matmul.h) rotated at their positions, into a per-thread
// scratch (kDerived), then the fused f32 kernels; values fold exactly, sum_t p_t A_V,t B_V,l =
// (sum_t p_t A_V,t) B_V,l: the engine accumulates the coefficients A_V and applies B_V,l once per
// work item (attention/attend.h, HistoryBlock::v_basis; B_V kept in f32 as kDerived for it). No
// full-precision copy of a layer's history exists at any time.
//
// Bytes (kv_bytes): A_K, A_V under kPayload, the B blocks under kMeta (per sequence: the SVD is
// per prompt), the dense tokens under kExact, the prompt's exact copies while a group is open
// under kExact too (freed when it closes).
#include <omp.h>

#include <algorithm>
#include <memory>

#include "base/check.h"
#include "base/half.h"
#include "kernels/cpu/matmul.h"
#include "kvcache/formats.h"
#include "kvcache/policies/batch_attention.h"
#include "kvcache/policies/policies.h"
#include "kvcache/token_ring.h"
#include "kvcache/xkv.h"

namespace kvlab {
namespace {

constexpr uint32_t kStateVersion = 1;
constexpr int kTile = 64;  // factorized tokens per attention block

struct XkvConfig {
  int group = 4;
  int rank_k = 64, rank_v = 96;  // per group
  int min_tokens = 1;
  KvFormat dtype = KvFormat::kF16;  // kF32 or kF16: factors and dense tokens
};

// f32 values stored as f32 or f16 bytes.
class Stored {
 public:
  Stored(MemoryLedger* ledger, MemoryKind kind, KvFormat f) : f16_(f == KvFormat::kF16), bytes_(tracked<uint8_t>(ledger, kind)) {}
  void assign(const float* x, size_t n) {
    bytes_.resize(n * esize());
    if (f16_) {
      auto* h = reinterpret_cast<uint16_t*>(bytes_.data());
      for (size_t i = 0; i < n; ++i) h[i] = f32_to_f16(x[i]);
    } else {
      std::copy_n(reinterpret_cast<const uint8_t*>(x), n * 4, bytes_.data());
    }
  }
  // Elements [first, first + n) as f32.
  void read(size_t first, size_t n, float* out) const {
    if (f16_) {
      const auto* h = reinterpret_cast<const uint16_t*>(bytes_.data()) + first;
      for (size_t i = 0; i < n; ++i) out[i] = f16_to_f32(h[i]);
    } else {
      std::copy_n(reinterpret_cast<const float*>(bytes_.data()) + first, n, out);
    }
  }
  size_t size() const { return bytes_.size() / esize(); }
  void truncate(size_t n) {  // and gives the dropped bytes back
    bytes_.resize(std::min(size(), n) * esize());
    bytes_.shrink_to_fit();
  }
  void release() { TrackedVector<uint8_t>(bytes_.get_allocator()).swap(bytes_); }
  const TrackedVector<uint8_t>& bytes() const { return bytes_; }
  TrackedVector<uint8_t>& bytes() { return bytes_; }

 private:
  size_t esize() const { return f16_ ? 2 : 4; }
  bool f16_;
  TrackedVector<uint8_t> bytes_;
};

class XkvPolicy final : public Policy {
 public:
  XkvPolicy(const PolicyContext& ctx, const XkvConfig& cfg) : Policy(ctx), cfg_(cfg) {
    const KvGeometry& g = ctx.geometry;
    const int n_layers = ctx.last_layer - ctx.first_layer + 1;
    n_groups_ = (n_layers + cfg.group - 1) / cfg.group;
    for (int gi = 0; gi < n_groups_; ++gi) {
      for (int s = 0; s < ctx.max_seqs; ++s) {
        groups_.push_back(Group{0, 0, 0, Stored(ctx.ledger, MemoryKind::kPayload, cfg.dtype),
                                Stored(ctx.ledger, MemoryKind::kPayload, cfg.dtype), {}, {}, {}});
        Group& gr = groups_.back();
        for (int i = 0; i < layers_in(gi); ++i) {
          gr.bk.emplace_back(ctx.ledger, MemoryKind::kMeta, cfg.dtype);
          gr.bv.emplace_back(ctx.ledger, MemoryKind::kMeta, cfg.dtype);
          gr.bv_basis.push_back(tracked<float>(ctx.ledger, MemoryKind::kDerived));
        }
      }
    }
    for (int l = 0; l < n_layers; ++l) {
      for (int s = 0; s < ctx.max_seqs; ++s) {
        slots_.push_back(Slot{TokenRing(ctx.ledger, MemoryKind::kExact, cfg.dtype, g.n_kv_heads, g.head_dim, g.max_seq_len),
                              tracked<float>(ctx.ledger, MemoryKind::kExact), tracked<float>(ctx.ledger, MemoryKind::kExact),
                              0});
      }
    }
    const int threads = std::max(omp_get_max_threads(), omp_get_num_procs());
    for (int t = 0; t < threads; ++t) scratch_.push_back(tracked<float>(ctx.ledger, MemoryKind::kDerived));
  }

  void attend(int layer, const ForwardBatch& batch, const float* q, const float* k, const float* v,
              float* out) override {
    const int C = ctx_.geometry.kv_dim();
    std::vector<History> histories;
    histories.reserve(batch.seqs.size());
    std::vector<const KvHistory*> views;
    for (const SeqSpan& sp : batch.seqs) {
      KVLAB_CHECK(slot(layer, sp.seq).next == sp.start_pos);
      histories.emplace_back(this, layer, sp.seq);
      views.push_back(&histories.back());
    }
    const std::vector<float> k_rot = attend_batch(ctx_, layer, batch, q, k, v, out, views);
    const int gi = group_of(layer);
    const bool closes = layer == first_of(gi) + layers_in(gi) - 1;
    for (const SeqSpan& sp : batch.seqs) {
      Slot& sl = slot(layer, sp.seq);
      const size_t row = size_t(sp.row) * C, n = size_t(sp.n_new) * C;
      sl.next += sp.n_new;
      if (sp.start_pos == 0 && sp.n_new >= cfg_.min_tokens) {  // a prompt: held for the factorization
        sl.pending_k.assign(k + row, k + row + n);
        sl.pending_v.assign(v + row, v + row + n);
      } else {
        for (int t = 0; t < sp.n_new; ++t) sl.dense.push(&k_rot[row + size_t(t) * C], v + row + size_t(t) * C);
      }
      if (closes && !sl.pending_k.empty()) factorize(gi, sp.seq);
    }
  }

  int stored_tokens(int layer, int seq) const override {
    return group(group_of(layer), seq).n + slot(layer, seq).dense.size();
  }

  Status crop(int seq, int n) override {
    for (int gi = 0; gi < n_groups_; ++gi) {
      Group& gr = group(gi, seq);
      if (n < gr.n) {  // the basis is per token: keeping the first rows keeps those tokens exactly
        gr.n = n;
        gr.ak.truncate(size_t(n) * gr.rk);
        gr.av.truncate(size_t(n) * gr.rv);
      }
      for (int i = 0; i < layers_in(gi); ++i) {
        Slot& sl = slot(first_of(gi) + i, seq);
        sl.dense.truncate(std::clamp(n - gr.n, 0, sl.dense.size()));
        sl.next = std::min(sl.next, n);
      }
      if (gr.n == 0) clear_group(gr);
    }
    return Status::Ok();
  }

  void reset(int seq) override {
    for (int gi = 0; gi < n_groups_; ++gi) clear_group(group(gi, seq));
    for (int l = ctx_.first_layer; l <= ctx_.last_layer; ++l) {
      Slot& sl = slot(l, seq);
      sl.dense.clear();
      TrackedVector<float>(sl.pending_k.get_allocator()).swap(sl.pending_k);
      TrackedVector<float>(sl.pending_v.get_allocator()).swap(sl.pending_v);
      sl.next = 0;
    }
  }

  LayerContents read(int layer, int seq) const override {
    const int C = ctx_.geometry.kv_dim(), d = ctx_.geometry.head_dim;
    const Slot& sl = slot(layer, seq);
    const Group& gr = group(group_of(layer), seq);
    LayerContents c;
    for (int t = 0; t < gr.n; ++t) c.append(t, C);
    for (int t0 = 0; t0 < gr.n; t0 += kTile) {
      const int nt = std::min(kTile, gr.n - t0);
      for (int h = 0; h < ctx_.geometry.n_kv_heads; ++h) {
        std::vector<float> kh(size_t(nt) * d), vh(kh.size()), tiles(key_tile_floats(layer, seq, nt));
        std::vector<float> coeffs(size_t(nt) * gr.rv);
        reconstruct_keys(layer, seq, t0, nt, h, kh.data(), tiles.data());
        gr.av.read(size_t(t0) * gr.rv, coeffs.size(), coeffs.data());
        matmul(coeffs.data(), nt, gr.rv, value_basis(layer, seq, h), d, vh.data());
        for (int t = 0; t < nt; ++t) {
          std::copy_n(&kh[size_t(t) * d], d, &c.k[size_t(t0 + t) * C + size_t(h) * d]);
          std::copy_n(&vh[size_t(t) * d], d, &c.v[size_t(t0 + t) * C + size_t(h) * d]);
        }
      }
    }
    for (int i = 0; i < sl.dense.size(); ++i) {
      auto [k, v] = c.append(gr.n + i, C);
      sl.dense.read(i, k, v);
    }
    return c;
  }

  void save(BinaryWriter& out) const override {
    out.put<uint32_t>(kStateVersion);
    for (int gi = 0; gi < n_groups_; ++gi) {
      for (int s = 0; s < ctx_.max_seqs; ++s) {
        const Group& gr = group(gi, s);
        out.put<int32_t>(gr.n);
        out.put<int32_t>(gr.rk);
        out.put<int32_t>(gr.rv);
        for (const Stored* st : all_factors(gr)) out.put_array(st->bytes().data(), st->bytes().size());
      }
    }
    for (int l = ctx_.first_layer; l <= ctx_.last_layer; ++l) {
      for (int s = 0; s < ctx_.max_seqs; ++s) {
        out.put<int32_t>(slot(l, s).next);
        slot(l, s).dense.save(out);
      }
    }
  }

  Status load(BinaryReader& in) override {
    KVLAB_RETURN_IF_ERROR(in.expect_version(kStateVersion, "xkv state"));
    const int C = ctx_.geometry.kv_dim();
    const size_t esize = cfg_.dtype == KvFormat::kF16 ? 2 : 4;
    for (int gi = 0; gi < n_groups_; ++gi) {
      for (int s = 0; s < ctx_.max_seqs; ++s) {
        Group& gr = group(gi, s);
        clear_group(gr);
        int32_t n = 0, rk = 0, rv = 0;
        KVLAB_RETURN_IF_ERROR(in.get(&n));
        KVLAB_RETURN_IF_ERROR(in.get(&rk));
        KVLAB_RETURN_IF_ERROR(in.get(&rv));
        const int width = layers_in(gi) * C;
        if (n < 0 || n > ctx_.geometry.max_seq_len || rk < 0 || rk > std::min(cfg_.rank_k, width) || rv < 0 ||
            rv > std::min(cfg_.rank_v, width) || (n > 0) != (rk > 0 && rv > 0)) {
          return data_loss(in.what() + ": xkv factors of " + std::to_string(n) + " tokens, ranks " +
                           std::to_string(rk) + " / " + std::to_string(rv));
        }
        gr.n = n, gr.rk = rk, gr.rv = rv;
        std::vector<int64_t> sizes = {int64_t(n) * rk, int64_t(n) * rv};
        for (int i = 0; i < layers_in(gi); ++i) sizes.push_back(int64_t(C) * rk), sizes.push_back(int64_t(C) * rv);
        std::vector<Stored*> factors = all_factors(gr);
        for (size_t i = 0; i < factors.size(); ++i) {
          KVLAB_RETURN_IF_ERROR(in.get_array(&factors[i]->bytes(), sizes[i] * int64_t(esize)));
        }
        make_value_bases(gr);
      }
    }
    for (int l = ctx_.first_layer; l <= ctx_.last_layer; ++l) {
      for (int s = 0; s < ctx_.max_seqs; ++s) {
        Slot& sl = slot(l, s);
        int32_t next = 0;
        KVLAB_RETURN_IF_ERROR(in.get(&next));
        KVLAB_RETURN_IF_ERROR(sl.dense.load(in));
        if (next != group(group_of(l), s).n + sl.dense.size()) return data_loss(in.what() + ": inconsistent xkv lengths");
        sl.next = next;
      }
    }
    return Status::Ok();
  }

 private:
  // One group of layers and one sequence: the prompt's factors. A: [n, r] token-major; B of
  // layer i of the group stored transposed, [C, r] (kv head h's rows are h d .. (h + 1) d - 1).
  struct Group {
    int n = 0, rk = 0, rv = 0;
    Stored ak, av;
    std::vector<Stored> bk, bv;                  // [layers in the group]
    std::vector<TrackedVector<float>> bv_basis;  // bv in f32 (kDerived): the engine's value basis
  };
  struct Slot {
    TokenRing dense;                              // tokens after the prompt, keys post-RoPE
    TrackedVector<float> pending_k, pending_v;    // the prompt, pre-RoPE, until the group closes
    int next = 0;
  };

  // Factorized tiles, then the dense runs.
  class History final : public KvHistory {
   public:
    History(const XkvPolicy* p, int layer, int seq)
        : p_(p), layer_(layer), seq_(seq), n_(p->group(p->group_of(layer), seq).n),
          n_tiles_((n_ + kTile - 1) / kTile), dense_(&p->slot(layer, seq).dense) {}
    int n_blocks() const override { return n_tiles_ + dense_->n_runs(); }
    // A tile's block lives in the calling thread's scratch until its next call (the engine folds
    // each block before asking for the next).
    HistoryBlock block(int b, int kv_head) const override {
      HistoryBlock hb;
      if (b >= n_tiles_) {
        int first = 0;
        dense_->run(b - n_tiles_, kv_head, &hb.k, &hb.v, &first);
        hb.first_pos = n_ + first;
        return hb;
      }
      // Keys reconstructed and rotated; values as their coefficients A_V with the basis B_V,l
      // (the engine applies it once per work item).
      const int d = p_->ctx_.geometry.head_dim, t0 = b * kTile, nt = std::min(kTile, n_ - t0);
      const Group& gr = p_->group(p_->group_of(layer_), seq_);
      TrackedVector<float>& scratch = p_->scratch_[size_t(omp_get_thread_num())];
      const size_t k_floats = size_t(kTile) * d, v_floats = size_t(kTile) * gr.rv;
      const size_t need = k_floats + v_floats + p_->key_tile_floats(layer_, seq_, kTile);
      if (scratch.size() < need) scratch.resize(need);
      float* k = scratch.data();
      float* coeffs = k + k_floats;
      p_->reconstruct_keys(layer_, seq_, t0, nt, kv_head, k, coeffs + v_floats);
      gr.av.read(size_t(t0) * gr.rv, size_t(nt) * gr.rv, coeffs);
      hb.k = f32_block(k, nt, d, d);
      hb.v = f32_block(coeffs, nt, gr.rv, gr.rv);
      hb.v_basis = p_->value_basis(layer_, seq_, kv_head);
      hb.first_pos = t0;
      return hb;
    }

   private:
    const XkvPolicy* p_;
    int layer_, seq_, n_, n_tiles_;
    const TokenRing* dense_;
  };

  int n_layers() const { return ctx_.last_layer - ctx_.first_layer + 1; }
  int group_of(int layer) const { return (layer - ctx_.first_layer) / cfg_.group; }
  int first_of(int gi) const { return ctx_.first_layer + gi * cfg_.group; }
  int layers_in(int gi) const { return std::min(cfg_.group, n_layers() - gi * cfg_.group); }
  Slot& slot(int layer, int seq) { return slots_[size_t(layer - ctx_.first_layer) * ctx_.max_seqs + seq]; }
  const Slot& slot(int layer, int seq) const { return slots_[size_t(layer - ctx_.first_layer) * ctx_.max_seqs + seq]; }
  Group& group(int gi, int seq) { return groups_[size_t(gi) * ctx_.max_seqs + seq]; }
  const Group& group(int gi, int seq) const { return groups_[size_t(gi) * ctx_.max_seqs + seq]; }
  static std::vector<Stored*> all_factors(Group& gr) {
    std::vector<Stored*> f = {&gr.ak, &gr.av};
    for (size_t i = 0; i < gr.bk.size(); ++i) f.push_back(&gr.bk[i]), f.push_back(&gr.bv[i]);
    return f;
  }
  static std::vector<const Stored*> all_factors(const Group& gr) {
    std::vector<const Stored*> f = {&gr.ak, &gr.av};
    for (size_t i = 0; i < gr.bk.size(); ++i) f.push_back(&gr.bk[i]), f.push_back(&gr.bv[i]);
    return f;
  }
  static void clear_group(Group& gr) {
    gr.n = gr.rk = gr.rv = 0;
    for (Stored* s : all_factors(gr)) s->release();
    for (auto& b : gr.bv_basis) TrackedVector<float>(b.get_allocator()).swap(b);
  }
  // The f32 value bases of a group from its stored B_V (after a factorization or a load).
  void make_value_bases(Group& gr) {
    for (size_t i = 0; i < gr.bv.size(); ++i) {
      gr.bv_basis[i].resize(gr.bv[i].size());
      gr.bv[i].read(0, gr.bv[i].size(), gr.bv_basis[i].data());
    }
  }
  // Kv head h's value basis in `layer`: B_V,l^T rows h d .. (h + 1) d - 1, [d, rv].
  const float* value_basis(int layer, int seq, int h) const {
    const Group& gr = group(group_of(layer), seq);
    return gr.bv_basis[size_t(layer - first_of(group_of(layer)))].data() + size_t(h) * ctx_.geometry.head_dim * gr.rv;
  }

  // The group's prompt (every layer's pending tokens) -> A, B; the exact copies are freed.
  void factorize(int gi, int seq) {
    const int C = ctx_.geometry.kv_dim(), G = layers_in(gi), width = G * C;
    const int n = int(slot(first_of(gi), seq).pending_k.size() / size_t(C));
    Group& gr = group(gi, seq);
    KVLAB_CHECK(gr.n == 0 && n > 0);
    std::vector<float> x(size_t(n) * width);
    for (int side = 0; side < 2; ++side) {
      for (int i = 0; i < G; ++i) {
        const TrackedVector<float>& p = side == 0 ? slot(first_of(gi) + i, seq).pending_k : slot(first_of(gi) + i, seq).pending_v;
        KVLAB_CHECK(p.size() == size_t(n) * C);
        for (int t = 0; t < n; ++t) std::copy_n(&p[size_t(t) * C], C, &x[size_t(t) * width + size_t(i) * C]);
      }
      const LowRankFactors f = factorize_low_rank(x.data(), n, width, width, side == 0 ? cfg_.rank_k : cfg_.rank_v);
      (side == 0 ? gr.ak : gr.av).assign(f.a.data(), f.a.size());
      (side == 0 ? gr.rk : gr.rv) = f.rank;
      std::vector<float> bt(size_t(C) * f.rank);  // B_l transposed: [C, r]
      for (int i = 0; i < G; ++i) {
        for (int r = 0; r < f.rank; ++r) {
          for (int c = 0; c < C; ++c) bt[size_t(c) * f.rank + r] = f.b[size_t(r) * width + size_t(i) * C + c];
        }
        (side == 0 ? gr.bk : gr.bv)[size_t(i)].assign(bt.data(), bt.size());
      }
    }
    gr.n = n;
    make_value_bases(gr);
    for (int i = 0; i < G; ++i) {
      Slot& sl = slot(first_of(gi) + i, seq);
      TrackedVector<float>(sl.pending_k.get_allocator()).swap(sl.pending_k);
      TrackedVector<float>(sl.pending_v.get_allocator()).swap(sl.pending_v);
    }
  }

  // Floats of the factor tiles reconstruct_keys() needs for nt tokens.
  size_t key_tile_floats(int layer, int seq, int nt) const {
    return size_t(nt + ctx_.geometry.head_dim) * size_t(group(group_of(layer), seq).rk);
  }

  // Keys of tokens [t0, t0 + nt) of kv head h of `layer`, rotated at their positions,
  // [nt, head_dim]: A_K rows times the head's rows of B_K,l. tiles: key_tile_floats() of scratch
  // for the f32 factor tiles (A rows [nt, rk], then B_K,l^T rows [d, rk]).
  void reconstruct_keys(int layer, int seq, int t0, int nt, int h, float* k, float* tiles) const {
    const int d = ctx_.geometry.head_dim, i = layer - first_of(group_of(layer));
    const Group& gr = group(group_of(layer), seq);
    gr.ak.read(size_t(t0) * gr.rk, size_t(nt) * gr.rk, tiles);
    gr.bk[size_t(i)].read(size_t(h) * d * gr.rk, size_t(d) * gr.rk, tiles + size_t(nt) * gr.rk);
    matmul(tiles, nt, gr.rk, tiles + size_t(nt) * gr.rk, d, k);
    std::vector<int32_t> pos(static_cast<size_t>(nt));
    for (int t = 0; t < nt; ++t) pos[size_t(t)] = t0 + t;
    ctx_.rope->rotate(k, nt, 1, pos.data());
  }

  XkvConfig cfg_;
  int n_groups_ = 0;
  std::vector<Group> groups_;  // [groups, max_seqs]
  std::vector<Slot> slots_;    // [layers, max_seqs]
  mutable std::vector<TrackedVector<float>> scratch_;  // per OpenMP thread
};

}  // namespace

PolicyInfo xkv_policy_info() {
  PolicyInfo info;
  info.name = "xkv";
  info.summary = "xKV: prompt K/V of groups of adjacent layers as shared low-rank factors, later tokens dense";
  info.params = {
      {"group", ParamInfo::Kind::kInt, "4", {}, 1, 1024, "adjacent layers sharing one token basis"},
      {"rank_k", ParamInfo::Kind::kInt, "64", {}, 1, 1 << 20, "rank of the keys' factorization, per group"},
      {"rank_v", ParamInfo::Kind::kInt, "96", {}, 1, 1 << 20, "rank of the values' factorization, per group"},
      {"short_group", ParamInfo::Kind::kChoice, "on", {"on", "off"}, 0, 0,
       "on: a layer range not a multiple of the group ends with a shorter group (same ranks)"},
      {"min_tokens", ParamInfo::Kind::kInt, "1", {}, 1, 1 << 30, "prompts shorter than this stay dense"},
      {"dtype", ParamInfo::Kind::kChoice, "f16", {"f32", "f16"}, 0, 0, "storage of the factors and dense tokens"},
  };
  info.make = [](const PolicyContext& ctx, const PolicyParams& p) -> StatusOr<std::unique_ptr<Policy>> {
    XkvConfig cfg;
    cfg.group = p.get_int("group");
    cfg.rank_k = p.get_int("rank_k");
    cfg.rank_v = p.get_int("rank_v");
    cfg.min_tokens = p.get_int("min_tokens");
    KVLAB_ASSIGN_OR_RETURN(cfg.dtype, parse_dense_format(p.get("dtype")));
    const int n_layers = ctx.last_layer - ctx.first_layer + 1, width = cfg.group * ctx.geometry.kv_dim();
    if (cfg.group > n_layers) {
      return invalid_argument("xkv: group " + std::to_string(cfg.group) + " is larger than the layer range (" +
                              std::to_string(n_layers) + " layers)");
    }
    if (n_layers % cfg.group != 0 && p.get("short_group") == "off") {
      return invalid_argument("xkv: " + std::to_string(n_layers) + " layers are not a multiple of group " +
                              std::to_string(cfg.group) + " (short_group=on allows a shorter last group)");
    }
    for (int r : {cfg.rank_k, cfg.rank_v}) {
      if (r > width) {
        return invalid_argument("xkv: rank " + std::to_string(r) + " is above the group width " +
                                std::to_string(width) + " (group x kv_dim)");
      }
    }
    return std::unique_ptr<Policy>(new XkvPolicy(ctx, cfg));
  };
  // stories260K (conformance): kv_dim 32, 5 layers (2 in the per-layer mixing test). Ranks 64 =
  // the full width of a group of 2: exact up to the storage; the short last group (layer 4) has
  // width 32 (its ranks guarded). The off setting factorizes nothing.
  info.test_specs = {"xkv:group=2,rank_k=64,rank_v=64,dtype=f32", "xkv:group=2,rank_k=64,rank_v=64",
                     "xkv:group=2,rank_k=8,rank_v=12", "xkv:group=2,rank_k=8,rank_v=8,min_tokens=1048576,dtype=f32"};
  info.off_spec = "xkv:group=2,rank_k=8,rank_v=8,min_tokens=1048576,dtype=f32";
  info.roundtrip_tolerance = [](const PolicyParams& p) {
    // Below full rank xKV keeps the best rank-r approximation, with no per-element bound (the
    // factorization's own tests check its optimality): the round trip is not checked. At full
    // rank: the rounding of both factors to the storage and of the rank-64 product.
    if (p.get_int("rank_k") < 64 || p.get_int("rank_v") < 64) return 1e30;
    return 64 * (dense_relative_error(parse_dense_format(p.get("dtype")).value()) + 0x1p-23);
  };
  return info;
}

}  // namespace kvlab
