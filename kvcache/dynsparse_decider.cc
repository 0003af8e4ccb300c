#include "kvcache/dynsparse_decider.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <numeric>
#include <random>

#include "base/check.h"
#include "base/serialize.h"
#include "kernels/cpu/matmul.h"

namespace kvlab {
namespace {

constexpr char kMagic[8] = {'K', 'V', 'L', 'A', 'B', '-', 'D', 'S'};
constexpr uint32_t kVersion = 2;  // 2: the label's skip
constexpr float kLnEps = 1e-5f;

const char* kind_name(DeciderKind k) { return k == DeciderKind::kMlp ? "mlp" : "probe"; }

float gelu(float z) { return 0.5f * z * (1.0f + std::erf(z * float(M_SQRT1_2))); }
float gelu_grad(float z) {
  return 0.5f * (1.0f + std::erf(z * float(M_SQRT1_2))) + z * std::exp(-0.5f * z * z) * float(0.5 * M_2_SQRTPI * M_SQRT1_2);
}

// Mean cross-entropy of the keep probability sigmoid(s) against y, in nats: softplus(-s) or
// softplus(s), written so that no |s| overflows.
double logistic_loss(float s, uint8_t y) {
  const double m = y ? -double(s) : double(s);
  return m > 0 ? m + std::log1p(std::exp(-m)) : std::log1p(std::exp(m));
}

// LayerNorm of rows x [n, dim] into xhat (no affine) and a = xhat * gain + bias.
void layer_norm(const float* x, int64_t n, int dim, const DeciderNet& net, float* xhat, float* a) {
  for (int64_t t = 0; t < n; ++t) {
    const float* r = x + t * dim;
    double mean = 0, var = 0;
    for (int i = 0; i < dim; ++i) mean += r[i];
    mean /= dim;
    for (int i = 0; i < dim; ++i) var += (r[i] - mean) * (r[i] - mean);
    const float inv = float(1.0 / std::sqrt(var / dim + kLnEps));
    for (int i = 0; i < dim; ++i) {
      const float h = float(r[i] - mean) * inv;
      if (xhat) xhat[t * dim + i] = h;
      a[t * dim + i] = h * net.ln_gain[size_t(i)] + net.ln_bias[size_t(i)];
    }
  }
}

// z [n, out] = a [n, in] W^T + b
void linear_forward(const DeciderNet::Linear& L, const float* a, int64_t n, float* z) {
  matmul(a, n, L.in, L.w.data(), L.out, z);
  for (int64_t t = 0; t < n; ++t) {
    for (int o = 0; o < L.out; ++o) z[t * L.out + o] += L.b[size_t(o)];
  }
}

void transpose(const float* a, int64_t rows, int64_t cols, std::vector<float>& out) {
  out.resize(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) out[size_t(c * rows + r)] = a[r * cols + c];
  }
}

// Every trainable tensor of a net, in one order, for Adam's state and the gradients.
std::vector<std::vector<float>*> tensors(DeciderNet& net, bool affine_ln) {
  std::vector<std::vector<float>*> t;
  if (affine_ln) t = {&net.ln_gain, &net.ln_bias};
  for (auto& L : net.layers) {
    t.push_back(&L.w);
    t.push_back(&L.b);
  }
  return t;
}

}  // namespace

int64_t DeciderNet::n_params() const {
  int64_t n = int64_t(ln_gain.size() + ln_bias.size());
  for (const Linear& L : layers) n += int64_t(L.w.size() + L.b.size());
  return n;
}

DeciderNet DeciderNet::make(DeciderKind kind, int dim, uint64_t seed) {
  DeciderNet net;
  net.ln_gain.assign(size_t(dim), 1.0f);
  net.ln_bias.assign(size_t(dim), 0.0f);
  std::vector<int> widths = {dim};
  if (kind == DeciderKind::kMlp) widths.insert(widths.end(), {512, 256, 128});
  widths.push_back(2);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i + 1 < widths.size(); ++i) {
    Linear L;
    L.in = widths[i];
    L.out = widths[i + 1];
    std::uniform_real_distribution<float> u(-1.0f / std::sqrt(float(L.in)), 1.0f / std::sqrt(float(L.in)));
    L.w.resize(size_t(L.in) * L.out);
    L.b.resize(size_t(L.out));
    for (float& x : L.w) x = u(rng);
    for (float& x : L.b) x = u(rng);
    net.layers.push_back(std::move(L));
  }
  return net;
}

