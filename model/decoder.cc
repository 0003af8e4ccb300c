// Model::forward: the reference Llama decoder.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "base/check.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/softmax.h"
#include "model/model.h"

namespace kvlab {
namespace {

// Below this many elements an element-wise step runs on one thread: forking a team costs ~2 us,
// more than the work (a decode step's rows are a few thousand elements).
constexpr int64_t kMinParallelElements = int64_t(1) << 16;

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, rows of width dim. The sum of squares runs in 16
// interleaved partial sums (element i into sum i % 16), added in a fixed tree: the compiler
// vectorizes it (one running sum is a chain of dependent adds, 4 cycles each), and a row's
// result does not depend on the other rows or the thread count.
void rms_norm(const float* x, const float* w, int64_t n_rows, int dim, float eps, float* out) {
  constexpr int kSums = 16;
#pragma omp parallel for schedule(static) if (n_rows * dim >= kMinParallelElements)
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* xr = x + r * dim;
    float part[kSums] = {};
    int i = 0;
    for (; i + kSums <= dim; i += kSums) {
      for (int j = 0; j < kSums; ++j) part[j] += xr[i + j] * xr[i + j];
    }
    for (; i < dim; ++i) part[i % kSums] += xr[i] * xr[i];
    for (int width = kSums / 2; width > 0; width /= 2) {
      for (int j = 0; j < width; ++j) part[j] += part[j + width];
    }
    const float inv = 1.0f / std::sqrt(part[0] / float(dim) + eps);
    float* o = out + r * dim;
    for (int j = 0; j < dim; ++j) o[j] = xr[j] * inv * w[j];
  }
}

// h[r, i] = silu(gate[r, i]) * up[r, i] = gate / (1 + exp(-gate)) * up, from rows [gate | up] of
// width 2 * hidden. exp is the kernels' vector exp (kernels/cpu/softmax.h, within 1 ulp; the
// same bits for any row count), not one libm call per element.
void swiglu(const float* gate_up, int64_t n_rows, int hidden, float* h) {
#pragma omp parallel for schedule(static) if (n_rows * hidden >= kMinParallelElements)
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* g = gate_up + r * 2 * hidden;
    const float* u = g + hidden;
    float* hr = h + r * hidden;
    for (int i = 0; i < hidden; ++i) hr[i] = -g[i];
    exp_inplace(hr, hidden);
    for (int i = 0; i < hidden; ++i) hr[i] = g[i] / (1.0f + hr[i]) * u[i];
  }
}

}  // namespace

int64_t Model::Matrix::bytes() const {
  return int64_t(f32.size() * sizeof(float) + codes.size() + scales.size() * sizeof(float));
}

void Model::Matrix::multiply(const float* x, int64_t n, float* y) const {
  if (packed()) {
    matmul(x, n, blocks(), rows, y);
  } else {
    matmul(x, n, cols, f32.data(), rows, y);
  }
}

void Model::Matrix::row(int64_t r, float* out) const {
  if (packed()) {
    dequantize_rows(blocks(), r, r + 1, out);
  } else {
    std::copy(f32.data() + r * cols, f32.data() + (r + 1) * cols, out);
  }
}

namespace {

void linear(const AlignedVector<float>& x, int64_t n_rows, const Model::Matrix& w, AlignedVector<float>& y) {
  y.resize(size_t(n_rows * w.rows));
  w.multiply(x.data(), n_rows, y.data());
}

// The rows of `parts`, one after another, in storage that starts on a cache line; each part is
// freed once copied, so loading holds at most one matrix twice.
AlignedVector<float> aligned_rows(const std::vector<std::vector<float>*>& parts) {
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

// The rows of the named matrices stacked into one Matrix of width `cols`: in their block format
// when the file stored every part in the same one (weights.packed), else f32. Frees the parts.
Model::Matrix stacked(Weights& weights, int64_t cols,
                      std::initializer_list<std::pair<std::vector<float>*, std::string>> parts) {
  Model::Matrix m;
  m.cols = cols;
  std::vector<const PackedMatrix*> packed;
  for (const auto& [values, name] : parts) {
    const auto it = weights.packed.find(name);
    packed.push_back(it == weights.packed.end() ? nullptr : &it->second);
    m.rows += packed.back() ? packed.back()->rows : int64_t(values->size()) / std::max<int64_t>(cols, 1);
  }
  const BlockFormat format = packed.front() ? packed.front()->format : BlockFormat::kQ4_1;
  if (std::all_of(packed.begin(), packed.end(), [&](const PackedMatrix* p) { return p && p->format == format; })) {
    m.format = format;
    for (const PackedMatrix* p : packed) {
      m.codes.insert(m.codes.end(), p->codes.begin(), p->codes.end());
      m.scales.insert(m.scales.end(), p->scales.begin(), p->scales.end());
    }
  } else {
    std::vector<std::vector<float>*> f32;
    for (const auto& [values, name] : parts) {
      if (values->empty()) *values = weights.dense(*values, name);  // a packed part among f32 ones
      f32.push_back(values);
    }
    m.f32 = aligned_rows(f32);
  }
  for (const auto& [values, name] : parts) {
    std::vector<float>().swap(*values);
    weights.packed.erase(name);
  }
  return m;
}

}  // namespace

Model::Model(std::string path, ModelConfig config, Weights weights, std::unique_ptr<Tokenizer> tokenizer)
    : path_(std::move(path)),
      config_(std::move(config)),
      final_norm_(aligned_rows({&weights.final_norm})),
      tokenizer_(std::move(tokenizer)),
      rope_(std::make_unique<RopeTable>(config_.head_dim, config_.rope_theta, config_.rope_style,
                                        config_.max_seq_len)) {
  // Shape, then the W_k and W_v rows of each layer as f32, 8 bytes at a time.
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](uint64_t x) { h = (h ^ x) * 1099511628211ull; };
  for (int x : {config_.n_layers, config_.dim, config_.n_heads, config_.n_kv_heads, config_.head_dim}) mix(uint64_t(x));
  for (size_t l = 0; l < weights.layers.size(); ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    std::vector<float> kv = weights.dense(weights.layers[l].wk, p + "attn_k.weight");
    const std::vector<float> v = weights.dense(weights.layers[l].wv, p + "attn_v.weight");
    kv.insert(kv.end(), v.begin(), v.end());
    for (size_t i = 0; i + 1 < kv.size(); i += 2) {
      uint64_t x;
      std::memcpy(&x, kv.data() + i, sizeof x);
      mix(x);
    }
  }
  fingerprint_ = h;

