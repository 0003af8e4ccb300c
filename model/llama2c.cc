#include "model/llama2c.h"

#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

namespace kvlab {

// The file is little-endian and is read straight into int32 / float.
static_assert(std::endian::native == std::endian::little, "the llama2.c reader assumes a little-endian host");

namespace {

// The legacy v0 header: seven little-endian int32, then f32 tensors (see run.c of llama2.c and
// ../shared/models/SOURCES.md). A negative vocab_size means the classifier `wcls` is stored
// separately at the end of the file instead of being shared with the token embedding.
struct Llama2cHeader {
  int32_t dim;
  int32_t hidden_dim;
  int32_t n_layers;
  int32_t n_heads;
  int32_t n_kv_heads;
  int32_t vocab_size;
  int32_t seq_len;
};
static_assert(sizeof(Llama2cHeader) == 28, "llama2.c v0 header is 7 x int32");

// llama2.c's export.py starts its newer formats (version 1: f32, version 2: int8 groups) with
// the u32 0x616b3432, "ak42" when the hex digits are read as ASCII (on disk, little-endian, the
// bytes spell "24ka"). Those files carry a 256-byte header; kvlab reads only the legacy layout. A
// v0 file starting with these bytes would have dim = 1,634,415,666, so the test is unambiguous.
constexpr uint32_t kExportMagic = 0x616b3432u;

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

// a * b, or false when the product does not fit in int64 (sizes come from an untrusted header).
bool mul(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }
bool add(int64_t a, int64_t b, int64_t* out) { return !__builtin_add_overflow(a, b, out); }

}  // namespace

StatusOr<Checkpoint> load_llama2c_checkpoint(const std::string& path) {
  std::error_code ec;
  const auto file_size = std::filesystem::file_size(path, ec);
  if (ec) return not_found("cannot open '" + path + "': " + ec.message());
  FilePtr f(std::fopen(path.c_str(), "rb"));
  if (!f) return not_found("cannot open '" + path + "': " + std::strerror(errno));

  if (file_size >= 4) {
    uint32_t magic = 0;
    if (std::fread(&magic, 4, 1, f.get()) != 1) return data_loss(path + ": short read of the header");
    if (magic == kExportMagic) {
      int32_t version = -1;
      const bool has_version = std::fread(&version, 4, 1, f.get()) == 1;
      return unsupported(path + ": llama2.c export format (magic 0x616b3432 \"ak42\", version " +
                         (has_version ? std::to_string(version) : std::string("?")) +
                         ") is not supported; kvlab reads only the legacy v0 checkpoint (7 int32 " +
                         "header, then f32 weights), as written by export.py --version 0");
    }
    if (magic == 0x46554747u) {  // "GGUF"
      return data_loss(path + ": is a GGUF file, not a llama2.c checkpoint");
    }
    std::rewind(f.get());
  }
  Llama2cHeader h;
  if (file_size < sizeof(h)) {
    return data_loss(path + ": truncated: " + std::to_string(file_size) + " bytes, the llama2.c header alone is 28");
  }
  if (std::fread(&h, sizeof(h), 1, f.get()) != 1) return data_loss(path + ": short read of the header");

  const auto bad_header = [&](const std::string& why) {
    return data_loss(path + ": not a llama2.c v0 checkpoint: " + why + " (header dim=" + std::to_string(h.dim) +
                     " hidden_dim=" + std::to_string(h.hidden_dim) + " n_layers=" + std::to_string(h.n_layers) +
                     " n_heads=" + std::to_string(h.n_heads) + " n_kv_heads=" + std::to_string(h.n_kv_heads) +
                     " vocab_size=" + std::to_string(h.vocab_size) + " seq_len=" + std::to_string(h.seq_len) + ")");
  };
  if (h.dim <= 0 || h.hidden_dim <= 0 || h.n_layers <= 0 || h.n_heads <= 0 || h.n_kv_heads <= 0 ||
      h.seq_len <= 0 || h.vocab_size == 0 || h.vocab_size == INT32_MIN) {
    return bad_header("sizes must be positive (vocab_size may be negative, not zero)");
  }
  if (h.dim % h.n_heads != 0) return bad_header("dim is not a multiple of n_heads");
  if (h.n_heads % h.n_kv_heads != 0) return bad_header("n_heads is not a multiple of n_kv_heads");
  const int64_t head_dim = h.dim / h.n_heads;
  // RoPE turns pairs (2i, 2i+1), and the legacy freq_cis tables hold head_dim / 2 columns.
  if (head_dim % 2 != 0) return bad_header("head size is odd");

  const bool shared_classifier = h.vocab_size > 0;
  const int64_t vocab = shared_classifier ? h.vocab_size : -int64_t(h.vocab_size);
  const int64_t dim = h.dim, hidden = h.hidden_dim, n_layers = h.n_layers;
  const int64_t kv_dim = int64_t(h.n_kv_heads) * head_dim;

  // Element counts, in file order. Each product is checked: a corrupt header must not wrap
  // around into a size that happens to match the file.
  struct Part {
    const char* name;
    int64_t rows, cols;  // per layer for the stacked tensors
    int64_t layers;      // 1 for the unstacked ones
  };
  const Part parts[] = {
      {"token_embedding", vocab, dim, 1},
      {"rms_att_weight", 1, dim, n_layers},
      {"wq", dim, dim, n_layers},
      {"wk", kv_dim, dim, n_layers},
      {"wv", kv_dim, dim, n_layers},
      {"wo", dim, dim, n_layers},
      {"rms_ffn_weight", 1, dim, n_layers},
      {"w1", hidden, dim, n_layers},
      {"w2", dim, hidden, n_layers},
      {"w3", hidden, dim, n_layers},
      {"rms_final_weight", 1, dim, 1},
      {"freq_cis_real", h.seq_len, head_dim / 2, 1},
      {"freq_cis_imag", h.seq_len, head_dim / 2, 1},
      {"wcls", shared_classifier ? 0 : vocab, dim, 1},
  };
  int64_t n_floats = 0;
  for (const Part& p : parts) {
    int64_t n = 0;
    if (!mul(p.rows, p.cols, &n) || !mul(n, p.layers, &n) || !add(n_floats, n, &n_floats)) {
      return bad_header("sizes overflow");
    }
  }
  int64_t expected = 0;
  if (!mul(n_floats, 4, &expected) || !add(expected, int64_t(sizeof(h)), &expected)) {
    return bad_header("sizes overflow");
  }
  if (uint64_t(expected) != file_size) {
    return data_loss(path + ": " + (file_size < uint64_t(expected) ? "truncated" : "trailing data") +
                     ": the header implies " + std::to_string(expected) + " bytes (" +
                     (shared_classifier ? "shared" : "separate") + " classifier), the file has " +
                     std::to_string(file_size));
  }

  Checkpoint ck;
  ModelConfig& c = ck.config;
  c.format = "llama2c";
  c.name = std::filesystem::path(path).filename().string();
  c.dim = h.dim;
  c.hidden_dim = h.hidden_dim;
  c.n_layers = h.n_layers;
  c.n_heads = h.n_heads;
  c.n_kv_heads = h.n_kv_heads;
  c.head_dim = int(head_dim);
  c.vocab_size = int(vocab);
  c.max_seq_len = h.seq_len;
  c.rope_theta = 10000.0f;  // run.c hard-codes it
  c.rope_style = RopeStyle::kInterleaved;
  c.norm_eps = 1e-5f;       // run.c rmsnorm
  c.tied_embeddings = shared_classifier;

  // Reads `n` floats into *dst; the exact size check above makes a short read an I/O error.
  Status io = Status::Ok();
  const auto read = [&](std::vector<float>* dst, int64_t n) {
    dst->resize(size_t(n));
    if (io.ok() && std::fread(dst->data(), sizeof(float), size_t(n), f.get()) != size_t(n)) {
      io = data_loss(path + ": short read at byte " + std::to_string(std::ftell(f.get())));
    }
  };
  Weights& w = ck.weights;
  read(&w.token_embedding, vocab * dim);
  w.layers.resize(size_t(n_layers));
  // Each stacked tensor holds all layers back to back: [n_layers, rows, cols].
  const auto read_stacked = [&](std::vector<float> LayerWeights::*member, int64_t n) {
    for (auto& layer : w.layers) read(&(layer.*member), n);
  };
  read_stacked(&LayerWeights::attn_norm, dim);
  read_stacked(&LayerWeights::wq, dim * dim);
  read_stacked(&LayerWeights::wk, kv_dim * dim);
  read_stacked(&LayerWeights::wv, kv_dim * dim);
  read_stacked(&LayerWeights::wo, dim * dim);
  read_stacked(&LayerWeights::ffn_norm, dim);
  read_stacked(&LayerWeights::w_gate, hidden * dim);  // w1
  read_stacked(&LayerWeights::w_down, dim * hidden);  // w2
  read_stacked(&LayerWeights::w_up, hidden * dim);    // w3
  read(&w.final_norm, dim);
  // The legacy RoPE tables (freq_cis_real / freq_cis_imag): kvlab computes RoPE itself.
  if (io.ok() && std::fseek(f.get(), long(int64_t(h.seq_len) * head_dim * 4), SEEK_CUR) != 0) {
    io = data_loss(path + ": cannot skip the freq_cis tables");
  }
  if (!shared_classifier) read(&w.output, vocab * dim);
  KVLAB_RETURN_IF_ERROR(io);
  return ck;
}

}  // namespace kvlab
