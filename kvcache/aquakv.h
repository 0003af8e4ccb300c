// AQUA-KV (../shared/research/algorithms.md section 1): the math shared by `kvlab calibrate` and
// the `aquakv` policy. Per token, all KV heads concatenated (C = n_kv_heads * head_dim), PRE-RoPE:
//
//   first layer f of the range:  K^_f = deQ4(Q4(K_f))               (4-bit codes, no predictor)
//   layer l > f:                 P^K_l = A_l K^_{l-1} + a_l
//                                K^_l  = P^K_l + deQ(Q(K_l - P^K_l))
//                                P^V_l = B_l [K^_l ; V^_{l-1}] + b_l
//                                V^_l  = P^V_l + deQ(Q(V_l - P^V_l))
//
// Q is HIGGS (kvcache/higgs.h) at `bits`, or f32 residuals at bits = kAquaExactBits ("inf": the
// quantization switched off). With predictors off every layer is coded like the first one but at
// `bits` (plain HIGGS), through the same functions.
//
// The predictors are fitted by ridge regression on the reconstructions of the layers below, as
// the policy will see them (fit_aquakv), and stored in a calibration file:
//
//   "KVLAB-AQ" u32 version, u64 model fingerprint, i32 n_layers, n_kv_heads, head_dim,
//   first_layer, last_layer, bits, rotation (0 orthogonal, 1 Hadamard), i64 calibration tokens, per layer l > first:
//   arrays A [C*C], a [C], B [C*2C], b [C], f64 relMSE of K and V predictions (train, held out),
//   then u64 FNV-1a of every byte before it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "kvcache/higgs.h"
#include "kvcache/memory.h"
#include "kvcache/policy.h"

namespace kvlab {

inline constexpr int kAquaExactBits = 32;  // "bits=inf": residuals stored as f32
inline constexpr int kAquaFirstBits = 4;   // the first layer's codes (paper default)
inline constexpr uint32_t kAquaFileVersion = 1;

// The first layer's codes for residual `bits` (exact stays exact).
constexpr int aqua_first_bits(int bits) { return bits == kAquaExactBits ? kAquaExactBits : kAquaFirstBits; }
// The `bits` and `rotation` values of an aquakv spec (already validated by its schema).
int aqua_bits_param(const std::string& bits);  // "2" | "3" | "4" | "inf"
HiggsQuantizer::Rotation aqua_rotation_param(const std::string& rotation);  // "orthogonal" | "hadamard"

// How one layer's residuals are stored, per token vector of C values: HIGGS codes plus f16
// norms, or C f32 values (exact).
class ResidualCodec {
 public:
  // rotation: HIGGS's (kOrthogonal over the whole vector, kHadamard in blocks of `block`).
  static StatusOr<ResidualCodec> create(int dim, int bits, HiggsQuantizer::Rotation rotation, int block);
  int dim() const { return dim_; }
  int bits() const { return bits_; }
  int code_bytes() const;  // per vector
  int n_norms() const;     // f16 norms per vector
  int64_t side_bytes() const;  // the rotation tables held
  // x: [n, C] -> codes [n, code_bytes()], norms [n, n_norms()].
  void encode(const float* x, int64_t n, uint8_t* codes, uint16_t* norms) const;
  // out[n, C] += the decoded residuals.
  void add_decoded(const uint8_t* codes, const uint16_t* norms, int64_t n, float* out) const;

 private:
  int dim_ = 0, bits_ = 0;
  std::optional<HiggsQuantizer> q_;  // absent for kAquaExactBits
};

// Predictors of one layer l > first (row-major, out = W in + w0).
struct AquaLayerPredictor {
  std::vector<float> a;  // [C][C]    keys from K^_{l-1}
  std::vector<float> a0; // [C]
  std::vector<float> b;  // [C][2C]   values from [K^_l ; V^_{l-1}]
  std::vector<float> b0; // [C]
  // relMSE = ||P - Y||^2 / ||Y||^2 of the predictions, on fitted and held-out tokens.
  double k_rel_train = 0, k_rel_valid = 0, v_rel_train = 0, v_rel_valid = 0;
};

struct AquaPredictors {
  uint64_t model_fingerprint = 0;
  int n_layers = 0, n_kv_heads = 0, head_dim = 0;
  int first_layer = 0, last_layer = 0;
  int bits = 2;
  HiggsQuantizer::Rotation rotation = HiggsQuantizer::Rotation::kOrthogonal;  // blocks of head_dim for kHadamard
  int64_t calibration_tokens = 0;
  std::vector<AquaLayerPredictor> layers;  // [last - first]: layer first + 1 + i

  int dim() const { return n_kv_heads * head_dim; }
  const AquaLayerPredictor& at(int layer) const { return layers[size_t(layer - first_layer - 1)]; }
  int64_t bytes() const;  // f32 parameters held

  // Atomic write (temporary file and rename).
  Status save(const std::string& path) const;
  // Refuses (with what differs) a file of another format version, another model (fingerprint
  // or shape), other bits, a layer range that does not start at ctx's first layer or ends
  // before its last, a truncated or corrupted file.
  static StatusOr<AquaPredictors> load(const std::string& path, const KvGeometry& g, int first_layer,
                                       int last_layer, int bits, HiggsQuantizer::Rotation rotation);
};

// The chain over n tokens of one layer. `pred` null: no predictor (the first layer, or plain
// HIGGS). prev_k / prev_v: layer l-1's reconstructions [n, C] (unused without a predictor).
//   encode: k, v exact [n, C] -> codes, and k_hat, v_hat [n, C] (as decode will give them)
//   decode: codes -> k_hat, v_hat
struct LayerCodes {
  uint8_t* k_codes;
  uint16_t* k_norms;
  uint8_t* v_codes;
  uint16_t* v_norms;
};
void aqua_encode(const ResidualCodec& codec, const AquaLayerPredictor* pred, const float* prev_k,
                 const float* prev_v, const float* k, const float* v, int64_t n, const LayerCodes& out,
                 float* k_hat, float* v_hat);
void aqua_decode(const ResidualCodec& codec, const AquaLayerPredictor* pred, const float* prev_k,
                 const float* prev_v, const LayerCodes& in, int64_t n, float* k_hat, float* v_hat);

// Calibration: fits the predictors of layers first+1..last on captured K/V.
//   keys[l - first], values[l - first]: [n_tokens, C] pre-RoPE, f16 bits (the unmodified model's)
//   valid_from: tokens >= valid_from are held out (statistics only)
// Layer by layer, each fit sees the reconstructions of the layers below exactly as the policy
// computes them (aqua_encode). Ridge: (X^T X + lambda I) W = X^T Y with a bias column, lambda =
// 1e-3 * mean diag(X^T X), solved by Cholesky in double.
struct AquaFitConfig {
  int first_layer = 0, last_layer = 0, bits = 2;
  HiggsQuantizer::Rotation rotation = HiggsQuantizer::Rotation::kOrthogonal;
  int64_t n_tokens = 0, valid_from = 0;
};
using AquaFitProgress = void (*)(void* user, int layer, const AquaLayerPredictor* fitted);
StatusOr<AquaPredictors> fit_aquakv(const KvGeometry& g, const AquaFitConfig& config,
                                    const std::vector<std::vector<uint16_t>>& keys,
                                    const std::vector<std::vector<uint16_t>>& values,
                                    AquaFitProgress progress = nullptr, void* user = nullptr);

}  // namespace kvlab
