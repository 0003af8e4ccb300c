// `aquakv` (AQUA-KV, kvcache/aquakv.h): per layer and sequence slot, in position order,
//
//   prefix   the first `prefix` tokens, exact (dtype), kept for good
//   chunks   compressed tokens: per chunk only HIGGS codes, f16 norms and its position range
//   buffer   the newest tokens, exact; when it would reach `buffer` tokens, it is compressed
//            together with the forward's new tokens into one chunk, layer by layer, after the
//            forward's attention has used them exactly
//
// Reading the chunks needs the prediction chain from the instance's first layer up. With
// decode=chain (the default) every forward rebuilds it from the codes, one layer per attend()
// call, in a per-sequence working copy of one layer's reconstruction (booked as kDerived); the
// cache holds nothing else. decode=cached keeps each chunk's reconstruction once computed (what
// the official code does to evaluate quality), also booked as kDerived: the same numbers, bit for
// bit, without the per-step cost (tests/aquakv_test.cc). kv_bytes counts codes, norms, positions,
// prefix and buffer in both; the predictors are side data.
#include <algorithm>
#include <cmath>
#include <memory>

#include "kvcache/policies/batch_attention.h"
#include "base/check.h"
#include "base/file.h"
#include "kvcache/aquakv.h"
#include "kvcache/formats.h"
#include "kvcache/policies/policies.h"
#include "kvcache/token_ring.h"

namespace kvlab {
namespace {

constexpr uint32_t kStateVersion = 1;
constexpr int kTile = 128;  // compressed tokens per attention block

struct AquaConfig {
  int bits = 2;
  int prefix = 4;
  int buffer = 128;
  bool predictors = true;
  bool cached = false;
  HiggsQuantizer::Rotation rotation = HiggsQuantizer::Rotation::kOrthogonal;
  KvFormat exact_format = KvFormat::kF16;
  std::string calib;
};

class AquaKvPolicy final : public Policy {
 public:
  static StatusOr<std::unique_ptr<Policy>> create(const PolicyContext& ctx, const AquaConfig& cfg) {
    const int C = ctx.geometry.kv_dim();
    auto p = std::unique_ptr<AquaKvPolicy>(new AquaKvPolicy(ctx, cfg));
    const int d = ctx.geometry.head_dim;
    KVLAB_ASSIGN_OR_RETURN(ResidualCodec first,
                           ResidualCodec::create(C, aqua_first_bits(cfg.bits), cfg.rotation, d));
    KVLAB_ASSIGN_OR_RETURN(ResidualCodec rest, ResidualCodec::create(C, cfg.bits, cfg.rotation, d));
    p->first_codec_.emplace(std::move(first));
    p->codec_.emplace(std::move(rest));
    if (cfg.predictors) {
      if (cfg.calib.empty()) {
        return invalid_argument("aquakv: predictors=on needs calib=FILE (made by kvlab calibrate), or predictors=off");
      }
      KVLAB_ASSIGN_OR_RETURN(AquaPredictors pr, AquaPredictors::load(cfg.calib, ctx.geometry, ctx.first_layer,
                                                                     ctx.last_layer, cfg.bits, cfg.rotation));
      p->predictors_.emplace(std::move(pr));
    } else if (!cfg.calib.empty()) {
      return invalid_argument("aquakv: calib=FILE given with predictors=off (plain HIGGS uses no calibration)");
    }
    p->side_bytes_ = (p->predictors_ ? p->predictors_->bytes() : 0) + p->first_codec_->side_bytes() + p->codec_->side_bytes();
    ctx.ledger->add(MemoryKind::kSide, p->side_bytes_);
    return std::unique_ptr<Policy>(std::move(p));
  }

  ~AquaKvPolicy() override { ctx_.ledger->sub(MemoryKind::kSide, side_bytes_); }

