#include "model/gguf_model.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <unordered_set>

namespace kvlab {
namespace {

// A hyper-parameter that must be a positive int.
StatusOr<int> positive_int(const GgufFile& g, const std::string& key) {
  KVLAB_ASSIGN_OR_RETURN(const int64_t v, g.get_int(key));
  if (v <= 0 || v > std::numeric_limits<int>::max()) {
    return data_loss(g.path() + ": " + key + " = " + std::to_string(v) + " is not a positive int");
  }
  return int(v);
}

StatusOr<float> positive_float(const GgufFile& g, const std::string& key) {
  KVLAB_ASSIGN_OR_RETURN(const double v, g.get_float(key));
  if (!std::isfinite(v) || v <= 0 || v > double(std::numeric_limits<float>::max())) {
    return data_loss(g.path() + ": " + key + " = " + std::to_string(v) + " is not a positive finite number");
  }
  return float(v);
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// One tensor the decoder needs, where it goes, and the GGUF shape it must have: [in, out] for a
// matrix (ne0 = in is contiguous), which is our row-major [out, in] with the same bytes.
struct Wanted {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float>* dst;
};

}  // namespace

StatusOr<Checkpoint> load_gguf_checkpoint(const GgufFile& gguf) {
  const std::string& file = gguf.path();
  KVLAB_ASSIGN_OR_RETURN(const std::string arch, gguf.get_string("general.architecture"));
  if (arch != "llama") {
    return unsupported(file + ": GGUF architecture '" + arch + "' is not supported (kvlab loads 'llama')");
  }

  Checkpoint ck;
  ModelConfig& c = ck.config;
  c.format = "gguf";
  if (gguf.has("general.name")) {
    KVLAB_ASSIGN_OR_RETURN(c.name, gguf.get_string("general.name"));
  } else {
    c.name = std::filesystem::path(file).filename().string();
  }
  KVLAB_ASSIGN_OR_RETURN(c.dim, positive_int(gguf, "llama.embedding_length"));
  KVLAB_ASSIGN_OR_RETURN(c.hidden_dim, positive_int(gguf, "llama.feed_forward_length"));
  KVLAB_ASSIGN_OR_RETURN(c.n_layers, positive_int(gguf, "llama.block_count"));
  KVLAB_ASSIGN_OR_RETURN(c.n_heads, positive_int(gguf, "llama.attention.head_count"));
  // llama.cpp defaults the KV head count to the query head count (no GQA) when the key is absent.
  c.n_kv_heads = c.n_heads;
  if (gguf.has("llama.attention.head_count_kv")) {
    KVLAB_ASSIGN_OR_RETURN(c.n_kv_heads, positive_int(gguf, "llama.attention.head_count_kv"));
  }
  KVLAB_ASSIGN_OR_RETURN(c.max_seq_len, positive_int(gguf, "llama.context_length"));
  c.rope_theta = 10000.0f;
  if (gguf.has("llama.rope.freq_base")) {
    KVLAB_ASSIGN_OR_RETURN(c.rope_theta, positive_float(gguf, "llama.rope.freq_base"));
  }
  KVLAB_ASSIGN_OR_RETURN(c.norm_eps, positive_float(gguf, "llama.attention.layer_norm_rms_epsilon"));

  if (c.dim % c.n_heads != 0) {
    return data_loss(file + ": llama.embedding_length " + std::to_string(c.dim) + " is not a multiple of " +
                     "llama.attention.head_count " + std::to_string(c.n_heads));
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    return data_loss(file + ": llama.attention.head_count " + std::to_string(c.n_heads) +
                     " is not a multiple of llama.attention.head_count_kv " + std::to_string(c.n_kv_heads));
  }
  c.head_dim = c.dim / c.n_heads;
  if (c.head_dim % 2 != 0) return data_loss(file + ": head size " + std::to_string(c.head_dim) + " is odd");
  if (gguf.has("llama.rope.dimension_count")) {
    KVLAB_ASSIGN_OR_RETURN(const int64_t n_rot, gguf.get_int("llama.rope.dimension_count"));
    if (n_rot != c.head_dim) {
      return unsupported(file + ": llama.rope.dimension_count = " + std::to_string(n_rot) +
                         " (RoPE on part of each head) is not supported; kvlab rotates all " +
                         std::to_string(c.head_dim) + " dimensions of a head");
    }
  }
  if (gguf.has("llama.rope.scaling.type")) {
    KVLAB_ASSIGN_OR_RETURN(const std::string scaling, gguf.get_string("llama.rope.scaling.type"));
    if (scaling != "none") {
      return unsupported(file + ": llama.rope.scaling.type = '" + scaling + "' is not supported");
    }
  }
  // RoPE pairs: llama.cpp runs "llama" with LLAMA_ROPE_TYPE_NORM, which rotates adjacent pairs
  // (2i, 2i+1) (src/llama-model.cpp, llama_model_rope_type: "a normal RoPE, operating on pairs of
  // consecutive head values"). HF checkpoints use rotate_half pairs (i, i + head_dim/2); llama.cpp's
  // convert_hf_to_gguf.py (LlamaModel.permute, applied to q_proj / k_proj) reorders the rows of each
  // head with reshape(n_head, 2, head_dim/2, in).swapaxes(1, 2), which sends HF row i to 2i and
  // row i + head_dim/2 to 2i + 1. So the GGUF W_q / W_k rows are already in interleaved order.
  c.rope_style = RopeStyle::kInterleaved;

  const GgufFile::Tensor* embd = gguf.find_tensor("token_embd.weight");
  if (!embd) return not_found(file + ": tensor 'token_embd.weight' not found");
  if (embd->shape.size() != 2 || embd->shape[0] != c.dim || embd->shape[1] > std::numeric_limits<int>::max()) {
    return data_loss(file + ": tensor 'token_embd.weight' has shape " + shape_text(embd->shape) + ", expected [" +
                     std::to_string(c.dim) + ", vocab_size]");
  }
  c.vocab_size = int(embd->shape[1]);
  if (gguf.has("llama.vocab_size")) {
    KVLAB_ASSIGN_OR_RETURN(const int64_t v, gguf.get_int("llama.vocab_size"));
    if (v != c.vocab_size) {
      return data_loss(file + ": llama.vocab_size = " + std::to_string(v) + " but token_embd.weight has " +
                       std::to_string(c.vocab_size) + " rows");
    }
  }
  c.tied_embeddings = gguf.find_tensor("output.weight") == nullptr;

  // Nothing may be sized from metadata alone: a corrupt block_count of 2^31 would allocate 2^31
  // LayerWeights before the first missing tensor is noticed. Each layer has 9 tensors, so a file
  // with fewer tensors than layers is corrupt (a file with a few missing is kNotFound below, with
  // the name of the first one).
  if (c.n_layers > int64_t(gguf.tensors().size())) {
    return data_loss(file + ": llama.block_count = " + std::to_string(c.n_layers) + " needs " +
                     std::to_string(int64_t(c.n_layers) * 9) + " layer tensors, the file has " +
                     std::to_string(gguf.tensors().size()) + " tensors");
  }
  const int64_t dim = c.dim, hidden = c.hidden_dim, vocab = c.vocab_size;
  const int64_t q_dim = c.q_dim(), kv_dim = c.kv_dim();
  Weights& w = ck.weights;
  w.layers.resize(size_t(c.n_layers));
  std::vector<Wanted> wanted = {
      {"token_embd.weight", {dim, vocab}, &w.token_embedding},
      {"output_norm.weight", {dim}, &w.final_norm},
  };
  if (!c.tied_embeddings) wanted.push_back({"output.weight", {dim, vocab}, &w.output});
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LayerWeights& lw = w.layers[size_t(l)];
    wanted.push_back({p + "attn_norm.weight", {dim}, &lw.attn_norm});
    wanted.push_back({p + "attn_q.weight", {dim, q_dim}, &lw.wq});
    wanted.push_back({p + "attn_k.weight", {dim, kv_dim}, &lw.wk});
    wanted.push_back({p + "attn_v.weight", {dim, kv_dim}, &lw.wv});
    wanted.push_back({p + "attn_output.weight", {q_dim, dim}, &lw.wo});
    wanted.push_back({p + "ffn_norm.weight", {dim}, &lw.ffn_norm});
    wanted.push_back({p + "ffn_gate.weight", {dim, hidden}, &lw.w_gate});
    wanted.push_back({p + "ffn_up.weight", {dim, hidden}, &lw.w_up});
    wanted.push_back({p + "ffn_down.weight", {hidden, dim}, &lw.w_down});
  }

