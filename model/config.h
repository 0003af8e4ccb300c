// Hyper-parameters of a Llama-style decoder, as read from a checkpoint.
#pragma once

#include <string>

namespace kvlab {

// Which element pairs of a head RoPE rotates together.
//   kInterleaved: (2i, 2i+1), as llama2.c run.c and GGUF "llama" (llama.cpp ROPE_TYPE_NORM; the
//                 GGUF converter permutes W_q / W_k rows into this order).
//   kHalf:        (i, i + head_dim/2), the HF "rotate_half" convention.
// Pair i turns by angle pos * theta^(-2i / head_dim) in both.
enum class RopeStyle { kInterleaved, kHalf };

struct ModelConfig {
  std::string format;      // "llama2c" or "gguf"
  std::string name;        // free text from the file (GGUF general.name) or the file name
  int dim = 0;             // residual width D
  int hidden_dim = 0;      // SwiGLU inner width
  int n_layers = 0;
  int n_heads = 0;         // query heads
  int n_kv_heads = 0;      // key/value heads (GQA: n_heads % n_kv_heads == 0)
  int head_dim = 0;        // D / n_heads
  int vocab_size = 0;
  int max_seq_len = 0;     // trained context; longer contexts are refused
  float rope_theta = 10000.0f;
  RopeStyle rope_style = RopeStyle::kInterleaved;
  float norm_eps = 1e-5f;  // RMSNorm epsilon
  bool tied_embeddings = true;  // classifier shares the token embedding

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
};

}  // namespace kvlab