  void attend(int layer, const ForwardBatch& batch, const float* q, const float* k, const float* v,
              float* out) override {
    const int C = ctx_.geometry.kv_dim();
    std::vector<History> histories;
    histories.reserve(batch.seqs.size());
    std::vector<const KvHistory*> views;
    for (const SeqSpan& sp : batch.seqs) {
      const Slot& sl = slot(layer, sp.seq);
      KVLAB_CHECK(sl.next == sp.start_pos);
      const float *ck = nullptr, *cv = nullptr;
      if (sl.n_compressed > 0) {
        if (cfg_.cached) {
          ck = sl.recon_k.data(), cv = sl.recon_v.data();
        } else {
          Work& w = chain_to(sp.seq, layer);
          ck = w.k_post.data(), cv = w.v.data();
        }
      }
      histories.emplace_back(this, &sl, ck, cv);
      views.push_back(&histories.back());
    }
    const std::vector<float> k_rot = attend_batch(ctx_, layer, batch, q, k, v, out, views);

    for (const SeqSpan& sp : batch.seqs) {
      store(layer, sp.seq, sp.n_new, batch.positions.data() + sp.row, k + size_t(sp.row) * C,
            k_rot.data() + size_t(sp.row) * C, v + size_t(sp.row) * C);
    }
  }

  int stored_tokens(int layer, int seq) const override {
    const Slot& sl = slot(layer, seq);
    return sl.prefix.size() + sl.n_compressed + sl.buffer.size();
  }

  Status crop(int seq, int n) override {
    for (int l = ctx_.first_layer; l <= ctx_.last_layer; ++l) {
      Slot& sl = slot(l, seq);
      sl.prefix.truncate(std::min(sl.prefix.size(), n));
      const int keep = std::clamp(n - cfg_.prefix, 0, sl.n_compressed);
      while (!sl.chunks.empty() && sl.chunks.back().first >= cfg_.prefix + keep) sl.chunks.pop_back();
      if (!sl.chunks.empty()) {
        Chunk& c = sl.chunks.back();
        const int count = cfg_.prefix + keep - c.first;
        if (count < c.count) {
          // Codes of the kept tokens move to the front of each side's array.
          const int cb = codec_for(l).code_bytes(), nn = codec_for(l).n_norms();
          std::copy_n(c.codes.begin() + size_t(c.count) * cb, size_t(count) * cb, c.codes.begin() + size_t(count) * cb);
          std::copy_n(c.norms.begin() + size_t(c.count) * nn, size_t(count) * nn, c.norms.begin() + size_t(count) * nn);
          c.codes.resize(size_t(2 * count) * cb);
          c.norms.resize(size_t(2 * count) * nn);
          c.count = count;
        }
      }
      sl.n_compressed = keep;
      sl.recon_k.resize(std::min(sl.recon_k.size(), size_t(keep) * ctx_.geometry.kv_dim()));
      sl.recon_v.resize(sl.recon_k.size());
      const int buffer_first = sl.next - sl.buffer.size();
      sl.buffer.truncate(std::clamp(n - buffer_first, 0, sl.buffer.size()));
      sl.next = std::min(sl.next, n);
    }
    work_[size_t(seq)].layer = -1;
    return Status::Ok();
  }

  void reset(int seq) override {
    for (int l = ctx_.first_layer; l <= ctx_.last_layer; ++l) {
      Slot& sl = slot(l, seq);
      sl.prefix.clear();
      sl.buffer.clear();
      TrackedVector<Chunk>(sl.chunks.get_allocator()).swap(sl.chunks);
      TrackedVector<float>(sl.recon_k.get_allocator()).swap(sl.recon_k);
      TrackedVector<float>(sl.recon_v.get_allocator()).swap(sl.recon_v);
      sl.n_compressed = 0;
      sl.next = 0;
    }
    Work& w = work_[size_t(seq)];
    w.layer = -1;
    for (auto* a : {&w.k, &w.v, &w.k_post, &w.pending_k, &w.pending_v}) TrackedVector<float>(a->get_allocator()).swap(*a);
  }

  LayerContents read(int layer, int seq) const override {
    const Slot& sl = slot(layer, seq);
    const int C = ctx_.geometry.kv_dim();
    LayerContents c;
    {
      auto [k, v] = c.append(0, C, sl.prefix.size());
      sl.prefix.read(0, sl.prefix.size(), k, v);
    }
    if (sl.n_compressed > 0) {
      std::vector<float> k, v;
      reconstruct(seq, layer, &k, &v);
      rotate_from(k.data(), cfg_.prefix, sl.n_compressed);
      auto [kk, vv] = c.append(cfg_.prefix, C, sl.n_compressed);
      std::copy_n(k.data(), size_t(sl.n_compressed) * C, kk);
      std::copy_n(v.data(), size_t(sl.n_compressed) * C, vv);
    }
    {
      auto [k, v] = c.append(sl.next - sl.buffer.size(), C, sl.buffer.size());
      sl.buffer.read(0, sl.buffer.size(), k, v);
    }
    return c;
  }

