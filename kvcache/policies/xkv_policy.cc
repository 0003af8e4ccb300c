// `xkv` (xKV, ../shared/research/algorithms.md section 2): the instance's layers are cut into
// groups of `group` adjacent layers. A sequence's prompt (the tokens of its first forward, from
// position 0, if at least min_tokens) is held exactly (pre-RoPE K, V in f32) until the group's last
// layer has attended; then, per sequence, the group's keys X = [K_l0 | ... ] (tokens x G C) are
// factorized into a shared token basis A_K (tokens x r_K) and per-layer blocks B_K,l (r_K x C)
// (kvcache/xkv.h), the same for the values, and the exact copies are freed. Only A and B are kept
// for the prompt, in `dtype`, or (factors=int8 / int4) as asymmetric integers in groups of
// factor_group along the rank with an f16 scale and zero per group, like the newer xKV code's
// factor quantization (round to nearest, no clipping or rotation). Tokens written later (decode,
// or any later forward) are stored densely in `dtype` and never refactorized, as in the paper.
//
// Attention reads the factors a tile of kTile tokens and one kv head at a time: keys A_K,tile
// B_K,l (rank-r product by the fused score kernel, reading A in its stored format) rotated at
// their positions, into a per-thread scratch (kDerived), then the fused f32 kernels; values fold
// exactly, sum_t p_t A_V,t B_V,l = (sum_t p_t A_V,t) B_V,l: the engine accumulates the stored
// coefficients A_V with the fused value kernel and applies B_V,l once per work item
// (attention/attend.h, HistoryBlock::v_basis). B_K and B_V are also kept in f32 as kDerived for
// these two products. No full-precision copy of a layer's history exists at any time.
//
// Bytes (kv_bytes): A_K, A_V under kPayload, the B blocks and the scales and zeros of quantized
// factors under kMeta (B is per sequence: the SVD is per prompt), the dense tokens under kExact,
// the prompt's exact copies while a group is open under kExact too (freed when it closes).
#include <omp.h>

#include <algorithm>
#include <memory>

#include "base/check.h"
#include "base/half.h"
#include "kernels/cpu/kv_attention.h"
#include "kernels/cpu/kv_quantize.h"
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
  KvFormat dtype = KvFormat::kF16;  // kF32 or kF16: the dense tokens, and the factors unless quantized
};

// Rows of r f32 values (A's tokens, or B^T's channels) in the factor format: kF32 / kF16, or
// kIntToken (asymmetric integers in groups of `group` along the row, f16 scale and zero per
// group: kernels/cpu/kv_format.h), so that the fused kernels read them straight from the bytes.
// Codes under the owner's kind, scales and zeros under kMeta.
struct FactorFormat {
  KvFormat format = KvFormat::kF16;
  int bits = 0, group = 0;  // kIntToken
  bool quantized() const { return format == KvFormat::kIntToken; }
};

