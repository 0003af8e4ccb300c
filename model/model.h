// A loaded Llama-style model: config, weights (f32, or Q4_1 / Q8_0 as the GGUF file stores them),
// tokenizer, and the reference decoder forward.
//
// Per layer (llama2.c / HF Llama semantics):
//   x += W_o · attention(rope(W_q · rms(x)), W_k · rms(x), W_v · rms(x))   via the KV cache
//   x += W_down · (silu(W_gate · rms(x)) ⊙ (W_up · rms(x)))
// then logits = W_cls · rms(x). Matrix work goes through kernels/cpu/matmul.h, whose batch
// invariance makes a sequence's logits independent of the batch it is decoded in.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "attention/rope.h"
#include "base/aligned_vector.h"
#include "base/status.h"
#include "kvcache/kv_cache.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "model/weights.h"

namespace kvlab {

// New tokens for one sequence slot.
struct SeqInput {
  int seq = 0;
  std::span<const int32_t> tokens;
};

enum class LogitsMode {
  kNone,  // no logits (prefill whose predictions are not needed)
  kLast,  // [n_inputs, vocab]: the last token of each input
  kAll,   // [n_rows, vocab]: every token, inputs stacked in order
};

class Model {
 public:
  // `path` is a file or an alias (stories260k, smollm2-135m; see resolve_model_path). The
  // format is recognized from the file's first bytes. For llama2.c checkpoints the tokenizer is
  // `tokenizer_path`, or else tok<vocab>.bin / tokenizer.bin beside the model.
  static StatusOr<std::unique_ptr<Model>> load(const std::string& path,
                                               const std::string& tokenizer_path = "");

  const ModelConfig& config() const { return config_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const RopeTable& rope() const { return *rope_; }
  const std::string& path() const { return path_; }
  KvGeometry cache_geometry() const;
  // 64-bit FNV-1a of the shape and of every layer's W_k and W_v as loaded (f32): what K/V a
  // token gets. Calibration files record it (kvcache/aquakv_predictors.h).
  uint64_t fingerprint() const { return fingerprint_; }
  // Bytes of weights one decode step reads (every matrix once, the classifier included), as held:
  // GGUF matrices in Q4_1 or Q8_0 stay in that form (6 or 9 bits per weight), others are f32.
  int64_t weight_bytes() const;

  // A matrix [rows, cols] the forward multiplies by: f32, or as its file stores it (Q4_1, Q8_0:
  // kernels/cpu/matmul.h, BlockMatrix), which multiplies to the same bits as its f32 copy would
  // and reads 6 or 9 bits per weight instead of 32. Storage starts on a cache line
  // (base/aligned_vector.h).
  struct Matrix {
    int64_t rows = 0, cols = 0;
    AlignedVector<float> f32;  // [rows, cols]; empty when packed
    BlockFormat format = BlockFormat::kQ4_1;
    AlignedVector<uint8_t> codes;  // BlockMatrix planes; empty when f32
    AlignedVector<float> scales;

    bool packed() const { return !codes.empty(); }
    BlockMatrix blocks() const { return {format, codes.data(), scales.data(), cols}; }
    int64_t bytes() const;
    // y[n, rows] = x[n, cols] * this^T
    void multiply(const float* x, int64_t n, float* y) const;
    // Row r as f32, into out[cols].
    void row(int64_t r, float* out) const;
  };

  StatusOr<std::unique_ptr<KvCache>> make_cache(std::string_view spec, int max_seqs) const;

  // One forward over the new tokens of several slots (distinct slots, each >= 1 token).
  // Errors (nothing is written to the cache): a token id outside the vocabulary, a slot out of
  // range, a sequence that would pass the model's context, a cache made for another model.
  Status forward(KvCache& cache, std::span<const SeqInput> inputs, LogitsMode mode,
                 std::vector<float>* logits) const;

 private:
  Model(std::string path, ModelConfig config, Weights weights, std::unique_ptr<Tokenizer> tokenizer);

  // The layer matrices the forward multiplies by, fused where one input feeds several outputs:
  // one pass over a fused matrix streams its rows once, with one thread fork instead of three.
  // Rows are unchanged, so the results are those of the separate products (matmul sums each
  // output on its own).
  struct Layer {
    AlignedVector<float> attn_norm;  // [dim]
    Matrix wqkv;                     // [q_dim + 2 * kv_dim, dim]: W_q rows, then W_k, then W_v
    Matrix wo;                       // [dim, q_dim]
    AlignedVector<float> ffn_norm;   // [dim]
    Matrix w_gate_up;                // [2 * hidden_dim, dim]: W_gate rows, then W_up
    Matrix w_down;                   // [dim, hidden_dim]
  };

  std::string path_;
  ModelConfig config_;
  std::vector<Layer> layers_;
  Matrix token_embedding_;           // [vocab, dim]
  AlignedVector<float> final_norm_;  // [dim]
  Matrix classifier_;                // [vocab, dim]; empty (rows 0) when tied to token_embedding_
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<RopeTable> rope_;
  uint64_t fingerprint_ = 0;
};

// Alias -> file: "stories260k" -> <shared>/models/stories260K.bin, "smollm2-135m" ->
// <models dir>/SmolLM2-135M-Instruct.Q4_1.gguf (base/paths.h). Anything else is a path.
// kNotFound, with the places looked at, when the file does not exist.
StatusOr<std::string> resolve_model_path(const std::string& name_or_path);

}  // namespace kvlab