  void save(BinaryWriter& out) const override {
    out.put<uint32_t>(kStateVersion);
    for (int l = ctx_.first_layer; l <= ctx_.last_layer; ++l) {
      for (int s = 0; s < ctx_.max_seqs; ++s) {
        const Slot& sl = slot(l, s);
        out.put<int32_t>(sl.next);
        sl.prefix.save(out);
        sl.buffer.save(out);
        out.put<int32_t>(int32_t(sl.chunks.size()));
        for (const Chunk& c : sl.chunks) {
          out.put<int32_t>(c.first);
          out.put<int32_t>(c.count);
          out.put_array(c.codes.data(), c.codes.size());
          out.put_array(c.norms.data(), c.norms.size());
        }
      }
    }
  }

  Status load(BinaryReader& in) override {
    KVLAB_RETURN_IF_ERROR(in.expect_version(kStateVersion, "aquakv state"));
    for (int l = ctx_.first_layer; l <= ctx_.last_layer; ++l) {
      const int cb = codec_for(l).code_bytes(), nn = codec_for(l).n_norms();
      for (int s = 0; s < ctx_.max_seqs; ++s) {
        Slot& sl = slot(l, s);
        int32_t next = 0, n_chunks = 0;
        KVLAB_RETURN_IF_ERROR(in.get(&next));
        KVLAB_RETURN_IF_ERROR(sl.prefix.load(in));
        KVLAB_RETURN_IF_ERROR(sl.buffer.load(in));
        KVLAB_RETURN_IF_ERROR(in.get(&n_chunks));
        if (n_chunks < 0 || n_chunks > ctx_.geometry.max_seq_len) return data_loss(in.what() + ": bad chunk count");
        for (int i = 0; i < n_chunks; ++i) {
          Chunk c = new_chunk();
          KVLAB_RETURN_IF_ERROR(in.get(&c.first));
          KVLAB_RETURN_IF_ERROR(in.get(&c.count));
          if (c.first != cfg_.prefix + sl.n_compressed || c.count < 1 || c.count > ctx_.geometry.max_seq_len) {
            return data_loss(in.what() + ": chunk positions out of order");
          }
          KVLAB_RETURN_IF_ERROR(in.get_array(&c.codes, int64_t(2) * c.count * cb));
          KVLAB_RETURN_IF_ERROR(in.get_array(&c.norms, int64_t(2) * c.count * nn));
          sl.n_compressed += c.count;
          sl.chunks.push_back(std::move(c));
        }
        const int stored = sl.prefix.size() + sl.n_compressed + sl.buffer.size();
        if (next != stored || next > ctx_.geometry.max_seq_len) return data_loss(in.what() + ": inconsistent slot lengths");
        sl.next = next;
      }
    }
    if (cfg_.cached) {
      for (int s = 0; s < ctx_.max_seqs; ++s) rebuild_cached(s);
    }
    return Status::Ok();
  }

 private:
  // One compressed chunk of one layer: codes [2 (K, V)][count][code_bytes], norms [2][count][n_norms].
  struct Chunk {
    int32_t first = 0, count = 0;
    TrackedVector<uint8_t> codes;
    TrackedVector<uint16_t> norms;
  };
  struct Slot {
    TokenRing prefix;
    TokenRing buffer;
    TrackedVector<Chunk> chunks;
    int n_compressed = 0;
    TrackedVector<float> recon_k, recon_v;  // decode=cached: [n_compressed, C], keys post-RoPE
    int next = 0;
  };
  // Per sequence: the chain of the compressed tokens at `layer` (decode=chain), and the chain of
  // the chunk this forward compresses (both modes), as left by the last layer that wrote it.
  struct Work {
    int layer = -1;
    TrackedVector<float> k, v, k_post;     // [n_compressed, C]: pre-RoPE K^, V^, post-RoPE K^
    TrackedVector<float> pending_k, pending_v;  // [chunk tokens, C]
  };