void DeciderNet::scores(const float* h, int64_t n, float* out, std::vector<float>& scratch) const {
  int widest = dim();
  for (const Linear& L : layers) widest = std::max(widest, L.out);
  scratch.resize(size_t(2 * n * widest));
  float* a = scratch.data();
  float* z = a + n * widest;
  layer_norm(h, n, dim(), *this, nullptr, a);
  for (size_t i = 0; i < layers.size(); ++i) {
    linear_forward(layers[i], a, n, z);
    if (i + 1 < layers.size()) {
      for (int64_t j = 0; j < n * layers[i].out; ++j) z[j] = gelu(z[j]);
    }
    std::swap(a, z);
  }
  for (int64_t t = 0; t < n; ++t) out[t] = a[2 * t] - a[2 * t + 1];
}

DeciderFile DeciderFile::untrained(const KvGeometry& g, int layer, DeciderKind kind, uint64_t seed) {
  DeciderFile f;
  f.model_fingerprint = g.model_fingerprint;
  f.n_layers = g.n_layers;
  f.layer = layer;
  f.dim = g.q_dim();
  f.kind = kind;
  f.net = DeciderNet::make(kind, f.dim, seed);
  return f;
}

Status DeciderFile::save(const std::string& path) const {
  BinaryWriter w;
  w.put_bytes(kMagic, sizeof kMagic);
  w.put<uint32_t>(kVersion);
  w.put<uint64_t>(model_fingerprint);
  for (int32_t x : {int32_t(n_layers), int32_t(layer), int32_t(dim), int32_t(kind), int32_t(horizon), int32_t(skip)}) {
    w.put<int32_t>(x);
  }
  w.put<int64_t>(train_tokens);
  w.put<int64_t>(valid_tokens);
  w.put<double>(valid_auc);
  w.put<double>(valid_accuracy);
  w.put_array(net.ln_gain.data(), net.ln_gain.size());
  w.put_array(net.ln_bias.data(), net.ln_bias.size());
  w.put<int32_t>(int32_t(net.layers.size()));
  for (const DeciderNet::Linear& L : net.layers) {
    w.put<int32_t>(L.in);
    w.put<int32_t>(L.out);
    w.put_array(L.w.data(), L.w.size());
    w.put_array(L.b.data(), L.b.size());
  }
  return write_checked_file(path, std::move(w));
}