class FactorRows {
 public:
  FactorRows(MemoryLedger* ledger, MemoryKind kind, FactorFormat f)
      : f_(f), data_(tracked<uint8_t>(ledger, kind)), scale_(tracked<uint16_t>(ledger, MemoryKind::kMeta)),
        zero_(tracked<uint16_t>(ledger, MemoryKind::kMeta)) {}
  // x: [rows, r] row-major; r a multiple of the group if quantized.
  void assign(const float* x, int rows, int r) {
    KVLAB_CHECK(!f_.quantized() || r % f_.group == 0);
    r_ = r;
    data_.resize(size_t(rows) * row_bytes());
    scale_.resize(size_t(rows) * groups());
    zero_.resize(scale_.size());
    for (int i = 0; i < rows; ++i) {
      quantize_token(f_.format, f_.bits, f_.group, x + size_t(i) * r, r, data_.data() + size_t(i) * row_bytes(),
                     f_.quantized() ? &scale_[size_t(i) * groups()] : nullptr,
                     f_.quantized() ? &zero_[size_t(i) * groups()] : nullptr);
    }
  }
  // Rows [first, first + n) as a block of n "tokens" of r channels.
  KvBlock block(int first, int n) const {
    const size_t g = size_t(first) * groups();
    return KvBlock{.format = f_.format, .n = n, .d = r_, .bits = f_.bits, .group = f_.group,
                   .data = data_.data() + size_t(first) * row_bytes(), .stride = int64_t(row_bytes()),
                   .scale = f_.quantized() ? scale_.data() + g : nullptr,
                   .zero = f_.quantized() ? zero_.data() + g : nullptr};
  }
  void read(int first, int n, float* out) const { dequantize_block(block(first, n), out); }  // [n, r]
  int rows() const { return r_ == 0 ? 0 : int(data_.size() / row_bytes()); }
  void truncate(int rows) {  // and gives the dropped bytes back
    rows = std::min(rows, this->rows());
    data_.resize(size_t(rows) * row_bytes());
    scale_.resize(size_t(rows) * groups());
    zero_.resize(scale_.size());
    data_.shrink_to_fit();
    scale_.shrink_to_fit();
    zero_.shrink_to_fit();
  }
  void release() {
    TrackedVector<uint8_t>(data_.get_allocator()).swap(data_);
    TrackedVector<uint16_t>(scale_.get_allocator()).swap(scale_);
    TrackedVector<uint16_t>(zero_.get_allocator()).swap(zero_);
    r_ = 0;
  }
  void save(BinaryWriter& out) const {
    out.put_array(data_.data(), data_.size());
    out.put_array(scale_.data(), scale_.size());
    out.put_array(zero_.data(), zero_.size());
  }
  Status load(BinaryReader& in, int rows, int r) {
    release();
    r_ = r;
    KVLAB_RETURN_IF_ERROR(in.get_array(&data_, int64_t(rows) * int64_t(row_bytes())));
    KVLAB_RETURN_IF_ERROR(in.get_array(&scale_, int64_t(rows) * groups()));
    return in.get_array(&zero_, int64_t(rows) * groups());
  }

 private:
  size_t row_bytes() const {
    return f_.quantized() ? size_t(packed_bytes(r_, f_.bits)) : size_t(r_) * (f_.format == KvFormat::kF16 ? 2 : 4);
  }
  int groups() const { return f_.quantized() ? r_ / f_.group : 0; }
  FactorFormat f_;
  int r_ = 0;
  TrackedVector<uint8_t> data_;
  TrackedVector<uint16_t> scale_, zero_;
};

