#include "kvcache/policies/full_policy.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "attention/attend.h"
#include "base/check.h"
#include "kvcache/page_table.h"

namespace kvlab {
namespace {

constexpr int kPageTokens = 32;
constexpr uint32_t kStateVersion = 1;

class FullPolicy final : public Policy {
 public:
  FullPolicy(const PolicyContext& ctx, ElementType type) : Policy(ctx), type_(type) {
    const KvGeometry& g = ctx.geometry;
    page_bytes_ = size_t(2) * g.n_kv_heads * kPageTokens * g.head_dim * element_size(type);
    const int n_layers = ctx.last_layer - ctx.first_layer + 1;
    slots_.reserve(size_t(n_layers) * ctx.max_seqs);
    for (int i = 0; i < n_layers * ctx.max_seqs; ++i) {
      slots_.push_back({PageTable(ctx.ledger, MemoryKind::kPayload, page_bytes_), 0});
    }
  }

  void attend(int layer, const ForwardBatch& batch, const float* q, const float* k, const float* v,
              float* out) override {
    const KvGeometry& geo = ctx_.geometry;
    const int kv_dim = geo.kv_dim();
    // Keys are stored post-RoPE: rotated once here, read many times.
    std::vector<float> k_rot(k, k + size_t(batch.n_rows()) * kv_dim);
    ctx_.rope->rotate(k_rot.data(), batch.n_rows(), geo.n_kv_heads, batch.positions.data());

    std::vector<History> histories;
    histories.reserve(batch.seqs.size());
    std::vector<SeqAttention> work;
    for (const SeqSpan& sp : batch.seqs) {
      const Slot& sl = slot(layer, sp.seq);
      histories.push_back(History(this, &sl));
      SeqAttention sa;
      sa.seq = sp.seq;
      sa.n_new = sp.n_new;
      sa.positions = batch.positions.data() + sp.row;
      sa.q = q + size_t(sp.row) * geo.q_dim();
      sa.k_new = k_rot.data() + size_t(sp.row) * kv_dim;
      sa.v_new = v + size_t(sp.row) * kv_dim;
      sa.out = out + size_t(sp.row) * geo.q_dim();
      sa.history = sl.n > 0 ? &histories.back() : nullptr;
      work.push_back(sa);
    }
    attend_engine(layer, work);
    for (const SeqSpan& sp : batch.seqs) {
      append(slot(layer, sp.seq), k_rot.data() + size_t(sp.row) * kv_dim, v + size_t(sp.row) * kv_dim,
             sp.n_new);
    }
  }

  int stored_tokens(int layer, int seq) const override { return slot(layer, seq).n; }

  Status crop(int seq, int n_tokens) override {
    for (int l = ctx_.first_layer; l <= ctx_.last_layer; ++l) {
      Slot& sl = slot(l, seq);
      sl.n = std::min(sl.n, n_tokens);
      sl.pages.truncate(size_t((sl.n + kPageTokens - 1) / kPageTokens));
    }
    return Status::Ok();
  }

  void reset(int seq) override {
    for (int l = ctx_.first_layer; l <= ctx_.last_layer; ++l) {
      Slot& sl = slot(l, seq);
      sl.n = 0;
      sl.pages.clear();
    }
  }

  LayerContents read(int layer, int seq) const override {
    const Slot& sl = slot(layer, seq);
    const KvGeometry& geo = ctx_.geometry;
    const int d = geo.head_dim;
    LayerContents c;
    c.k.resize(size_t(sl.n) * geo.kv_dim());
    c.v.resize(c.k.size());
    for (int i = 0; i < sl.n; ++i) {
      c.positions.push_back(i);
      for (int g = 0; g < geo.n_kv_heads; ++g) {
        decode_elements(type_, key_ptr(sl, i, g), &c.k[size_t(i) * geo.kv_dim() + size_t(g) * d], d);
        decode_elements(type_, value_ptr(sl, i, g), &c.v[size_t(i) * geo.kv_dim() + size_t(g) * d], d);
      }
    }
    return c;
  }

  void save(BinaryWriter& out) const override {
    out.put<uint32_t>(kStateVersion);
    out.put<uint64_t>(page_bytes_);
    for (const Slot& sl : slots_) {
      out.put<int32_t>(sl.n);
      for (size_t p = 0; p < sl.pages.n_pages(); ++p) out.put_bytes(sl.pages.page(p), page_bytes_);
    }
  }

  Status load(BinaryReader& in) override {
    uint32_t version = 0;
    uint64_t page_bytes = 0;
    KVLAB_RETURN_IF_ERROR(in.get(&version));
    if (version != kStateVersion) {
      return unsupported(in.what() + ": full-policy state version " + std::to_string(version) +
                         " (this build reads version " + std::to_string(kStateVersion) + ")");
    }
    KVLAB_RETURN_IF_ERROR(in.get(&page_bytes));
    if (page_bytes != page_bytes_) return data_loss(in.what() + ": page size does not match the policy");
    for (Slot& sl : slots_) {
      int32_t n = 0;
      KVLAB_RETURN_IF_ERROR(in.get(&n));
      if (n < 0 || n > ctx_.geometry.max_seq_len) {
        return data_loss(in.what() + ": stored length " + std::to_string(n) + " out of range");
      }
      sl.pages.clear();
      sl.n = n;
      for (int p = 0; p < (n + kPageTokens - 1) / kPageTokens; ++p) {
        KVLAB_RETURN_IF_ERROR(in.get_bytes(sl.pages.add_page(), page_bytes_));
      }
    }
    return Status::Ok();
  }

