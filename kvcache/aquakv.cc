#include "kvcache/aquakv.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/file.h"
#include "base/half.h"
#include "base/serialize.h"
#include "kernels/cpu/matmul.h"

namespace kvlab {
namespace {

constexpr char kMagic[8] = {'K', 'V', 'L', 'A', 'B', '-', 'A', 'Q'};

// out[n, C] = x[n, k] W^T + w0.
void affine(const float* x, int64_t n, int64_t k, const std::vector<float>& w, const std::vector<float>& w0, int C,
            float* out) {
  matmul(x, n, k, w.data(), C, out);
  for (int64_t t = 0; t < n; ++t) {
    for (int o = 0; o < C; ++o) out[t * C + o] += w0[size_t(o)];
  }
}

// [a | b] row by row: [n, C] and [n, C] -> [n, 2C].
std::vector<float> concat_rows(const float* a, const float* b, int64_t n, int C) {
  std::vector<float> out(size_t(n) * 2 * C);
  for (int64_t t = 0; t < n; ++t) {
    std::memcpy(&out[size_t(t) * 2 * C], a + t * C, sizeof(float) * C);
    std::memcpy(&out[size_t(t) * 2 * C + C], b + t * C, sizeof(float) * C);
  }
  return out;
}

// The prediction of keys (side 0) or values (side 1) of n tokens into out [n, C]; zero without
// a predictor.
void predict(const AquaLayerPredictor* pred, int side, const float* prev_k, const float* prev_v,
             const float* k_hat, int64_t n, int C, float* out) {
  if (!pred) {
    std::fill(out, out + n * C, 0.0f);
  } else if (side == 0) {
    affine(prev_k, n, C, pred->a, pred->a0, C, out);
  } else {
    const std::vector<float> in = concat_rows(k_hat, prev_v, n, C);
    affine(in.data(), n, 2 * C, pred->b, pred->b0, C, out);
  }
}

}  // namespace

int aqua_bits_param(const std::string& bits) { return bits == "inf" ? kAquaExactBits : std::stoi(bits); }

HiggsQuantizer::Rotation aqua_rotation_param(const std::string& rotation) {
  return rotation == "hadamard" ? HiggsQuantizer::Rotation::kHadamard : HiggsQuantizer::Rotation::kOrthogonal;
}

// ---- ResidualCodec ------------------------------------------------------------------------------

StatusOr<ResidualCodec> ResidualCodec::create(int dim, int bits, HiggsQuantizer::Rotation rotation, int block) {
  ResidualCodec c;
  c.dim_ = dim;
  c.bits_ = bits;
  if (bits != kAquaExactBits) {
    KVLAB_ASSIGN_OR_RETURN(HiggsQuantizer q, HiggsQuantizer::create(dim, bits, rotation,
                                                                        rotation == HiggsQuantizer::Rotation::kHadamard ? block : 0));
    c.q_.emplace(std::move(q));
  }
  return c;
}

int ResidualCodec::code_bytes() const { return q_ ? q_->code_bytes() : dim_ * int(sizeof(float)); }
int ResidualCodec::n_norms() const { return q_ ? q_->n_norms() : 0; }
int64_t ResidualCodec::side_bytes() const { return q_ ? 2 * int64_t(q_->rotation().capacity()) * int64_t(sizeof(float)) : 0; }

void ResidualCodec::encode(const float* x, int64_t n, uint8_t* codes, uint16_t* norms) const {
  if (q_) q_->quantize(x, n, codes, norms);
  else std::memcpy(codes, x, size_t(n) * dim_ * sizeof(float));
}

void ResidualCodec::add_decoded(const uint8_t* codes, const uint16_t* norms, int64_t n, float* out) const {
  std::vector<float> r(size_t(n) * dim_);
  if (q_) q_->dequantize(codes, norms, n, r.data());
  else std::memcpy(r.data(), codes, r.size() * sizeof(float));
  for (size_t i = 0; i < r.size(); ++i) out[i] += r[i];
}

// ---- the chain ---------------------------------------------------------------------------------

namespace {

// One side (0 keys, 1 values) of one layer for n tokens: out_hat = prediction + decoded residual.
// With x (the exact vectors) the residual x - prediction is encoded into codes/norms first.
// `prediction`: the prediction if already computed (calibration), else null.
void chain_side(const ResidualCodec& codec, const AquaLayerPredictor* pred, int side, const float* prev_k,
                const float* prev_v, const float* k_hat, const float* x, int64_t n, uint8_t* codes, uint16_t* norms,
                float* out_hat, const float* prediction = nullptr) {
  const int C = codec.dim();
  if (prediction) std::copy_n(prediction, size_t(n) * C, out_hat);
  else predict(pred, side, prev_k, prev_v, k_hat, n, C, out_hat);
  if (x) {
    std::vector<float> res(size_t(n) * C);
    for (size_t i = 0; i < res.size(); ++i) res[i] = x[i] - out_hat[i];
    codec.encode(res.data(), n, codes, norms);
  }
  codec.add_decoded(codes, norms, n, out_hat);
}

}  // namespace

void aqua_encode(const ResidualCodec& codec, const AquaLayerPredictor* pred, const float* prev_k,
                 const float* prev_v, const float* k, const float* v, int64_t n, const LayerCodes& out,
                 float* k_hat, float* v_hat) {
  // Keys first: the value predictor reads this layer's reconstructed keys.
  chain_side(codec, pred, 0, prev_k, prev_v, nullptr, k, n, out.k_codes, out.k_norms, k_hat);
  chain_side(codec, pred, 1, prev_k, prev_v, k_hat, v, n, out.v_codes, out.v_norms, v_hat);
}

void aqua_decode(const ResidualCodec& codec, const AquaLayerPredictor* pred, const float* prev_k,
                 const float* prev_v, const LayerCodes& in, int64_t n, float* k_hat, float* v_hat) {
  chain_side(codec, pred, 0, prev_k, prev_v, nullptr, nullptr, n, in.k_codes, in.k_norms, k_hat);
  chain_side(codec, pred, 1, prev_k, prev_v, k_hat, nullptr, n, in.v_codes, in.v_norms, v_hat);
}

// ---- calibration file ----------------------------------------------------------------------------

int64_t AquaPredictors::bytes() const {
  int64_t n = 0;
  for (const AquaLayerPredictor& p : layers) n += int64_t(p.a.capacity() + p.a0.capacity() + p.b.capacity() + p.b0.capacity());
  return n * int64_t(sizeof(float));
}

Status AquaPredictors::save(const std::string& path) const {
  BinaryWriter w;
  w.put_bytes(kMagic, sizeof kMagic);
  w.put<uint32_t>(kAquaFileVersion);
  w.put<uint64_t>(model_fingerprint);
  for (int x : {n_layers, n_kv_heads, head_dim, first_layer, last_layer, bits, int(rotation)}) w.put<int32_t>(x);
  w.put<int64_t>(calibration_tokens);
  for (const AquaLayerPredictor& p : layers) {
    w.put_array(p.a.data(), p.a.size());
    w.put_array(p.a0.data(), p.a0.size());
    w.put_array(p.b.data(), p.b.size());
    w.put_array(p.b0.data(), p.b0.size());
    for (double x : {p.k_rel_train, p.k_rel_valid, p.v_rel_train, p.v_rel_valid}) w.put<double>(x);
  }
  return write_checked_file(path, std::move(w));
}

StatusOr<AquaPredictors> AquaPredictors::load(const std::string& path, const KvGeometry& g, int first_layer,
                                              int last_layer, int bits, HiggsQuantizer::Rotation rotation) {
  KVLAB_ASSIGN_OR_RETURN(std::vector<uint8_t> data, read_checked_file(path, kMagic, kAquaFileVersion,
                                                                     "an AQUA-KV calibration file", "kvlab calibrate"));
  const std::string what = "calibration file " + path;
  BinaryReader r(data.data(), data.size(), what);
  AquaPredictors p;
  int32_t f[7];
  KVLAB_RETURN_IF_ERROR(r.get(&p.model_fingerprint));
  for (int32_t& x : f) KVLAB_RETURN_IF_ERROR(r.get(&x));
  p.n_layers = f[0], p.n_kv_heads = f[1], p.head_dim = f[2], p.first_layer = f[3], p.last_layer = f[4], p.bits = f[5];
  p.rotation = f[6] == 1 ? HiggsQuantizer::Rotation::kHadamard : HiggsQuantizer::Rotation::kOrthogonal;
  KVLAB_RETURN_IF_ERROR(r.get(&p.calibration_tokens));
  if (p.n_layers != g.n_layers || p.n_kv_heads != g.n_kv_heads || p.head_dim != g.head_dim ||
      (g.model_fingerprint != 0 && p.model_fingerprint != g.model_fingerprint)) {
    char buf[160];
    std::snprintf(buf, sizeof buf, ": made for another model (fingerprint %016llx, %d layers x %d x %d; this model %016llx, %d x %d x %d)",
                  (unsigned long long)p.model_fingerprint, p.n_layers, p.n_kv_heads, p.head_dim,
                  (unsigned long long)g.model_fingerprint, g.n_layers, g.n_kv_heads, g.head_dim);
    return invalid_argument(what + buf);
  }
  if (p.bits != bits) {
    return invalid_argument(what + ": calibrated for bits=" + (p.bits == kAquaExactBits ? "inf" : std::to_string(p.bits)) +
                            ", the policy asks for bits=" + (bits == kAquaExactBits ? "inf" : std::to_string(bits)));
  }
  if (p.rotation != rotation || (f[6] != 0 && f[6] != 1)) {
    return invalid_argument(what + ": calibrated with the " + (f[6] == 1 ? "hadamard" : "orthogonal") +
                            " rotation, the policy asks for the other one");
  }
  if (p.first_layer != first_layer || p.last_layer < last_layer || p.last_layer >= p.n_layers || p.first_layer > p.last_layer) {
    return invalid_argument(what + ": calibrated for layers " + std::to_string(p.first_layer) + "-" +
                            std::to_string(p.last_layer) + ", the policy covers layers " + std::to_string(first_layer) +
                            "-" + std::to_string(last_layer) + " (its range must start where the file's does)");
  }
  const int64_t C = p.dim();
  for (int l = p.first_layer + 1; l <= p.last_layer; ++l) {
    AquaLayerPredictor lp;
    KVLAB_RETURN_IF_ERROR(r.get_array(&lp.a, C * C));
    KVLAB_RETURN_IF_ERROR(r.get_array(&lp.a0, C));
    KVLAB_RETURN_IF_ERROR(r.get_array(&lp.b, C * 2 * C));
    KVLAB_RETURN_IF_ERROR(r.get_array(&lp.b0, C));
    for (double* x : {&lp.k_rel_train, &lp.k_rel_valid, &lp.v_rel_train, &lp.v_rel_valid}) KVLAB_RETURN_IF_ERROR(r.get(x));
    for (const auto* v : {&lp.a, &lp.a0, &lp.b, &lp.b0}) {
      for (float x : *v) {
        if (!std::isfinite(x)) return data_loss(what + ": non-finite predictor weight in layer " + std::to_string(l));
      }
    }
    p.layers.push_back(std::move(lp));
  }
  if (r.remaining() != 0) return data_loss(what + ": " + std::to_string(r.remaining()) + " unexpected trailing bytes");
  return p;
}

// ---- calibration ---------------------------------------------------------------------------------

namespace {

// Ridge regression with a bias: W [(p + 1), C] minimizing ||[X 1] W - Y||^2 + lambda ||W||^2.
//   x: [n, p], y: [n, C]; rows [0, n_fit) are used.
Status fit_ridge(const float* x, const float* y, int64_t n_fit, int p, int C, std::vector<float>* w,
                 std::vector<float>* w0) {
  const int q = p + 1;
  std::vector<double> gram(size_t(q) * q, 0.0), xty(size_t(q) * C, 0.0);
  constexpr int64_t kChunk = 4096;
  std::vector<float> xt(size_t(q) * kChunk), yt(size_t(C) * kChunk), g(size_t(q) * q), xy(size_t(q) * C);
  for (int64_t t0 = 0; t0 < n_fit; t0 += kChunk) {
    const int64_t m = std::min(kChunk, n_fit - t0);
    // Transposed chunk (the products below are rows-times-rows, matmul's layout), in tiles of
    // 64 tokens so that the strided writes stay in cache.
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < m; b += 64) {
      const int64_t e = std::min(m, b + 64);
      for (int i = 0; i < p; ++i) {
        for (int64_t t = b; t < e; ++t) xt[size_t(i) * m + t] = x[(t0 + t) * p + i];
      }
      for (int64_t t = b; t < e; ++t) xt[size_t(p) * m + t] = 1.0f;
      for (int o = 0; o < C; ++o) {
        for (int64_t t = b; t < e; ++t) yt[size_t(o) * m + t] = y[(t0 + t) * C + o];
      }
    }
    matmul(xt.data(), q, m, xt.data(), q, g.data());
    matmul(xt.data(), q, m, yt.data(), C, xy.data());
    for (size_t i = 0; i < g.size(); ++i) gram[i] += g[i];
    for (size_t i = 0; i < xy.size(); ++i) xty[i] += xy[i];
  }
  double diag = 0;
  for (int i = 0; i < q; ++i) diag += std::fabs(gram[size_t(i) * q + i]);
  const double lambda = 1e-3 * diag / q;
  for (int i = 0; i < q; ++i) gram[size_t(i) * q + i] += lambda;
  // Cholesky G = L L^T (lower, in place).
  for (int j = 0; j < q; ++j) {
    double d = gram[size_t(j) * q + j];
    for (int k = 0; k < j; ++k) d -= gram[size_t(j) * q + k] * gram[size_t(j) * q + k];
    if (!(d > 0)) return internal_error("ridge regression: the damped Gram matrix is not positive definite");
    const double ljj = std::sqrt(d);
    gram[size_t(j) * q + j] = ljj;
    for (int i = j + 1; i < q; ++i) {
      double s = gram[size_t(i) * q + j];
      for (int k = 0; k < j; ++k) s -= gram[size_t(i) * q + k] * gram[size_t(j) * q + k];
      gram[size_t(i) * q + j] = s / ljj;
    }
  }
  // Solve L L^T W = X^T Y column by column.
  w->assign(size_t(C) * p, 0.0f);
  w0->assign(size_t(C), 0.0f);
  std::vector<double> z(q);
  for (int o = 0; o < C; ++o) {
    for (int i = 0; i < q; ++i) {
      double s = xty[size_t(i) * C + o];
      for (int k = 0; k < i; ++k) s -= gram[size_t(i) * q + k] * z[k];
      z[i] = s / gram[size_t(i) * q + i];
    }
    for (int i = q - 1; i >= 0; --i) {
      double s = z[i];
      for (int k = i + 1; k < q; ++k) s -= gram[size_t(k) * q + i] * z[k];
      z[i] = s / gram[size_t(i) * q + i];
    }
    for (int i = 0; i < p; ++i) (*w)[size_t(o) * p + i] = float(z[i]);
    (*w0)[size_t(o)] = float(z[p]);
  }
  return Status::Ok();
}

// ||pred - y||^2 / ||y||^2 over rows [t0, t1).
double rel_mse(const float* pred, const float* y, int64_t t0, int64_t t1, int C) {
  double num = 0, den = 0;
  for (int64_t i = t0 * C; i < t1 * C; ++i) {
    const double d = double(pred[i]) - y[i];
    num += d * d;
    den += double(y[i]) * y[i];
  }
  return den > 0 ? num / den : 0.0;
}

}  // namespace