StatusOr<DeciderFile> DeciderFile::load(const std::string& path, const KvGeometry& g, int layer, DeciderKind kind) {
  KVLAB_ASSIGN_OR_RETURN(std::vector<uint8_t> data,
                         read_checked_file(path, kMagic, kVersion, "a dynsparse decider file",
                                           "kvlab calibrate --policy dynsparse:decider=mlp|probe,..."));
  const std::string what = "decider file " + path;
  BinaryReader r(data.data(), data.size(), what);
  DeciderFile f;
  int32_t v[6];
  KVLAB_RETURN_IF_ERROR(r.get(&f.model_fingerprint));
  for (int32_t& x : v) KVLAB_RETURN_IF_ERROR(r.get(&x));
  f.n_layers = v[0], f.layer = v[1], f.dim = v[2], f.horizon = v[4], f.skip = v[5];
  if (v[3] != 0 && v[3] != 1) return data_loss(what + ": unknown decider kind " + std::to_string(v[3]));
  f.kind = DeciderKind(v[3]);
  KVLAB_RETURN_IF_ERROR(r.get(&f.train_tokens));
  KVLAB_RETURN_IF_ERROR(r.get(&f.valid_tokens));
  KVLAB_RETURN_IF_ERROR(r.get(&f.valid_auc));
  KVLAB_RETURN_IF_ERROR(r.get(&f.valid_accuracy));
  // Llama-style models: the hidden size is n_heads * head_dim.
  if (f.n_layers != g.n_layers || f.dim != g.q_dim() ||
      (g.model_fingerprint != 0 && f.model_fingerprint != g.model_fingerprint)) {
    char buf[200];
    std::snprintf(buf, sizeof buf, ": made for another model (fingerprint %016llx, %d layers, hidden size %d; this model %016llx, %d, %d)",
                  (unsigned long long)f.model_fingerprint, f.n_layers, f.dim, (unsigned long long)g.model_fingerprint,
                  g.n_layers, g.q_dim());
    return invalid_argument(what + buf);
  }
  if (f.layer != layer) {
    return invalid_argument(what + ": trained at layer=" + std::to_string(f.layer) + ", the policy asks for layer=" +
                            std::to_string(layer) + " (calibrate one for that layer)");
  }
  if (f.kind != kind) {
    return invalid_argument(what + ": holds a decider=" + kind_name(f.kind) + ", the policy asks for decider=" + kind_name(kind));
  }
  KVLAB_RETURN_IF_ERROR(r.get_array(&f.net.ln_gain, f.dim));
  KVLAB_RETURN_IF_ERROR(r.get_array(&f.net.ln_bias, f.dim));
  int32_t n_linear = 0;
  KVLAB_RETURN_IF_ERROR(r.get(&n_linear));
  if (n_linear != (kind == DeciderKind::kMlp ? 4 : 1)) return data_loss(what + ": " + std::to_string(n_linear) + " linear layers");
  int in = f.dim;
  for (int i = 0; i < n_linear; ++i) {
    DeciderNet::Linear L;
    KVLAB_RETURN_IF_ERROR(r.get(&L.in));
    KVLAB_RETURN_IF_ERROR(r.get(&L.out));
    if (L.in != in || L.out < 1 || L.out > 65536 || (i + 1 == n_linear && L.out != 2)) {
      return data_loss(what + ": linear layer " + std::to_string(i) + " is " + std::to_string(L.in) + " x " +
                       std::to_string(L.out));
    }
    KVLAB_RETURN_IF_ERROR(r.get_array(&L.w, int64_t(L.in) * L.out));
    KVLAB_RETURN_IF_ERROR(r.get_array(&L.b, L.out));
    in = L.out;
    f.net.layers.push_back(std::move(L));
  }
  if (r.remaining() != 0) return data_loss(what + ": " + std::to_string(r.remaining()) + " bytes after the network");
  return f;
}

float knorm_score(const float* k, const KvGeometry& g) {
  double norms = 0;
  for (int h = 0; h < g.n_kv_heads; ++h) {
    double sq = 0;
    for (int e = 0; e < g.head_dim; ++e) sq += double(k[h * g.head_dim + e]) * k[h * g.head_dim + e];
    norms += std::sqrt(sq);
  }
  return float(-norms / g.n_kv_heads);
}

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

bool is_choice(const std::string& decider) {
  return std::find_if(std::begin(TokenScorer::kChoices), std::end(TokenScorer::kChoices),
                      [&](const char* c) { return decider == c; }) != std::end(TokenScorer::kChoices);
}

}  // namespace

StatusOr<TokenScorer> TokenScorer::make(const std::string& policy, const std::string& decider, const std::string& calib,
                                        uint64_t seed, const KvGeometry& g, int layer) {
  KVLAB_CHECK(is_choice(decider));
  TokenScorer t;
  t.kind_ = decider == "random" ? Kind::kRandom : decider == "knorm" ? Kind::kKnorm : decider == "probe" ? Kind::kProbe : Kind::kMlp;
  t.seed_ = seed;
  t.geometry_ = g;
  if (t.learned() && calib.empty()) {
    return invalid_argument(policy + ": decider=" + decider + " needs calib=FILE (made by kvlab calibrate --policy " +
                            "dynsparse:decider=" + decider + ",layer=" + std::to_string(layer) + ")");
  }
  if (!t.learned() && !calib.empty()) {
    return invalid_argument(policy + ": calib=FILE given with decider=" + decider + ", which learns nothing");
  }
  if (t.learned()) {
    KVLAB_ASSIGN_OR_RETURN(DeciderFile f, DeciderFile::load(calib, g, layer,
                                                            t.kind_ == Kind::kMlp ? DeciderKind::kMlp : DeciderKind::kProbe));
    t.net_ = std::move(f.net);
  }
  return t;
}