  const int64_t dim = config_.dim;
  for (size_t i = 0; i < weights.layers.size(); ++i) {
    LayerWeights& w = weights.layers[i];
    const std::string p = "blk." + std::to_string(i) + ".";
    Layer l;
    l.attn_norm = aligned_rows({&w.attn_norm});
    l.wqkv = stacked(weights, dim, {{&w.wq, p + "attn_q.weight"}, {&w.wk, p + "attn_k.weight"}, {&w.wv, p + "attn_v.weight"}});
    l.wo = stacked(weights, int64_t(config_.n_heads) * config_.head_dim, {{&w.wo, p + "attn_output.weight"}});
    l.ffn_norm = aligned_rows({&w.ffn_norm});
    l.w_gate_up = stacked(weights, dim, {{&w.w_gate, p + "ffn_gate.weight"}, {&w.w_up, p + "ffn_up.weight"}});
    l.w_down = stacked(weights, config_.hidden_dim, {{&w.w_down, p + "ffn_down.weight"}});
    layers_.push_back(std::move(l));
  }
  token_embedding_ = stacked(weights, dim, {{&weights.token_embedding, "token_embd.weight"}});
  if (!weights.tied()) classifier_ = stacked(weights, dim, {{&weights.output, "output.weight"}});
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
    n += int64_t((l.attn_norm.size() + l.ffn_norm.size()) * sizeof(float));
    for (const Matrix* m : {&l.wqkv, &l.wo, &l.w_gate_up, &l.w_down}) n += m->bytes();
  }
  n += int64_t(final_norm_.size() * sizeof(float));
  return n + (classifier_.rows == 0 ? token_embedding_ : classifier_).bytes();
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
    token_embedding_.row(tokens[r], &x[size_t(r) * D]);
  }
  for (int l = 0; l < config_.n_layers; ++l) {
    const Layer& w = layers_[l];
    if (cache.wants_hidden(l)) cache.observe_hidden(l, batch, x.data(), D);
    rms_norm(x.data(), w.attn_norm.data(), n, D, config_.norm_eps, xn.data());
    linear(xn, n, w.wqkv, qkv);
    for (int64_t r = 0; r < n; ++r) {
      const float* row = &qkv[size_t(r) * (qd + 2 * kvd)];
      std::copy(row, row + qd, &q[size_t(r) * qd]);
      std::copy(row + qd, row + qd + kvd, &k[size_t(r) * kvd]);
      std::copy(row + qd + kvd, row + qd + 2 * kvd, &v[size_t(r) * kvd]);
    }
    rope_->rotate(q.data(), n, geo.n_heads, batch.positions.data());
    cache.attend(l, batch, q.data(), k.data(), v.data(), att.data());
    linear(att, n, w.wo, o);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];

    rms_norm(x.data(), w.ffn_norm.data(), n, D, config_.norm_eps, xn.data());
    linear(xn, n, w.w_gate_up, gate_up);
    swiglu(gate_up.data(), n, H, h.data());
    linear(h, n, w.w_down, down);
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
  (classifier_.rows == 0 ? token_embedding_ : classifier_).multiply(sel.data(), int64_t(rows.size()), logits->data());
  return Status::Ok();
}

}  // namespace kvlab