StatusOr<AquaPredictors> fit_aquakv(const KvGeometry& g, const AquaFitConfig& cfg,
                                    const std::vector<std::vector<uint16_t>>& keys,
                                    const std::vector<std::vector<uint16_t>>& values, AquaFitProgress progress,
                                    void* user) {
  const int C = g.kv_dim();
  const int64_t n = cfg.n_tokens, n_fit = std::clamp<int64_t>(cfg.valid_from, 1, n);
  if (n < 2) return invalid_argument("calibration needs at least 2 tokens");
  KVLAB_ASSIGN_OR_RETURN(ResidualCodec first_codec,
                         ResidualCodec::create(C, aqua_first_bits(cfg.bits), cfg.rotation, g.head_dim));
  KVLAB_ASSIGN_OR_RETURN(ResidualCodec codec, ResidualCodec::create(C, cfg.bits, cfg.rotation, g.head_dim));
  AquaPredictors p;
  p.model_fingerprint = g.model_fingerprint;
  p.n_layers = g.n_layers, p.n_kv_heads = g.n_kv_heads, p.head_dim = g.head_dim;
  p.first_layer = cfg.first_layer, p.last_layer = cfg.last_layer, p.bits = cfg.bits;
  p.rotation = cfg.rotation;
  p.calibration_tokens = n;

  const size_t nc = size_t(n) * C;
  std::vector<float> k(nc), v(nc), k_hat(nc), v_hat(nc), prev_k(nc), prev_v(nc), pred(nc);
  std::vector<uint8_t> codes(size_t(n) * std::max(first_codec.code_bytes(), codec.code_bytes()) * 2);
  std::vector<uint16_t> norms(size_t(n) * std::max(1, codec.n_norms()) * 2);
  for (int l = cfg.first_layer; l <= cfg.last_layer; ++l) {
    const auto& kl = keys[size_t(l - cfg.first_layer)];
    const auto& vl = values[size_t(l - cfg.first_layer)];
    if (kl.size() != nc || vl.size() != nc) return invalid_argument("calibration capture of layer " + std::to_string(l) + " has the wrong size");
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < nc; ++i) k[i] = f16_to_f32(kl[i]), v[i] = f16_to_f32(vl[i]);
    const bool first = l == cfg.first_layer;
    const ResidualCodec& cd = first ? first_codec : codec;
    const LayerCodes lc{codes.data(), norms.data(), codes.data() + size_t(n) * cd.code_bytes(),
                        norms.data() + size_t(n) * cd.n_norms()};
    if (first) {
      aqua_encode(cd, nullptr, nullptr, nullptr, k.data(), v.data(), n, lc, k_hat.data(), v_hat.data());
    } else {
      // Keys of l from K^_{l-1}, encoded with that predictor (as the policy will); then values
      // from [K^_l ; V^_{l-1}].
      AquaLayerPredictor fitted;
      KVLAB_RETURN_IF_ERROR(fit_ridge(prev_k.data(), k.data(), n_fit, C, C, &fitted.a, &fitted.a0));
      predict(&fitted, 0, prev_k.data(), nullptr, nullptr, n, C, pred.data());
      fitted.k_rel_train = rel_mse(pred.data(), k.data(), 0, n_fit, C);
      fitted.k_rel_valid = n_fit < n ? rel_mse(pred.data(), k.data(), n_fit, n, C) : 0.0;
      chain_side(cd, &fitted, 0, prev_k.data(), nullptr, nullptr, k.data(), n, lc.k_codes, lc.k_norms, k_hat.data(),
                 pred.data());
      const std::vector<float> xv = concat_rows(k_hat.data(), prev_v.data(), n, C);
      KVLAB_RETURN_IF_ERROR(fit_ridge(xv.data(), v.data(), n_fit, 2 * C, C, &fitted.b, &fitted.b0));
      predict(&fitted, 1, nullptr, prev_v.data(), k_hat.data(), n, C, pred.data());
      fitted.v_rel_train = rel_mse(pred.data(), v.data(), 0, n_fit, C);
      fitted.v_rel_valid = n_fit < n ? rel_mse(pred.data(), v.data(), n_fit, n, C) : 0.0;
      chain_side(cd, &fitted, 1, nullptr, prev_v.data(), k_hat.data(), v.data(), n, lc.v_codes, lc.v_norms, v_hat.data(),
                 pred.data());
      p.layers.push_back(std::move(fitted));
    }
    std::swap(prev_k, k_hat);
    std::swap(prev_v, v_hat);
    if (progress) progress(user, l, first ? nullptr : &p.layers.back());
  }
  return p;
}

}  // namespace kvlab