  // Check everything before dequantizing anything: a bad file fails in milliseconds.
  std::vector<const GgufFile::Tensor*> found;
  found.reserve(wanted.size());
  std::unordered_set<std::string_view> used;
  for (const Wanted& want : wanted) {
    const GgufFile::Tensor* t = gguf.find_tensor(want.name);
    if (!t) return not_found(file + ": tensor '" + want.name + "' not found");
    if (t->shape != want.shape) {
      return data_loss(file + ": tensor '" + want.name + "' has shape " + shape_text(t->shape) + ", expected " +
                       shape_text(want.shape) + " (GGUF order, innermost first)");
    }
    const GgmlTypeInfo* info = ggml_type_info(uint32_t(t->type));
    if (!info->dequantizable) {
      return unsupported(file + ": tensor '" + want.name + "' has type " + info->name +
                         ", which kvlab cannot dequantize (supported: " + ggml_supported_type_names() + ")");
    }
    found.push_back(t);
    used.insert(t->name);
  }
  // A tensor the decoder would not use changes the model (rope_freqs.weight, which the converter
  // writes for Llama 3.1's "llama3" RoPE scaling; attention biases; experts): refuse rather than
  // compute something else.
  for (const auto& t : gguf.tensors()) {
    if (!used.count(t.name)) {
      return unsupported(file + ": tensor '" + t.name + "' is not part of the llama decoder kvlab implements");
    }
  }

