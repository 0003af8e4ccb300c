// llama2.c legacy v0 checkpoints: the real stories260K.bin, and synthetic files whose every float
// encodes its own position so that tensor order, layer stacking and the skipped RoPE tables are
// visible in the loaded weights.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "base/file.h"
#include "model/llama2c.h"
#include "tests/testing/test_paths.h"

namespace kvlab {
namespace {

// The float at index `i` after the 28-byte header, read with plain stdio.
float float_at(const std::string& path, int64_t i) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  EXPECT_NE(f, nullptr) << path;
  if (!f) return NAN;
  float v = NAN;
  EXPECT_EQ(std::fseek(f, long(28 + 4 * i), SEEK_SET), 0);
  EXPECT_EQ(std::fread(&v, 4, 1, f), 1u);
  std::fclose(f);
  return v;
}

std::vector<int32_t> header_of(const std::string& path) {
  std::vector<int32_t> h(7);
  std::FILE* f = std::fopen(path.c_str(), "rb");
  EXPECT_NE(f, nullptr);
  if (f) {
    EXPECT_EQ(std::fread(h.data(), 4, 7, f), 7u);
    std::fclose(f);
  }
  return h;
}

void write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  if (!bytes.empty()) {
    ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), f), bytes.size());
  }
  std::fclose(f);
}

std::vector<uint8_t> stories_bytes() {
  auto b = read_file_bytes(testing::stories260k_path());
  EXPECT_TRUE(b.ok()) << b.status().to_string();
  return b.ok() ? *b : std::vector<uint8_t>{};
}

TEST(Llama2c, Stories260KConfig) {
  const auto ck = load_llama2c_checkpoint(testing::stories260k_path());
  ASSERT_TRUE(ck.ok()) << ck.status().to_string();
  const ModelConfig& c = ck->config;
  EXPECT_EQ(c.format, "llama2c");
  EXPECT_EQ(c.name, "stories260K.bin");
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_seq_len, 512);
  EXPECT_EQ(c.rope_theta, 10000.0f);
  EXPECT_EQ(c.norm_eps, 1e-5f);
  EXPECT_EQ(c.rope_style, RopeStyle::kInterleaved);
  EXPECT_TRUE(c.tied_embeddings);
  const Weights& w = ck->weights;
  EXPECT_EQ(w.token_embedding.size(), 512u * 64u);
  EXPECT_TRUE(w.output.empty());
  EXPECT_EQ(&w.classifier(), &w.token_embedding);
  ASSERT_EQ(w.layers.size(), 5u);
  EXPECT_EQ(w.layers[0].wk.size(), 32u * 64u);
  EXPECT_EQ(w.layers[4].w_down.size(), 64u * 172u);
  EXPECT_EQ(w.final_norm.size(), 64u);
}