 private:
  struct Slot {
    PageTable pages;
    int n = 0;  // tokens stored, at positions 0..n-1
  };

  // One sequence's stored tokens in one layer, page by page.
  class History final : public KvHistory {
   public:
    History(const FullPolicy* p, const Slot* s) : p_(p), s_(s) {}
    int n_blocks() const override { return (s_->n + kPageTokens - 1) / kPageTokens; }
    int max_block_tokens() const override { return kPageTokens; }
    KvBlockView block(int b, int kv_head, float* scratch_k, float* scratch_v) const override {
      const int n = std::min(kPageTokens, s_->n - b * kPageTokens);
      const int d = p_->ctx_.geometry.head_dim;
      const int tok = b * kPageTokens;
      KvBlockView view;
      view.n = n;
      view.first_pos = tok;
      if (p_->type_ == ElementType::kF32) {
        view.k = reinterpret_cast<const float*>(p_->key_ptr(*s_, tok, kv_head));
        view.v = reinterpret_cast<const float*>(p_->value_ptr(*s_, tok, kv_head));
      } else {
        decode_elements(p_->type_, p_->key_ptr(*s_, tok, kv_head), scratch_k, size_t(n) * d);
        decode_elements(p_->type_, p_->value_ptr(*s_, tok, kv_head), scratch_v, size_t(n) * d);
        view.k = scratch_k;
        view.v = scratch_v;
      }
      return view;
    }

   private:
    const FullPolicy* p_;
    const Slot* s_;
  };

  Slot& slot(int layer, int seq) {
    return slots_[size_t(layer - ctx_.first_layer) * ctx_.max_seqs + seq];
  }
  const Slot& slot(int layer, int seq) const {
    return slots_[size_t(layer - ctx_.first_layer) * ctx_.max_seqs + seq];
  }

  // Address of token i's key (value) for kv head g.
  const uint8_t* key_ptr(const Slot& sl, int i, int g) const {
    const KvGeometry& geo = ctx_.geometry;
    const size_t es = element_size(type_);
    return sl.pages.page(size_t(i / kPageTokens)) +
           (size_t(g) * kPageTokens + i % kPageTokens) * geo.head_dim * es;
  }
  const uint8_t* value_ptr(const Slot& sl, int i, int g) const {
    return key_ptr(sl, i, g) + page_bytes_ / 2;
  }

  void append(Slot& sl, const float* k, const float* v, int n_new) {
    const KvGeometry& geo = ctx_.geometry;
    for (int t = 0; t < n_new; ++t) {
      const int i = sl.n + t;
      if (size_t(i / kPageTokens) >= sl.pages.n_pages()) sl.pages.add_page();
      for (int g = 0; g < geo.n_kv_heads; ++g) {
        const size_t src = size_t(t) * geo.kv_dim() + size_t(g) * geo.head_dim;
        encode_elements(type_, k + src, const_cast<uint8_t*>(key_ptr(sl, i, g)), geo.head_dim);
        encode_elements(type_, v + src, const_cast<uint8_t*>(value_ptr(sl, i, g)), geo.head_dim);
      }
    }
    sl.n += n_new;
  }

  void attend_engine(int layer, const std::vector<SeqAttention>& work) const {
    const KvGeometry& geo = ctx_.geometry;
    AttentionShape shape{geo.n_heads, geo.n_kv_heads, geo.head_dim, 0};
    shape.scale = 1.0f / std::sqrt(float(geo.head_dim));
    ::kvlab::attend(shape, work, layer, ctx_.observer ? *ctx_.observer : nullptr);
  }

  ElementType type_;
  size_t page_bytes_ = 0;
  std::vector<Slot> slots_;  // [n_layers of the range, max_seqs]; fixed at construction
};

}  // namespace

PolicyInfo full_policy_info() {
  PolicyInfo info;
  info.name = "full";
  info.summary = "every token kept at full precision (f32, f16 or bf16)";
  info.params = {{"dtype", ParamInfo::Kind::kChoice, "f16", {"f32", "f16", "bf16"}, 0, 0,
                  "element type of stored keys and values"}};
  info.make = [](const PolicyContext& ctx, const PolicyParams& p) -> StatusOr<std::unique_ptr<Policy>> {
    KVLAB_ASSIGN_OR_RETURN(ElementType type, parse_element_type(p.get("dtype")));
    return std::unique_ptr<Policy>(new FullPolicy(ctx, type));
  };
  info.test_specs = {"full:dtype=f32", "full:dtype=f16", "full:dtype=bf16"};
  info.off_spec = "full:dtype=f32";
  info.roundtrip_tolerance = [](const PolicyParams& p) {
    return element_relative_error(parse_element_type(p.get("dtype")).value());
  };
  return info;
}

}  // namespace kvlab
