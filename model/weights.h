// Decoder weights as loaded: f32, except the matrices a GGUF file stores in a block format the
// matmul takes directly (Q4_1, Q8_0), which are kept only in that form (Weights::packed).
// Every matrix is row-major [out, in], so a linear layer is y[t, o] = sum_i x[t, i] * W[o, i]
// (kernels/cpu/matmul.h).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "kernels/cpu/matmul.h"

namespace kvlab {

struct LayerWeights {
  std::vector<float> attn_norm;  // [dim]
  std::vector<float> wq;         // [n_heads * head_dim, dim]
  std::vector<float> wk;         // [n_kv_heads * head_dim, dim]
  std::vector<float> wv;         // [n_kv_heads * head_dim, dim]
  std::vector<float> wo;         // [dim, n_heads * head_dim]
  std::vector<float> ffn_norm;   // [dim]
  std::vector<float> w_gate;     // [hidden_dim, dim]   (llama2.c w1, GGUF ffn_gate)
  std::vector<float> w_up;       // [hidden_dim, dim]   (llama2.c w3, GGUF ffn_up)
  std::vector<float> w_down;     // [dim, hidden_dim]   (llama2.c w2, GGUF ffn_down)
};

// A matrix [rows, cols] as its file stores it, in a block format the matmul multiplies by
// directly (kernels/cpu/matmul.h, BlockMatrix).
struct PackedMatrix {
  BlockFormat format = BlockFormat::kQ4_1;
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> codes;
  std::vector<float> scales;

  BlockMatrix blocks() const { return {format, codes.data(), scales.data(), cols}; }
};

struct Weights {
  std::vector<float> token_embedding;  // [vocab_size, dim]
  std::vector<LayerWeights> layers;    // [n_layers]
  std::vector<float> final_norm;       // [dim]
  std::vector<float> output;           // [vocab_size, dim]; empty when tied() or packed
  // The matrices a GGUF file stores as Q4_1 or Q8_0, keyed by tensor name ("blk.0.attn_q.weight",
  // "token_embd.weight"). The loader keeps these in that form only: their f32 members above stay
  // empty (holding both would cost SmolLM2 540 MB of f32 beside its 112 MB of blocks).
  std::map<std::string, PackedMatrix> packed;

  // A matrix's values as f32: `f32` itself, or the packed matrix `name` dequantized when the loader
  // kept only that form.
  std::vector<float> dense(const std::vector<float>& f32, const std::string& name) const {
    const auto it = packed.find(name);
    if (!f32.empty() || it == packed.end()) return f32;
    std::vector<float> out(size_t(it->second.rows * it->second.cols));
    dequantize_rows(it->second.blocks(), 0, it->second.rows, out.data());
    return out;
  }

  // Whether the classifier is the token embedding (no output matrix in either form).
  bool tied() const { return output.empty() && !packed.count("output.weight"); }
  // The classifier's f32 member (empty when the file stored it packed).
  const std::vector<float>& classifier() const { return tied() ? token_embedding : output; }
};

}  // namespace kvlab
