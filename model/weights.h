// Decoder weights, dequantized to f32 at load time (and block-format matrices also as stored).
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

// A matrix as its file stores it, in a block format the matmul multiplies by directly
// (kernels/cpu/matmul.h, BlockMatrix), beside its f32 copy.
struct PackedMatrix {
  BlockFormat format = BlockFormat::kQ4_1;
  std::vector<uint8_t> codes;
  std::vector<float> scales;
};

struct Weights {
  std::vector<float> token_embedding;  // [vocab_size, dim]
  std::vector<LayerWeights> layers;    // [n_layers]
  std::vector<float> final_norm;       // [dim]
  std::vector<float> output;           // [vocab_size, dim]; empty when tied to token_embedding
  // The matrices a GGUF file stores as Q4_1 or Q8_0, also in that form, keyed by tensor name
  // ("blk.0.attn_q.weight", "token_embd.weight"). The decoder keeps these rather than the f32.
  std::map<std::string, PackedMatrix> packed;

  const std::vector<float>& classifier() const { return output.empty() ? token_embedding : output; }
};

}  // namespace kvlab