  // The matrices in a block format the matmul takes as it is (kernels/cpu/matmul.h) are kept in
  // that form only; everything else is dequantized to f32.
  std::vector<PackedMatrix*> packed(wanted.size(), nullptr);
  for (size_t i = 0; i < wanted.size(); ++i) {
    const GgufFile::Tensor* t = found[i];
    const std::optional<BlockFormat> f = block_format_of(t->type);
    if (!f || t->shape.size() != 2 || t->shape[0] % kWeightBlock != 0) continue;
    PackedMatrix& m = w.packed[wanted[i].name];
    m.format = *f;
    m.cols = t->shape[0];
    m.rows = t->shape[1];
    packed[i] = &m;
  }

  // Dequantize in one parallel region over pieces of whole blocks, rather than one region per
  // tensor: SmolLM2 has 272 tensors, and starting that many regions costs more than it saves when
  // the other cores are busy. Measured on a shared, loaded 2-core machine, when every tensor was
  // dequantized: one thread 0.33 s; two threads with a region per tensor (GgufFile::dequantize)
  // 0.9-1.3 s; two threads with this single region 0.21-0.34 s.
  struct Piece {
    const GgufFile::Tensor* t;
    std::vector<float>* dst;
    int64_t first_block, n_blocks;
  };
  constexpr int64_t kPieceBlocks = 16384;
  std::vector<Piece> pieces;
  for (size_t i = 0; i < wanted.size(); ++i) {
    if (packed[i]) continue;
    const GgufFile::Tensor* t = found[i];
    const int64_t n_blocks = t->n_elements / ggml_type_info(uint32_t(t->type))->block_size;
    for (int64_t b = 0; b < n_blocks; b += kPieceBlocks) {
      pieces.push_back({t, wanted[i].dst, b, std::min(kPieceBlocks, n_blocks - b)});
    }
  }
#pragma omp parallel
  {
    // Allocation zero-fills every vector: share that work too.
#pragma omp for schedule(dynamic)
    for (size_t i = 0; i < wanted.size(); ++i) {
      if (!packed[i]) wanted[i].dst->resize(size_t(found[i]->n_elements));
    }
#pragma omp for schedule(dynamic)
    for (size_t i = 0; i < pieces.size(); ++i) {
      const Piece& p = pieces[i];
      const GgmlTypeInfo* info = ggml_type_info(uint32_t(p.t->type));
      dequantize_row(p.t->type, gguf.tensor_data(*p.t) + p.first_block * info->block_bytes,
                     p.dst->data() + p.first_block * info->block_size, p.n_blocks * info->block_size);
    }
#pragma omp for schedule(dynamic)
    for (size_t i = 0; i < wanted.size(); ++i) {
      PackedMatrix* m = packed[i];
      if (!m) continue;
      m->codes.resize(size_t(m->rows * block_code_bytes(m->format, m->cols)));
      m->scales.resize(size_t(m->rows * block_scale_floats(m->format, m->cols)));
      split_blocks(found[i]->type, gguf.tensor_data(*found[i]), found[i]->n_elements / kWeightBlock,
                   m->codes.data(), m->scales.data());
    }
  }
  return ck;
}

}  // namespace kvlab