  // Prefix runs, compressed tiles of kTile tokens (f32 arrays [n, C]), buffer runs.
  class History final : public KvHistory {
   public:
    History(const AquaKvPolicy* p, const Slot* s, const float* ck, const float* cv)
        : p_(p), s_(s), ck_(ck), cv_(cv), n_prefix_(s->prefix.n_runs()),
          n_tiles_((s->n_compressed + kTile - 1) / kTile), n_buffer_(s->buffer.n_runs()) {}
    int n_blocks() const override { return n_prefix_ + n_tiles_ + n_buffer_; }
    HistoryBlock block(int b, int kv_head) const override {
      HistoryBlock hb;
      int first = 0;
      if (b < n_prefix_) {
        s_->prefix.run(b, kv_head, &hb.k, &hb.v, &first);
        hb.first_pos = first;
      } else if (b < n_prefix_ + n_tiles_) {
        const int t0 = (b - n_prefix_) * kTile;
        const int C = p_->ctx_.geometry.kv_dim(), d = p_->ctx_.geometry.head_dim;
        const size_t off = size_t(t0) * C + size_t(kv_head) * d;
        const int n = std::min(kTile, s_->n_compressed - t0);
        hb.k = f32_block(ck_ + off, n, d, C);
        hb.v = f32_block(cv_ + off, n, d, C);
        hb.first_pos = p_->cfg_.prefix + t0;
      } else {
        s_->buffer.run(b - n_prefix_ - n_tiles_, kv_head, &hb.k, &hb.v, &first);
        hb.first_pos = s_->next - s_->buffer.size() + first;
      }
      return hb;
    }

   private:
    const AquaKvPolicy* p_;
    const Slot* s_;
    const float *ck_, *cv_;
    int n_prefix_, n_tiles_, n_buffer_;
  };

  AquaKvPolicy(const PolicyContext& ctx, const AquaConfig& cfg) : Policy(ctx), cfg_(cfg) {
    const KvGeometry& g = ctx.geometry;
    const int buffer_capacity = std::min(cfg.buffer, g.max_seq_len);
    const int n_slots = (ctx.last_layer - ctx.first_layer + 1) * ctx.max_seqs;
    slots_.reserve(size_t(n_slots));
    for (int i = 0; i < n_slots; ++i) {
      slots_.push_back(Slot{
          TokenRing(ctx.ledger, MemoryKind::kExact, cfg.exact_format, g.n_kv_heads, g.head_dim, std::max(1, cfg.prefix)),
          TokenRing(ctx.ledger, MemoryKind::kExact, cfg.exact_format, g.n_kv_heads, g.head_dim, buffer_capacity),
          tracked<Chunk>(ctx.ledger, MemoryKind::kIndex), 0, tracked<float>(ctx.ledger, MemoryKind::kDerived),
          tracked<float>(ctx.ledger, MemoryKind::kDerived), 0});
    }
    for (int s = 0; s < ctx.max_seqs; ++s) {
      work_.push_back(Work{-1, tracked<float>(ctx.ledger, MemoryKind::kDerived), tracked<float>(ctx.ledger, MemoryKind::kDerived),
                           tracked<float>(ctx.ledger, MemoryKind::kDerived), tracked<float>(ctx.ledger, MemoryKind::kDerived),
                           tracked<float>(ctx.ledger, MemoryKind::kDerived)});
    }
  }

  Slot& slot(int layer, int seq) { return slots_[size_t(layer - ctx_.first_layer) * ctx_.max_seqs + seq]; }
  const Slot& slot(int layer, int seq) const { return slots_[size_t(layer - ctx_.first_layer) * ctx_.max_seqs + seq]; }
  // Rotates n pre-RoPE key rows [n, C] at positions first, first + 1, ...
  void rotate_from(float* k, int first, int n) const {
    std::vector<int32_t> pos;
    for (int i = 0; i < n; ++i) pos.push_back(first + i);
    ctx_.rope->rotate(k, n, ctx_.geometry.n_kv_heads, pos.data());
  }
  const ResidualCodec& codec_for(int layer) const { return layer == ctx_.first_layer ? *first_codec_ : *codec_; }
  const AquaLayerPredictor* predictor_for(int layer) const {
    return layer == ctx_.first_layer || !predictors_ ? nullptr : &predictors_->at(layer);
  }
  Chunk new_chunk() {
    return Chunk{0, 0, tracked<uint8_t>(ctx_.ledger, MemoryKind::kPayload), tracked<uint16_t>(ctx_.ledger, MemoryKind::kMeta)};
  }
  static LayerCodes codes_of(Chunk& c, int cb, int nn) {
    return {c.codes.data(), c.norms.data(), c.codes.data() + size_t(c.count) * cb, c.norms.data() + size_t(c.count) * nn};
  }