class XkvPolicy final : public Policy {
 public:
  XkvPolicy(const PolicyContext& ctx, const XkvConfig& cfg, FactorFormat factors)
      : Policy(ctx), cfg_(cfg), factors_(factors) {
    const KvGeometry& g = ctx.geometry;
    const int n_layers = ctx.last_layer - ctx.first_layer + 1;
    n_groups_ = (n_layers + cfg.group - 1) / cfg.group;
    for (int gi = 0; gi < n_groups_; ++gi) {
      for (int s = 0; s < ctx.max_seqs; ++s) {
        groups_.push_back(Group{0, 0, 0, FactorRows(ctx.ledger, MemoryKind::kPayload, factors),
                                FactorRows(ctx.ledger, MemoryKind::kPayload, factors), {}, {}, {}, {}});
        Group& gr = groups_.back();
        for (int i = 0; i < layers_in(gi); ++i) {
          gr.bk.emplace_back(ctx.ledger, MemoryKind::kMeta, factors);
          gr.bv.emplace_back(ctx.ledger, MemoryKind::kMeta, factors);
          gr.bk_f32.push_back(tracked<float>(ctx.ledger, MemoryKind::kDerived));
          gr.bv_f32.push_back(tracked<float>(ctx.ledger, MemoryKind::kDerived));
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
        gr.ak.truncate(n);
        gr.av.truncate(n);
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
    c.append(0, C, gr.n);  // written head by head below
    for (int t0 = 0; t0 < gr.n; t0 += kTile) {
      const int nt = std::min(kTile, gr.n - t0);
      for (int h = 0; h < ctx_.geometry.n_kv_heads; ++h) {
        std::vector<float> kh(size_t(nt) * d), vh(kh.size()), transposed(kh.size());
        std::vector<float> coeffs(size_t(nt) * gr.rv);
        reconstruct_keys(layer, seq, t0, nt, h, kh.data(), transposed.data());
        gr.av.read(t0, nt, coeffs.data());
        matmul(coeffs.data(), nt, gr.rv, value_basis(layer, seq, h), d, vh.data());
        for (int t = 0; t < nt; ++t) {
          std::copy_n(&kh[size_t(t) * d], d, &c.k[size_t(t0 + t) * C + size_t(h) * d]);
          std::copy_n(&vh[size_t(t) * d], d, &c.v[size_t(t0 + t) * C + size_t(h) * d]);
        }
      }
    }
    {
      auto [k, v] = c.append(gr.n, C, sl.dense.size());
      sl.dense.read(0, sl.dense.size(), k, v);
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
        if (gr.n > 0) {
          for (const FactorRows* f : all_factors(gr)) f->save(out);
        }
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
            rv > std::min(cfg_.rank_v, width) || (n > 0) != (rk > 0 && rv > 0) ||
            (factors_.quantized() && (rk % factors_.group != 0 || rv % factors_.group != 0))) {
          return data_loss(in.what() + ": xkv factors of " + std::to_string(n) + " tokens, ranks " +
                           std::to_string(rk) + " / " + std::to_string(rv));
        }
        gr.n = n, gr.rk = rk, gr.rv = rv;
        if (n == 0) continue;
        KVLAB_RETURN_IF_ERROR(gr.ak.load(in, n, rk));
        KVLAB_RETURN_IF_ERROR(gr.av.load(in, n, rv));
        for (int i = 0; i < layers_in(gi); ++i) {
          KVLAB_RETURN_IF_ERROR(gr.bk[size_t(i)].load(in, C, rk));
          KVLAB_RETURN_IF_ERROR(gr.bv[size_t(i)].load(in, C, rv));
        }
        make_f32_bases(gr);
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
  // The B blocks are also kept in f32 (kDerived, G C (rk + rv) floats): the queries of the key
  // reconstruction and the engine's value basis.
  struct Group {
    int n = 0, rk = 0, rv = 0;
    FactorRows ak, av;
    std::vector<FactorRows> bk, bv;                        // [layers in the group]
    std::vector<TrackedVector<float>> bk_f32, bv_f32;      // [layers in the group]
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
    // A tile's block lives in the calling thread's scratch until its next call.
    bool blocks_outlive_next_call() const override { return false; }
    HistoryBlock block(int b, int kv_head) const override {
      HistoryBlock hb;
      if (b >= n_tiles_) {
        int first = 0;
        dense_->run(b - n_tiles_, kv_head, &hb.k, &hb.v, &first);
        hb.first_pos = n_ + first;
        return hb;
      }
      // Keys reconstructed and rotated; values as their coefficients A_V, read from the stored
      // bytes, with the basis B_V,l (the engine applies it once per work item).
      const int d = p_->ctx_.geometry.head_dim, t0 = b * kTile, nt = std::min(kTile, n_ - t0);
      const Group& gr = p_->group(p_->group_of(layer_), seq_);
      TrackedVector<float>& scratch = p_->scratch_[size_t(omp_get_thread_num())];
      const size_t k_floats = size_t(kTile) * d;
      if (scratch.size() < 2 * k_floats) scratch.resize(2 * k_floats);
      float* k = scratch.data();
      p_->reconstruct_keys(layer_, seq_, t0, nt, kv_head, k, k + k_floats);
      hb.k = f32_block(k, nt, d, d);
      hb.v = gr.av.block(t0, nt);
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
  // A, then each layer's B_K and B_V: the order of the saved state.
  static std::vector<const FactorRows*> all_factors(const Group& gr) {
    std::vector<const FactorRows*> f = {&gr.ak, &gr.av};
    for (size_t i = 0; i < gr.bk.size(); ++i) f.push_back(&gr.bk[i]), f.push_back(&gr.bv[i]);
    return f;
  }
  static void clear_group(Group& gr) {
    gr.n = gr.rk = gr.rv = 0;
    for (const FactorRows* f : all_factors(gr)) const_cast<FactorRows*>(f)->release();
    for (auto* bases : {&gr.bk_f32, &gr.bv_f32}) {
      for (auto& b : *bases) TrackedVector<float>(b.get_allocator()).swap(b);
    }
  }
  // The f32 copies of a group's stored B blocks (after a factorization or a load).
  void make_f32_bases(Group& gr) {
    const int C = ctx_.geometry.kv_dim();
    for (size_t i = 0; i < gr.bk.size(); ++i) {
      gr.bk_f32[i].resize(size_t(C) * gr.rk);
      gr.bk[i].read(0, C, gr.bk_f32[i].data());
      gr.bv_f32[i].resize(size_t(C) * gr.rv);
      gr.bv[i].read(0, C, gr.bv_f32[i].data());
    }
  }
  // Kv head h's rows of B_K,l^T or B_V,l^T in `layer`: rows h d .. (h + 1) d - 1, [d, r].
  const float* key_basis(int layer, int seq, int h) const {
    const Group& gr = group(group_of(layer), seq);
    return gr.bk_f32[size_t(layer - first_of(group_of(layer)))].data() + size_t(h) * ctx_.geometry.head_dim * gr.rk;
  }
  const float* value_basis(int layer, int seq, int h) const {
    const Group& gr = group(group_of(layer), seq);
    return gr.bv_f32[size_t(layer - first_of(group_of(layer)))].data() + size_t(h) * ctx_.geometry.head_dim * gr.rv;
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
      // Quantized factors need whole groups along the rank: a guarded rank (short prompt) is
      // padded with zero columns of A and zero rows of B, which add nothing to the product.
      const int r = factors_.quantized() ? (f.rank + factors_.group - 1) / factors_.group * factors_.group : f.rank;
      std::vector<float> a(size_t(n) * r, 0.0f);
      for (int t = 0; t < n; ++t) std::copy_n(&f.a[size_t(t) * f.rank], f.rank, &a[size_t(t) * r]);
      (side == 0 ? gr.ak : gr.av).assign(a.data(), n, r);
      (side == 0 ? gr.rk : gr.rv) = r;
      std::vector<float> bt(size_t(C) * r, 0.0f);  // B_l transposed: [C, r]
      for (int i = 0; i < G; ++i) {
        for (int j = 0; j < f.rank; ++j) {
          for (int c = 0; c < C; ++c) bt[size_t(c) * r + j] = f.b[size_t(j) * width + size_t(i) * C + c];
        }
        (side == 0 ? gr.bk : gr.bv)[size_t(i)].assign(bt.data(), C, r);
      }
    }
    gr.n = n;
    make_f32_bases(gr);
    for (int i = 0; i < G; ++i) {
      Slot& sl = slot(first_of(gi) + i, seq);
      TrackedVector<float>(sl.pending_k.get_allocator()).swap(sl.pending_k);
      TrackedVector<float>(sl.pending_v.get_allocator()).swap(sl.pending_v);
    }
  }

  // Keys of tokens [t0, t0 + nt) of kv head h of `layer`, rotated at their positions,
  // [nt, head_dim]: A_K rows times the head's rows of B_K,l. The product is the fused score
  // kernel with A_K's stored rows as the "keys" (n = nt, d = rk) and B_K,l^T's d rows as the
  // "queries": it reads A in its stored format, and gives the tile transposed, [d, nt], in
  // `transposed` (scratch of nt * head_dim floats).
  void reconstruct_keys(int layer, int seq, int t0, int nt, int h, float* k, float* transposed) const {
    const int d = ctx_.geometry.head_dim;
    const Group& gr = group(group_of(layer), seq);
    kv_scores(gr.ak.block(t0, nt), key_basis(layer, seq, h), d, transposed);
    for (int t = 0; t < nt; ++t) {
      for (int c = 0; c < d; ++c) k[size_t(t) * d + c] = transposed[size_t(c) * nt + t];
    }
    int32_t pos[kTile];
    for (int t = 0; t < nt; ++t) pos[t] = t0 + t;
    ctx_.rope->rotate(k, nt, 1, pos);
  }

  XkvConfig cfg_;
  FactorFormat factors_;
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
      {"dtype", ParamInfo::Kind::kChoice, "f16", {"f32", "f16"}, 0, 0, "storage of the dense tokens (and of the factors)"},
      {"factors", ParamInfo::Kind::kChoice, "dtype", {"dtype", "int8", "int4"}, 0, 0,
       "storage of A and B: as dtype, or asymmetric integers in groups along the rank"},
      {"factor_group", ParamInfo::Kind::kInt, "32", {}, 2, 1 << 20,
       "int8 / int4 factors: values per f16 scale and zero (divides both ranks)"},
  };
  info.make = [](const PolicyContext& ctx, const PolicyParams& p) -> StatusOr<std::unique_ptr<Policy>> {
    XkvConfig cfg;
    cfg.group = p.get_int("group");
    cfg.rank_k = p.get_int("rank_k");
    cfg.rank_v = p.get_int("rank_v");
    cfg.min_tokens = p.get_int("min_tokens");
    KVLAB_ASSIGN_OR_RETURN(cfg.dtype, parse_dense_format(p.get("dtype")));
    FactorFormat factors{cfg.dtype, 0, 0};
    if (p.get("factors") != "dtype") {
      factors = {KvFormat::kIntToken, p.get("factors") == "int8" ? 8 : 4, p.get_int("factor_group")};
      for (int r : {cfg.rank_k, cfg.rank_v}) {
        if (r % factors.group != 0) {
          return invalid_argument("xkv: rank " + std::to_string(r) + " is not a multiple of factor_group " +
                                  std::to_string(factors.group) + " (quantized factors need whole groups)");
        }
      }
    }
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
    return std::unique_ptr<Policy>(new XkvPolicy(ctx, cfg, factors));
  };
  // stories260K (conformance): kv_dim 32, 5 layers (2 in the per-layer mixing test). Ranks 64 =
  // the full width of a group of 2: exact up to the storage; the short last group (layer 4) has
  // width 32 (its ranks guarded). The off setting factorizes nothing.
  info.test_specs = {"xkv:group=2,rank_k=64,rank_v=64,dtype=f32", "xkv:group=2,rank_k=64,rank_v=64",
                     "xkv:group=2,rank_k=8,rank_v=12", "xkv:group=2,rank_k=64,rank_v=64,factors=int8,factor_group=16",
                     "xkv:group=2,rank_k=8,rank_v=8,min_tokens=1048576,dtype=f32"};
  info.crosses_layers = [](const PolicyParams& p) { return p.get_int("group") > 1; };
  info.off_spec = "xkv:group=2,rank_k=8,rank_v=8,min_tokens=1048576,dtype=f32";
  info.roundtrip_tolerance = [](const PolicyParams& p) {
    // Below full rank xKV keeps the best rank-r approximation, with no per-element bound (the
    // factorization's own tests check its optimality): the round trip is not checked. At full
    // rank: the rounding of both factors to the storage and of the rank-64 product.
    if (p.get_int("rank_k") < 64 || p.get_int("rank_v") < 64) return 1e30;
    // int8 factors: each element of K / V is a 64-term sum of products of two factors rounded
    // to 8 bits in groups; on this suite's Gaussian K / V the largest error measured is 0.0064 of
    // the largest magnitude (an f16 scale slip or a wrong group would be of order 1).
    if (p.get("factors") != "dtype") return 0.02;
    return 64 * (dense_relative_error(parse_dense_format(p.get("dtype")).value()) + 0x1p-23);
  };
  return info;
}

}  // namespace kvlab
