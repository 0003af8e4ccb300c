// Decoder weights, dequantized to f32 at load time. Every matrix is row-major [out, in], so a
// linear layer is y[t, o] = sum_i x[t, i] * W[o, i] (kernels/cpu/matmul.h).
#pragma once

#include <vector>

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

struct Weights {
  std::vector<float> token_embedding;  // [vocab_size, dim]
  std::vector<LayerWeights> layers;    // [n_layers]
  std::vector<float> final_norm;       // [dim]
  std::vector<float> output;           // [vocab_size, dim]; empty when tied to token_embedding

  const std::vector<float>& classifier() const { return output.empty() ? token_embedding : output; }
};

}  // namespace kvlab