// Offsets computed here from the header, independently of the loader, and values read with fread.
TEST(Llama2c, Stories260KWeightsMatchFreadAtComputedOffsets) {
  const std::string path = testing::stories260k_path();
  const auto ck = load_llama2c_checkpoint(path);
  ASSERT_TRUE(ck.ok()) << ck.status().to_string();
  const auto h = header_of(path);
  const int64_t dim = h[0], hidden = h[1], L = h[2], heads = h[3], kv_heads = h[4], vocab = h[5];
  const int64_t kv_dim = dim / heads * kv_heads;
  ASSERT_EQ(kv_dim, 32);

  int64_t at = 0;
  const int64_t embed = at;   at += vocab * dim;
  const int64_t rms_att = at; at += L * dim;
  const int64_t wq = at;      at += L * dim * dim;
  const int64_t wk = at;      at += L * kv_dim * dim;
  const int64_t wv = at;      at += L * kv_dim * dim;
  const int64_t wo = at;      at += L * dim * dim;
  const int64_t rms_ffn = at; at += L * dim;
  const int64_t w1 = at;      at += L * hidden * dim;
  const int64_t w2 = at;      at += L * dim * hidden;
  const int64_t w3 = at;      at += L * hidden * dim;
  const int64_t rms_final = at;
  EXPECT_EQ(rms_final, 259968);

  const Weights& w = ck->weights;
  // (vector in the checkpoint, its start in the file for layer 0, elements per layer)
  struct Probe {
    const char* name;
    const std::vector<float>& (*get)(const Weights&, int);
    int64_t file_start, per_layer;
  };
  const Probe probes[] = {
      {"attn_norm", [](const Weights& x, int l) -> const std::vector<float>& { return x.layers[l].attn_norm; }, rms_att, dim},
      {"wq", [](const Weights& x, int l) -> const std::vector<float>& { return x.layers[l].wq; }, wq, dim * dim},
      {"wk", [](const Weights& x, int l) -> const std::vector<float>& { return x.layers[l].wk; }, wk, kv_dim * dim},
      {"wv", [](const Weights& x, int l) -> const std::vector<float>& { return x.layers[l].wv; }, wv, kv_dim * dim},
      {"wo", [](const Weights& x, int l) -> const std::vector<float>& { return x.layers[l].wo; }, wo, dim * dim},
      {"ffn_norm", [](const Weights& x, int l) -> const std::vector<float>& { return x.layers[l].ffn_norm; }, rms_ffn, dim},
      {"w1 = w_gate", [](const Weights& x, int l) -> const std::vector<float>& { return x.layers[l].w_gate; }, w1, hidden * dim},
      {"w2 = w_down", [](const Weights& x, int l) -> const std::vector<float>& { return x.layers[l].w_down; }, w2, dim * hidden},
      {"w3 = w_up", [](const Weights& x, int l) -> const std::vector<float>& { return x.layers[l].w_up; }, w3, hidden * dim},
  };
  for (const Probe& p : probes) {
    for (int l = 0; l < L; ++l) {
      const auto& v = p.get(w, l);
      ASSERT_EQ(int64_t(v.size()), p.per_layer) << p.name;
      for (int64_t i : {int64_t(0), int64_t(1), p.per_layer / 2 + 3, p.per_layer - 1}) {
        EXPECT_EQ(v[size_t(i)], float_at(path, p.file_start + l * p.per_layer + i)) << p.name << " layer " << l << " [" << i << "]";
      }
    }
  }
  for (int64_t i : {int64_t(0), int64_t(63), int64_t(64 * 300 + 5), vocab * dim - 1}) {
    EXPECT_EQ(w.token_embedding[size_t(i)], float_at(path, embed + i)) << i;
  }
  for (int64_t i : {0, 17, 63}) EXPECT_EQ(w.final_norm[size_t(i)], float_at(path, rms_final + i)) << i;
  // RMSNorm gains of a trained model are positive and O(1); a shifted read would not look like that.
  for (float g : w.final_norm) EXPECT_GT(g, 0.0f);
}

TEST(Llama2c, TruncatedCopiesAreDataLoss) {
  const auto bytes = stories_bytes();
  ASSERT_EQ(bytes.size(), 1056540u);
  const std::string dir = testing::temp_dir();
  for (size_t n : {size_t(0), size_t(3), size_t(27), size_t(28), size_t(1000), bytes.size() - 16388, bytes.size() - 4,
                   bytes.size() - 1}) {
    const std::string p = dir + "/cut.bin";
    write_file(p, std::vector<uint8_t>(bytes.begin(), bytes.begin() + long(n)));
    const auto ck = load_llama2c_checkpoint(p);
    EXPECT_EQ(ck.status().code(), ErrorCode::kDataLoss) << n << " bytes: " << ck.status().to_string();
  }
  const std::string p = dir + "/cut.bin";
  write_file(p, std::vector<uint8_t>(bytes.begin(), bytes.end() - 4));
  EXPECT_NE(load_llama2c_checkpoint(p).status().message().find("truncated"), std::string::npos);
}

TEST(Llama2c, OverLongCopiesAreDataLoss) {
  auto bytes = stories_bytes();
  const std::string dir = testing::temp_dir();
  for (size_t extra : {1u, 4u, 512u * 64u * 4u}) {
    auto longer = bytes;
    longer.resize(bytes.size() + extra, 0);
    write_file(dir + "/long.bin", longer);
    const auto ck = load_llama2c_checkpoint(dir + "/long.bin");
    EXPECT_EQ(ck.status().code(), ErrorCode::kDataLoss) << extra;
    EXPECT_NE(ck.status().message().find("trailing data"), std::string::npos) << ck.status().message();
  }
}

// A v0 file whose float number k (counting from 0 after the header) has the value k.
std::vector<uint8_t> synthetic(const std::vector<int32_t>& header, int64_t n_floats) {
  std::vector<uint8_t> b(28 + 4 * size_t(n_floats));
  std::memcpy(b.data(), header.data(), 28);
  for (int64_t k = 0; k < n_floats; ++k) {
    const float v = float(k);
    std::memcpy(b.data() + 28 + 4 * k, &v, 4);
  }
  return b;
}