void TokenScorer::observe(const ForwardBatch& batch, const float* h, int dim) {
  if (!learned()) return;
  KVLAB_CHECK(dim == net_.dim());
  const auto t0 = std::chrono::steady_clock::now();
  // Working buffers of this call only: nothing the ledger does not book outlives a forward.
  std::vector<float> rows, scratch;
  for (const SeqSpan& sp : batch.seqs) {
    if (generated(sp)) rows.insert(rows.end(), h + size_t(sp.row) * dim, h + size_t(sp.row + 1) * dim);
  }
  const int64_t n = int64_t(rows.size()) / dim;
  std::vector<float> out(static_cast<size_t>(n));
  if (n) net_.scores(rows.data(), n, out.data(), scratch);
  hidden_scores_.assign(size_t(batch.n_rows()), 0.0f);
  size_t i = 0;
  for (const SeqSpan& sp : batch.seqs) {
    if (generated(sp)) hidden_scores_[size_t(sp.row)] = out[i++];
  }
  seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  scored_ += n;
}

void TokenScorer::report(JsonObject& out) const {
  if (scored_) out.add("decider_us_per_token", 1e6 * seconds_ / double(scored_));
}

float TokenScorer::score(int row, const float* k, uint64_t index) const {
  switch (kind_) {
    case Kind::kRandom:
      return float(double(splitmix64(seed_ * 0x100000001b3ull + index) >> 11) * 0x1.0p-53);
    case Kind::kKnorm:
      return knorm_score(k, geometry_);
    case Kind::kProbe:
    case Kind::kMlp:
      KVLAB_CHECK(size_t(row) < hidden_scores_.size());  // observe() saw this forward
      return hidden_scores_[size_t(row)];
  }
  return 0;
}

double roc_auc(const std::vector<float>& scores, const std::vector<uint8_t>& labels) {
  std::vector<size_t> order(scores.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  // Mann-Whitney: the mean rank of the positives, tied scores sharing their mean rank.
  double rank_sum = 0;
  int64_t pos = 0;
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j < order.size() && scores[order[j]] == scores[order[i]]) ++j;
    const double mean_rank = 0.5 * double(i + 1 + j);
    for (size_t k = i; k < j; ++k) {
      if (labels[order[k]]) {
        rank_sum += mean_rank;
        ++pos;
      }
    }
    i = j;
  }
  const int64_t neg = int64_t(scores.size()) - pos;
  if (pos == 0 || neg == 0) return 0.5;
  return (rank_sum - 0.5 * double(pos) * double(pos + 1)) / (double(pos) * double(neg));
}

