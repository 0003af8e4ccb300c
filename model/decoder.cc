// Model::forward: the reference Llama decoder.
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "base/check.h"
#include "kernels/cpu/matmul.h"
#include "model/model.h"

namespace kvlab {
namespace {

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, rows of width dim.
void rms_norm(const float* x, const float* w, int64_t n_rows, int dim, float eps, float* out) {
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* xr = x + r * dim;
    float ss = 0.0f;
    for (int i = 0; i < dim; ++i) ss += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(ss / float(dim) + eps);
    float* o = out + r * dim;
    for (int i = 0; i < dim; ++i) o[i] = xr[i] * inv * w[i];
  }
}

void linear(const AlignedVector<float>& x, int64_t n_rows, int64_t in, const AlignedVector<float>& w,
            int64_t out, AlignedVector<float>& y) {
  y.resize(size_t(n_rows * out));
  matmul(x.data(), n_rows, in, w.data(), out, y.data());
}

}  // namespace

namespace {

// The rows of `parts`, one after another, in storage that starts on a cache line; each part is
// freed once copied, so loading holds at most one matrix twice.
AlignedVector<float> aligned_rows(std::initializer_list<std::vector<float>*> parts) {
  size_t n = 0;
  for (const std::vector<float>* p : parts) n += p->size();
  AlignedVector<float> out;
  out.reserve(n);
  for (std::vector<float>* p : parts) {
    out.insert(out.end(), p->begin(), p->end());
    std::vector<float>().swap(*p);
  }
  return out;
}

}  // namespace

Model::Model(std::string path, ModelConfig config, Weights weights, std::unique_ptr<Tokenizer> tokenizer)
    : path_(std::move(path)),
      config_(std::move(config)),
      token_embedding_(aligned_rows({&weights.token_embedding})),
      final_norm_(aligned_rows({&weights.final_norm})),
      classifier_(aligned_rows({&weights.output})),
      tokenizer_(std::move(tokenizer)),
      rope_(std::make_unique<RopeTable>(config_.head_dim, config_.rope_theta, config_.rope_style,
                                        config_.max_seq_len)) {
  for (LayerWeights& w : weights.layers) {
    Layer l;
    l.attn_norm = aligned_rows({&w.attn_norm});
    l.wqkv = aligned_rows({&w.wq, &w.wk, &w.wv});
    l.wo = aligned_rows({&w.wo});
    l.ffn_norm = aligned_rows({&w.ffn_norm});
    l.w_gate_up = aligned_rows({&w.w_gate, &w.w_up});
    l.w_down = aligned_rows({&w.w_down});
    layers_.push_back(std::move(l));
  }
  // Shape, then the K and V rows of each fused QKV matrix, 8 bytes at a time.
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](uint64_t x) { h = (h ^ x) * 1099511628211ull; };
  for (int x : {config_.n_layers, config_.dim, config_.n_heads, config_.n_kv_heads, config_.head_dim}) mix(uint64_t(x));
  const size_t q_size = size_t(config_.n_heads) * config_.head_dim * config_.dim;
  for (const Layer& l : layers_) {
    const float* kv = l.wqkv.data() + q_size;
    const size_t n = l.wqkv.size() - q_size;
    for (size_t i = 0; i + 1 < n; i += 2) {
      uint64_t x;
      std::memcpy(&x, kv + i, sizeof x);
      mix(x);
    }
  }
  fingerprint_ = h;
}

KvGeometry Model::cache_geometry() const {
  KvGeometry g;
  g.n_layers = config_.n_layers;
  g.n_heads = config_.n_heads;
  g.n_kv_heads = config_.n_kv_heads;
  g.head_dim = config_.head_dim;
  g.max_seq_len = config_.max_seq_len;
  g.model_fingerprint = fingerprint_;
  return g;
}

int64_t Model::weight_bytes() const {
  int64_t n = 0;
  for (const Layer& l : layers_) {
    for (const auto* t : {&l.attn_norm, &l.wqkv, &l.wo, &l.ffn_norm, &l.w_gate_up, &l.w_down}) n += int64_t(t->size());
  }
  n += int64_t(final_norm_.size() + (classifier_.empty() ? token_embedding_ : classifier_).size());
  return n * int64_t(sizeof(float));
}

StatusOr<std::unique_ptr<KvCache>> Model::make_cache(std::string_view spec, int max_seqs) const {
  return KvCache::create(cache_geometry(), rope_.get(), spec, max_seqs);
}