TEST(Llama2c, SeparateClassifierAfterSkippedRopeTables) {
  // dim 8, hidden 12, 2 layers, 2 heads (head size 4), 1 KV head, vocab -10 (separate wcls), seq 6.
  const int64_t D = 8, H = 12, L = 2, KV = 4, V = 10, S = 6;
  const int64_t body = V * D + L * (D + D * D + 2 * KV * D + D * D + D + 3 * H * D) + D;
  const int64_t rope = S * 4;  // freq_cis_real and _imag: [seq, head_size / 2] each
  const std::string p = testing::temp_dir() + "/sep.bin";
  write_file(p, synthetic({8, 12, 2, 2, 1, -10, 6}, body + rope + V * D));
  const auto ck = load_llama2c_checkpoint(p);
  ASSERT_TRUE(ck.ok()) << ck.status().to_string();
  EXPECT_FALSE(ck->config.tied_embeddings);
  EXPECT_EQ(ck->config.vocab_size, 10);
  EXPECT_EQ(ck->config.head_dim, 4);
  const Weights& w = ck->weights;
  EXPECT_EQ(w.token_embedding.front(), 0.0f);
  EXPECT_EQ(w.token_embedding.back(), float(V * D - 1));
  // Stacked tensors: all layers of one tensor, then the next tensor.
  int64_t at = V * D;
  EXPECT_EQ(w.layers[0].attn_norm[0], float(at));
  EXPECT_EQ(w.layers[1].attn_norm[0], float(at + D));
  at += L * D;
  EXPECT_EQ(w.layers[0].wq[0], float(at));
  EXPECT_EQ(w.layers[1].wq[D * D - 1], float(at + 2 * D * D - 1));
  at += L * D * D;
  EXPECT_EQ(w.layers[1].wk[0], float(at + KV * D));
  at += L * KV * D;
  EXPECT_EQ(w.layers[0].wv[0], float(at));
  at += L * KV * D;
  EXPECT_EQ(w.layers[0].wo[0], float(at));
  at += L * D * D;
  EXPECT_EQ(w.layers[1].ffn_norm[0], float(at + D));
  at += L * D;
  EXPECT_EQ(w.layers[0].w_gate[0], float(at));  // w1
  at += L * H * D;
  EXPECT_EQ(w.layers[0].w_down[0], float(at));  // w2
  at += L * D * H;
  EXPECT_EQ(w.layers[1].w_up.back(), float(at + 2 * H * D - 1));  // w3
  at += L * H * D;
  EXPECT_EQ(w.final_norm[0], float(at));
  at += D;
  ASSERT_EQ(at, body);
  ASSERT_EQ(w.output.size(), size_t(V * D));
  EXPECT_EQ(w.output[0], float(body + rope));
  EXPECT_EQ(w.output.back(), float(body + rope + V * D - 1));
  EXPECT_EQ(&w.classifier(), &w.output);

  // Without the classifier the same file is short by exactly V * D floats.
  write_file(p, synthetic({8, 12, 2, 2, 1, -10, 6}, body + rope));
  EXPECT_EQ(load_llama2c_checkpoint(p).status().code(), ErrorCode::kDataLoss);
}

TEST(Llama2c, NewerExportFormatIsUnsupported) {
  std::vector<uint8_t> b(256 + 64, 0);
  const uint32_t magic = 0x616b3432, version = 2;
  std::memcpy(b.data(), &magic, 4);
  std::memcpy(b.data() + 4, &version, 4);
  const std::string p = testing::temp_dir() + "/v2.bin";
  write_file(p, b);
  const auto ck = load_llama2c_checkpoint(p);
  EXPECT_EQ(ck.status().code(), ErrorCode::kUnsupported);
  EXPECT_NE(ck.status().message().find("ak42"), std::string::npos) << ck.status().message();
  EXPECT_NE(ck.status().message().find("version 2"), std::string::npos) << ck.status().message();
}

TEST(Llama2c, ImplausibleHeadersAreDataLoss) {
  const std::string p = testing::temp_dir() + "/bad.bin";
  const std::vector<std::vector<int32_t>> headers = {
      {0, 12, 2, 2, 1, 10, 6},           // dim 0
      {8, 12, -2, 2, 1, 10, 6},          // negative layers
      {8, 12, 2, 3, 1, 10, 6},           // dim % n_heads
      {8, 12, 2, 2, 3, 10, 6},           // n_heads % n_kv_heads
      {6, 12, 2, 2, 1, 10, 6},           // odd head size
      {8, 12, 2, 2, 1, 0, 6},            // vocab 0
      {1 << 30, 1 << 30, 1 << 30, 2, 1, 1 << 30, 1 << 30},  // sizes overflow int64
      {8, 12, 2, 2, 1, INT32_MIN, 6},
  };
  for (const auto& h : headers) {
    write_file(p, synthetic(h, 100));
    const auto ck = load_llama2c_checkpoint(p);
    EXPECT_EQ(ck.status().code(), ErrorCode::kDataLoss) << h[0] << " " << h[2] << " " << h[3] << " " << h[4];
  }
}

TEST(Llama2c, MissingFileIsNotFound) {
  EXPECT_EQ(load_llama2c_checkpoint("/nonexistent/stories.bin").status().code(), ErrorCode::kNotFound);
}

}  // namespace
}  // namespace kvlab