StatusOr<DeciderNet> fit_decider(const DeciderFitConfig& cfg, const std::vector<float>& x, const std::vector<uint8_t>& y,
                                 int dim, int64_t valid_from, DeciderFitReport* report) {
  const int64_t n = int64_t(y.size());
  if (dim < 1 || int64_t(x.size()) != n * dim) return invalid_argument("fit_decider: x is not [n, dim]");
  if (valid_from < 1 || valid_from >= n) return invalid_argument("fit_decider: needs training and held-out tokens");
  if (cfg.batch < 1 || cfg.max_epochs < 1) return invalid_argument("fit_decider: batch and max_epochs must be positive");
  const bool affine_ln = cfg.kind == DeciderKind::kMlp;  // the probe's LayerNorm only standardizes
  DeciderNet net = DeciderNet::make(cfg.kind, dim, cfg.seed);
  const size_t n_layers = net.layers.size();

  // Adam state and gradients, one per trainable tensor.
  std::vector<std::vector<float>*> params = tensors(net, affine_ln);
  std::vector<std::vector<float>> m, v, grad;
  for (auto* p : params) {
    m.emplace_back(p->size(), 0.0f);
    v.emplace_back(p->size(), 0.0f);
    grad.emplace_back(p->size(), 0.0f);
  }
  const size_t g0 = affine_ln ? 2 : 0;  // grad index of the first linear layer's weights

  // Activations of one batch: acts[0] = LayerNorm output, acts[i] = GELU(z[i-1]); z[i] = layer i.
  const int64_t B = cfg.batch;
  std::vector<float> xhat(size_t(B * dim));
  std::vector<std::vector<float>> acts(n_layers), z(n_layers);
  std::vector<float> dz, da, at, dzt, wt, score(static_cast<size_t>(B));
  auto forward = [&](const float* xb, int64_t nb) {
    acts[0].resize(size_t(nb * dim));
    layer_norm(xb, nb, dim, net, xhat.data(), acts[0].data());
    for (size_t i = 0; i < n_layers; ++i) {
      const auto& L = net.layers[i];
      z[i].resize(size_t(nb * L.out));
      linear_forward(L, acts[i].data(), nb, z[i].data());
      if (i + 1 < n_layers) {
        acts[i + 1].resize(z[i].size());
        for (size_t j = 0; j < z[i].size(); ++j) acts[i + 1][j] = gelu(z[i][j]);
      }
    }
    for (int64_t t = 0; t < nb; ++t) score[size_t(t)] = z.back()[size_t(2 * t)] - z.back()[size_t(2 * t + 1)];
  };
  // Scores and mean loss over rows [from, to).
  auto evaluate = [&](int64_t from, int64_t to, std::vector<float>* scores) {
    double loss = 0;
    scores->resize(size_t(to - from));
    for (int64_t s = from; s < to; s += B) {
      const int64_t nb = std::min(B, to - s);
      forward(&x[size_t(s * dim)], nb);
      for (int64_t t = 0; t < nb; ++t) {
        (*scores)[size_t(s - from + t)] = score[size_t(t)];
        loss += logistic_loss(score[size_t(t)], y[size_t(s + t)]);
      }
    }
    return loss / double(to - from);
  };

  std::vector<int64_t> order(static_cast<size_t>(valid_from));
  std::iota(order.begin(), order.end(), int64_t(0));
  std::mt19937_64 rng(cfg.seed ^ 0x5deece66dull);
  std::vector<float> xb(size_t(B * dim));
  DeciderNet best = net;
  double best_loss = INFINITY;
  int64_t step = 0;
  std::vector<float> valid_scores, train_scores;
  DeciderFitReport rep;
  for (int epoch = 1; epoch <= cfg.max_epochs; ++epoch) {
    std::shuffle(order.begin(), order.end(), rng);
    double train_loss = 0;
    for (int64_t s = 0; s < valid_from; s += B) {
      const int64_t nb = std::min(B, valid_from - s);
      for (int64_t t = 0; t < nb; ++t) {
        std::copy_n(&x[size_t(order[size_t(s + t)] * dim)], dim, &xb[size_t(t * dim)]);
      }
      forward(xb.data(), nb);
      // d(mean loss)/d logits: (sigmoid(s) - y) / nb on channel 0, its negative on channel 1.
      dz.assign(size_t(nb * 2), 0.0f);
      for (int64_t t = 0; t < nb; ++t) {
        const uint8_t label = y[size_t(order[size_t(s + t)])];
        train_loss += logistic_loss(score[size_t(t)], label);
        const float d = (1.0f / (1.0f + std::exp(-score[size_t(t)])) - float(label)) / float(nb);
        dz[size_t(2 * t)] = d;
        dz[size_t(2 * t + 1)] = -d;
      }
      for (size_t i = n_layers; i-- > 0;) {
        const auto& L = net.layers[i];
        auto& gw = grad[g0 + 2 * i];
        auto& gb = grad[g0 + 2 * i + 1];
        // dW [out, in] = dz^T [out, nb] . a [nb, in]: matmul's w is a^T [in, nb].
        transpose(dz.data(), nb, L.out, dzt);
        transpose(acts[i].data(), nb, L.in, at);
        matmul(dzt.data(), L.out, nb, at.data(), L.in, gw.data());
        std::fill(gb.begin(), gb.end(), 0.0f);
        for (int64_t t = 0; t < nb; ++t) {
          for (int o = 0; o < L.out; ++o) gb[size_t(o)] += dz[size_t(t * L.out + o)];
        }
        if (i == 0 && !affine_ln) break;
        // da [nb, in] = dz [nb, out] . W [out, in]: matmul's w is W^T [in, out].
        transpose(L.w.data(), L.out, L.in, wt);
        da.resize(size_t(nb * L.in));
        matmul(dz.data(), nb, L.out, wt.data(), L.in, da.data());
        if (i == 0) break;
        for (size_t j = 0; j < da.size(); ++j) da[j] *= gelu_grad(z[i - 1][j]);
        dz.swap(da);
      }
      if (affine_ln) {
        std::fill(grad[0].begin(), grad[0].end(), 0.0f);
        std::fill(grad[1].begin(), grad[1].end(), 0.0f);
        for (int64_t t = 0; t < nb; ++t) {
          for (int i = 0; i < dim; ++i) {
            grad[0][size_t(i)] += da[size_t(t * dim + i)] * xhat[size_t(t * dim + i)];
            grad[1][size_t(i)] += da[size_t(t * dim + i)];
          }
        }
      }
      // AdamW (beta 0.9, 0.999), decay on the linear weights only.
      ++step;
      const double c1 = 1.0 - std::pow(0.9, double(step)), c2 = 1.0 - std::pow(0.999, double(step));
      for (size_t p = 0; p < params.size(); ++p) {
        const bool decay = p >= g0 && (p - g0) % 2 == 0;
        std::vector<float>& w = *params[p];
        for (size_t j = 0; j < w.size(); ++j) {
          const float g = grad[p][j];
          m[p][j] = 0.9f * m[p][j] + 0.1f * g;
          v[p][j] = 0.999f * v[p][j] + 0.001f * g * g;
          const double update = (m[p][j] / c1) / (std::sqrt(v[p][j] / c2) + 1e-8);
          w[j] -= float(cfg.lr * (update + (decay ? cfg.weight_decay * w[j] : 0.0)));
        }
      }
    }
    const double valid_loss = evaluate(valid_from, n, &valid_scores);
    rep.epochs = epoch;
    if (!std::isfinite(valid_loss)) return internal_error("fit_decider: the held-out loss diverged at epoch " + std::to_string(epoch));
    if (valid_loss < best_loss) {
      best_loss = valid_loss;
      best = net;
      rep.best_epoch = epoch;
      rep.train_loss = train_loss / double(valid_from);
      rep.valid_loss = valid_loss;
    } else if (epoch - rep.best_epoch >= cfg.patience) {
      break;
    }
  }
  net = std::move(best);
  const std::vector<uint8_t> valid_y(y.begin() + valid_from, y.end());
  const int64_t train_eval = std::min<int64_t>(valid_from, 65536);  // AUC on the first training rows
  evaluate(0, train_eval, &train_scores);
  evaluate(valid_from, n, &valid_scores);
  rep.train_auc = roc_auc(train_scores, std::vector<uint8_t>(y.begin(), y.begin() + train_eval));
  rep.valid_auc = roc_auc(valid_scores, valid_y);
  int64_t correct = 0;
  for (size_t i = 0; i < valid_scores.size(); ++i) correct += (valid_scores[i] > 0) == (valid_y[i] != 0);
  rep.valid_accuracy = double(correct) / double(valid_scores.size());
  if (report) *report = rep;
  return net;
}

}  // namespace kvlab