Status Model::forward(KvCache& cache, std::span<const SeqInput> inputs, LogitsMode mode,
                      std::vector<float>* logits) const {
  const KvGeometry geo = cache_geometry();
  const KvGeometry& cg = cache.geometry();
  if (cg.n_layers != geo.n_layers || cg.n_heads != geo.n_heads || cg.n_kv_heads != geo.n_kv_heads ||
      cg.head_dim != geo.head_dim || cg.max_seq_len != geo.max_seq_len) {
    return invalid_argument("the cache was made for a model of another shape");
  }
  std::vector<int> seqs, counts;
  std::vector<int32_t> tokens;
  for (const SeqInput& in : inputs) {
    seqs.push_back(in.seq);
    counts.push_back(int(in.tokens.size()));
    for (int32_t t : in.tokens) {
      if (t < 0 || t >= config_.vocab_size) {
        return invalid_argument("token id " + std::to_string(t) + " is outside the vocabulary [0, " +
                                std::to_string(config_.vocab_size) + ")");
      }
      tokens.push_back(t);
    }
  }
  KVLAB_ASSIGN_OR_RETURN(ForwardBatch batch, cache.plan(seqs, counts));

  const int D = config_.dim, H = config_.hidden_dim;
  const int qd = geo.q_dim(), kvd = geo.kv_dim();
  const int64_t n = batch.n_rows();
  // Activations start on a cache line too: they are the other operand of every product.
  AlignedVector<float> x(size_t(n) * D), xn(size_t(n) * D);  // residual stream, normed copy
  AlignedVector<float> qkv, q(size_t(n) * qd), k(size_t(n) * kvd), v(size_t(n) * kvd);
  AlignedVector<float> att(size_t(n) * qd), o, gate_up, h(size_t(n) * H), down;
  for (int64_t r = 0; r < n; ++r) {
    const float* e = &token_embedding_[size_t(tokens[r]) * D];
    std::copy(e, e + D, &x[size_t(r) * D]);
  }
  for (int l = 0; l < config_.n_layers; ++l) {
    const Layer& w = layers_[l];
    if (cache.wants_hidden(l)) cache.observe_hidden(l, batch, x.data(), D);
    rms_norm(x.data(), w.attn_norm.data(), n, D, config_.norm_eps, xn.data());
    linear(xn, n, D, w.wqkv, qd + 2 * kvd, qkv);
    for (int64_t r = 0; r < n; ++r) {
      const float* row = &qkv[size_t(r) * (qd + 2 * kvd)];
      std::copy(row, row + qd, &q[size_t(r) * qd]);
      std::copy(row + qd, row + qd + kvd, &k[size_t(r) * kvd]);
      std::copy(row + qd + kvd, row + qd + 2 * kvd, &v[size_t(r) * kvd]);
    }
    rope_->rotate(q.data(), n, geo.n_heads, batch.positions.data());
    cache.attend(l, batch, q.data(), k.data(), v.data(), att.data());
    linear(att, n, qd, w.wo, D, o);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];

    rms_norm(x.data(), w.ffn_norm.data(), n, D, config_.norm_eps, xn.data());
    linear(xn, n, D, w.w_gate_up, 2 * H, gate_up);
    for (int64_t r = 0; r < n; ++r) {
      const float* g = &gate_up[size_t(r) * 2 * H];
      const float* u = g + H;
      float* hr = &h[size_t(r) * H];
      for (int i = 0; i < H; ++i) hr[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    }
    linear(h, n, H, w.w_down, D, down);
    for (size_t i = 0; i < x.size(); ++i) x[i] += down[i];
  }
  cache.commit(batch);

  if (mode == LogitsMode::kNone) return Status::Ok();
  KVLAB_CHECK(logits != nullptr);
  // Rows whose logits are wanted, normed, then one product with the classifier.
  std::vector<int64_t> rows;
  if (mode == LogitsMode::kAll) {
    for (int64_t r = 0; r < n; ++r) rows.push_back(r);
  } else {
    for (const SeqSpan& sp : batch.seqs) rows.push_back(sp.row + sp.n_new - 1);
  }
  AlignedVector<float> sel(rows.size() * D);
  for (size_t i = 0; i < rows.size(); ++i) {
    rms_norm(&x[size_t(rows[i]) * D], final_norm_.data(), 1, D, config_.norm_eps, &sel[i * D]);
  }
  logits->resize(rows.size() * size_t(config_.vocab_size));
  const AlignedVector<float>& cls = classifier_.empty() ? token_embedding_ : classifier_;
  matmul(sel.data(), int64_t(rows.size()), D, cls.data(), config_.vocab_size, logits->data());
  return Status::Ok();
}

}  // namespace kvlab