  // One layer of the chain over a slot's chunks: prev_* [n_compressed, C] of layer - 1 (ignored
  // at the first layer) -> k, v [n_compressed, C]. Chunk by chunk: matmul rows are independent,
  // so the result equals the chain computed when each chunk was written.
  void decode_layer(int layer, int seq, const float* prev_k, const float* prev_v, float* k, float* v) const {
    const Slot& sl = slot(layer, seq);
    const ResidualCodec& codec = codec_for(layer);
    const int C = ctx_.geometry.kv_dim(), cb = codec.code_bytes(), nn = codec.n_norms();
    int64_t t = 0;
    for (const Chunk& c : sl.chunks) {
      Chunk& mc = const_cast<Chunk&>(c);  // codes_of gives mutable pointers; decode only reads
      const size_t off = size_t(t) * C;
      aqua_decode(codec, predictor_for(layer), prev_k ? prev_k + off : nullptr, prev_v ? prev_v + off : nullptr,
                  codes_of(mc, cb, nn), c.count, k + off, v + off);
      t += c.count;
    }
  }

  // K^, V^ (pre-RoPE) of seq's compressed tokens at `layer`, from the first layer up.
  void reconstruct(int seq, int layer, std::vector<float>* k, std::vector<float>* v) const {
    const size_t n = size_t(slot(layer, seq).n_compressed) * ctx_.geometry.kv_dim();
    std::vector<float> pk(n), pv(n);  // layer l - 1
    k->assign(n, 0.0f);
    v->assign(n, 0.0f);
    for (int l = ctx_.first_layer; l <= layer; ++l) {
      if (l > ctx_.first_layer) {
        std::swap(pk, *k);
        std::swap(pv, *v);
      }
      decode_layer(l, seq, pk.data(), pv.data(), k->data(), v->data());
    }
  }

  // decode=chain: the working copy advanced to `layer` (one step from layer - 1 in a forward;
  // from the first layer otherwise), keys also rotated for attention.
  Work& chain_to(int seq, int layer) {
    Work& w = work_[size_t(seq)];
    const int C = ctx_.geometry.kv_dim();
    const int n = slot(layer, seq).n_compressed;
    const size_t size = size_t(n) * C;
    if (!(w.layer == layer - 1 && layer > ctx_.first_layer && w.k.size() == size)) {
      // Not continuing this forward's chain: rebuilt from the first layer up.
      std::vector<float> k(size), v(size);
      if (layer > ctx_.first_layer) reconstruct(seq, layer - 1, &k, &v);
      w.k.assign(k.begin(), k.end());
      w.v.assign(v.begin(), v.end());
    }
    TrackedVector<float> k(size, 0.0f, w.k.get_allocator()), v(size, 0.0f, w.v.get_allocator());
    decode_layer(layer, seq, w.k.data(), w.v.data(), k.data(), v.data());
    w.k.swap(k);
    w.v.swap(v);
    w.k_post.assign(w.k.begin(), w.k.end());
    rotate_from(w.k_post.data(), cfg_.prefix, n);
    w.layer = layer;
    return w;
  }

  // decode=cached after a restore: every layer's reconstruction of seq, in one pass up the chain.
  void rebuild_cached(int seq) {
    const size_t n = size_t(slot(ctx_.first_layer, seq).n_compressed) * ctx_.geometry.kv_dim();
    std::vector<float> pk(n), pv(n), k(n), v(n);  // layers l - 1 and l, pre-RoPE
    for (int l = ctx_.first_layer; l <= ctx_.last_layer; ++l) {
      Slot& sl = slot(l, seq);
      KVLAB_CHECK(size_t(sl.n_compressed) * ctx_.geometry.kv_dim() == n);
      decode_layer(l, seq, pk.data(), pv.data(), k.data(), v.data());
      sl.recon_k.assign(k.begin(), k.end());
      sl.recon_v.assign(v.begin(), v.end());
      rotate_from(sl.recon_k.data(), cfg_.prefix, sl.n_compressed);
      std::swap(pk, k);
      std::swap(pv, v);
    }
  }

  // Stores n new tokens of seq in `layer` after attention. k pre-RoPE, k_rot post-RoPE, v: [n, C].
  void store(int layer, int seq, int n, const int32_t* positions, const float* k, const float* k_rot, const float* v) {
    Slot& sl = slot(layer, seq);
    const int C = ctx_.geometry.kv_dim();
    int t = 0;
    for (; t < n && positions[t] < cfg_.prefix; ++t) sl.prefix.push(k_rot + size_t(t) * C, v + size_t(t) * C);
    const int m = n - t;
    sl.next += n;
    if (m == 0) return;
    if (sl.buffer.size() + m < std::min(cfg_.buffer, ctx_.geometry.max_seq_len)) {
      for (; t < n; ++t) sl.buffer.push(k_rot + size_t(t) * C, v + size_t(t) * C);
      return;
    }
    // Buffer and new tokens become one chunk: exact pre-RoPE K and V [count, C].
    const int nb = sl.buffer.size(), count = nb + m;
    std::vector<float> xk(size_t(count) * C), xv(xk.size());
    std::vector<int32_t> pos;
    sl.buffer.read(0, nb, xk.data(), xv.data());
    for (int i = 0; i < nb; ++i) pos.push_back(sl.next - n - nb + i);
    ctx_.rope->unrotate(xk.data(), nb, ctx_.geometry.n_kv_heads, pos.data());
    std::copy_n(k + size_t(t) * C, size_t(m) * C, &xk[size_t(nb) * C]);
    std::copy_n(v + size_t(t) * C, size_t(m) * C, &xv[size_t(nb) * C]);
    sl.buffer.clear();

    Work& w = work_[size_t(seq)];
    const ResidualCodec& codec = codec_for(layer);
    const int cb = codec.code_bytes(), nn = codec.n_norms();
    Chunk c = new_chunk();
    c.first = cfg_.prefix + sl.n_compressed;
    c.count = count;
    KVLAB_CHECK(c.first == sl.next - count);
    c.codes.resize(size_t(2 * count) * cb);
    c.norms.resize(size_t(2 * count) * nn);
    std::vector<float> kh(xk.size()), vh(xk.size());
    const bool chained = layer > ctx_.first_layer && w.pending_k.size() == xk.size();
    KVLAB_CHECK(chained || layer == ctx_.first_layer || !predictors_);
    aqua_encode(codec, predictor_for(layer), chained ? w.pending_k.data() : nullptr, chained ? w.pending_v.data() : nullptr,
                xk.data(), xv.data(), count, codes_of(c, cb, nn), kh.data(), vh.data());
    sl.chunks.push_back(std::move(c));
    sl.n_compressed += count;
    if (layer < ctx_.last_layer) {
      w.pending_k.assign(kh.begin(), kh.end());
      w.pending_v.assign(vh.begin(), vh.end());
    } else {
      TrackedVector<float>(w.pending_k.get_allocator()).swap(w.pending_k);
      TrackedVector<float>(w.pending_v.get_allocator()).swap(w.pending_v);
    }
    if (cfg_.cached) {
      rotate_from(kh.data(), sl.next - count, count);
      sl.recon_k.insert(sl.recon_k.end(), kh.begin(), kh.end());
      sl.recon_v.insert(sl.recon_v.end(), vh.begin(), vh.end());
    }
  }

  AquaConfig cfg_;
  std::optional<ResidualCodec> first_codec_, codec_;
  std::optional<AquaPredictors> predictors_;
  int64_t side_bytes_ = 0;
  std::vector<Slot> slots_;  // [layers of the range, max_seqs]
  std::vector<Work> work_;   // [max_seqs]
};

}  // namespace

PolicyInfo aquakv_policy_info() {
  PolicyInfo info;
  info.name = "aquakv";
  info.summary = "AQUA-KV: cross-layer predictors + HIGGS-quantized residuals, exact prefix and buffer";
  info.params = {
      {"bits", ParamInfo::Kind::kChoice, "2", {"2", "3", "4", "inf"}, 0, 0,
       "bits per residual value (inf: f32 residuals, the quantization off); the first layer uses 4"},
      {"calib", ParamInfo::Kind::kString, "none", {}, 0, 0, "calibration file from kvlab calibrate (predictors=on)"},
      {"predictors", ParamInfo::Kind::kChoice, "on", {"on", "off"}, 0, 0, "off: plain HIGGS at the same bits"},
      {"prefix", ParamInfo::Kind::kInt, "4", {}, 0, 1 << 20, "first tokens kept exact"},
      {"buffer", ParamInfo::Kind::kInt, "128", {}, 1, 1 << 20, "recent tokens kept exact; compressed when full"},
      {"dtype", ParamInfo::Kind::kChoice, "f16", {"f32", "f16"}, 0, 0, "storage of the exact tokens"},
      {"rotation", ParamInfo::Kind::kChoice, "orthogonal", {"orthogonal", "hadamard"}, 0, 0,
       "HIGGS rotation: one random orthogonal matrix over all heads (1 norm per vector) or Hadamard per head"},
      {"decode", ParamInfo::Kind::kChoice, "chain", {"chain", "cached"}, 0, 0,
       "chain: rebuild the chain from the codes every forward; cached: keep reconstructions (kDerived)"},
  };
  info.make = [](const PolicyContext& ctx, const PolicyParams& p) -> StatusOr<std::unique_ptr<Policy>> {
    AquaConfig cfg;
    cfg.bits = aqua_bits_param(p.get("bits"));
    cfg.prefix = p.get_int("prefix");
    cfg.buffer = p.get_int("buffer");
    cfg.predictors = p.get("predictors") == "on";
    cfg.cached = p.get("decode") == "cached";
    KVLAB_ASSIGN_OR_RETURN(cfg.exact_format, parse_dense_format(p.get("dtype")));
    cfg.calib = p.get("calib") == "none" ? "" : p.get("calib");
    cfg.rotation = aqua_rotation_param(p.get("rotation"));
    if (ctx.geometry.kv_dim() % 2 != 0) return invalid_argument("aquakv: needs an even K/V width");
    return AquaKvPolicy::create(ctx, cfg);
  };
  info.test_specs = {"aquakv:bits=2,predictors=off,buffer=16", "aquakv:bits=4,predictors=off,prefix=0,buffer=8,decode=cached",
                     "aquakv:bits=3,calib={test_dir}/aquakv3.calib,buffer=16",
                     "aquakv:bits=inf,calib={test_dir}/aquakvinf.calib,buffer=8,dtype=f32"};
  info.crosses_layers = [](const PolicyParams& p) { return p.get("predictors") == "on"; };
  info.off_spec = "aquakv:bits=inf,predictors=off,prefix=0,buffer=1048576,dtype=f32";
  info.prepare_test = [](const KvGeometry& g, const std::string& dir) -> Status {
    // Small random predictors for the test geometry (a stable chain), one file per bit width used above.
    for (int bits : {3, kAquaExactBits}) {
      AquaPredictors p;
      p.model_fingerprint = g.model_fingerprint;
      p.n_layers = g.n_layers, p.n_kv_heads = g.n_kv_heads, p.head_dim = g.head_dim;
      p.first_layer = 0, p.last_layer = g.n_layers - 1, p.bits = bits;
      const int C = g.kv_dim();
      uint32_t state = 12345;
      auto rnd = [&state] {
        state = state * 1664525u + 1013904223u;
        return (float(state >> 8) / float(1 << 24) - 0.5f) * 0.2f;
      };
      for (int l = 1; l < g.n_layers; ++l) {
        AquaLayerPredictor lp;
        for (auto [vec, size] : {std::pair{&lp.a, C * C}, std::pair{&lp.a0, C}, std::pair{&lp.b, 2 * C * C}, std::pair{&lp.b0, C}}) {
          vec->resize(size_t(size));
          for (float& x : *vec) x = rnd();
        }
        p.layers.push_back(std::move(lp));
      }
      KVLAB_RETURN_IF_ERROR(p.save(dir + (bits == 3 ? "/aquakv3.calib" : "/aquakvinf.calib")));
    }
    return Status::Ok();
  };
  info.roundtrip_tolerance = [](const PolicyParams& p) {
    // Vector quantization error of one element is not bounded by the step of a scalar grid: an
    // element can carry most of its vector's norm. Budget: the vector's whole norm at 2-3 bits,
    // a half at 4 (checked empirically on Gaussian data); f32 residuals: rounding of the chain.
    const std::string bits = p.get("bits");
    const double exact = dense_relative_error(parse_dense_format(p.get("dtype")).value());
    if (bits == "inf") return exact + 1e-5;
    return exact + (bits == "4" ? 0.5 : 1.0);
  };
  return info;
}

}  // namespace kvlab
