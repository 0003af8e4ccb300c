// Behaviour of the individual policies beyond the generic conformance suite: KIVI with a residual
// longer than the context is the f16 cache; the streaming window keeps its bytes constant over a
// long decode; the quantized tiers hold exactly the bytes their layouts say; block stores with
// several key groups per block.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "base/serialize.h"
#include "kvcache/block_store.h"
#include "kvcache/kv_cache.h"
#include "tests/testing/models.h"

namespace kvlab {
namespace {

// A small geometry with a long context, driven through the cache interface directly.
struct Synthetic {
  KvGeometry geo;
  RopeTable rope;
  std::mt19937 rng{9};
  std::normal_distribution<float> nd;
  Synthetic(int head_dim, int max_seq_len) : geo(), rope(head_dim, 10000.0f, RopeStyle::kInterleaved, max_seq_len) {
    geo.n_layers = 2;
    geo.n_heads = 4;
    geo.n_kv_heads = 2;
    geo.head_dim = head_dim;
    geo.max_seq_len = max_seq_len;
  }
  // One forward of n tokens into slot 0 with random q, k, v.
  void step(KvCache& cache, int n) {
    const std::vector<int> slots = {0}, counts = {n};
    auto batch = cache.plan(slots, counts);
    ASSERT_TRUE(batch.ok());
    std::vector<float> q(size_t(n) * geo.q_dim()), k(size_t(n) * geo.kv_dim()), v(k.size()), out(q.size());
    for (int l = 0; l < geo.n_layers; ++l) {
      for (auto* x : {&q, &k, &v}) {
        for (float& e : *x) e = nd(rng);
      }
      cache.attend(l, *batch, q.data(), k.data(), v.data(), out.data());
    }
    cache.commit(*batch);
  }
};

// Logits of a 200-token prompt, then of 100 decode steps (stories260K).
std::vector<float> prompt_then_decode(const std::string& spec) {
  const Model& m = testing::stories260k();
  std::vector<int32_t> ids;
  for (int i = 0; i < 300; ++i) ids.push_back(int32_t(3 + (i * 131) % 500));
  auto cache = m.make_cache(spec, 1);
  EXPECT_TRUE(cache.ok()) << spec;
  if (!cache.ok()) return {};
  std::vector<float> all, logits;
  SeqInput in{0, std::span<const int32_t>(ids.data(), 200)};
  EXPECT_TRUE(m.forward(**cache, {&in, 1}, LogitsMode::kLast, &logits).ok());
  all = logits;
  for (size_t t = 200; t < ids.size(); ++t) {
    SeqInput one{0, std::span<const int32_t>(&ids[t], 1)};
    EXPECT_TRUE(m.forward(**cache, {&one, 1}, LogitsMode::kLast, &logits).ok());
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

TEST(KiviTest, ResidualLongerThanTheContextIsTheF16Cache) {
  EXPECT_EQ(prompt_then_decode("kivi:bits=2,group=32,residual=1000"), prompt_then_decode("full:dtype=f16"));
}

// xKV at full rank (f32 factors: stories260K's groups of 2 layers are 64 wide) reproduces the
// full f32 cache's logits within 1e-4; at low rank it does not (the test can fail).
TEST(XkvTest, FullRankReproducesTheF32CacheLogits) {
  const std::vector<float> ref = prompt_then_decode("full:dtype=f32");
  const std::vector<float> full_rank = prompt_then_decode("xkv:group=2,rank_k=64,rank_v=64,dtype=f32");
  const std::vector<float> low_rank = prompt_then_decode("xkv:group=2,rank_k=4,rank_v=6,dtype=f32");
  ASSERT_EQ(full_rank.size(), ref.size());
  ASSERT_EQ(low_rank.size(), ref.size());
  double worst = 0, worst_low = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    worst = std::max(worst, double(std::fabs(full_rank[i] - ref[i])));
    worst_low = std::max(worst_low, double(std::fabs(low_rank[i] - ref[i])));
  }
  EXPECT_LE(worst, 1e-4);
  EXPECT_GT(worst_low, 1e-2);
}

// What a prompt leaves in the cache: per group and sequence A_K [n, rk] and A_V [n, rv] (payload)
// and per layer B_K [C, rk], B_V [C, rv] (meta), f16; later tokens dense (exact); nothing else.
TEST(XkvTest, FactorsHoldTheBytesOfTheirShapes) {
  Synthetic s(16, 1024);  // 2 layers, 2 kv heads of 16: C = 32
  auto cache = KvCache::create(s.geo, &s.rope, "xkv:group=2,rank_k=10,rank_v=15", 1);
  ASSERT_TRUE(cache.ok());
  s.step(**cache, 300);
  for (int t = 0; t < 5; ++t) s.step(**cache, 1);
  const MemoryReport m = (*cache)->memory();
  EXPECT_EQ(m[MemoryKind::kPayload], 300 * (10 + 15) * 2);
  EXPECT_EQ(m[MemoryKind::kMeta], 2 /*layers*/ * 32 * (10 + 15) * 2);
  EXPECT_GT(m[MemoryKind::kExact], 0);  // the 5 decode tokens' ring pages
  EXPECT_EQ((*cache)->stored_tokens(1, 0), 305);
  // A crop inside the prompt keeps the first rows of A; B stays.
  ASSERT_TRUE((*cache)->crop(0, 100).ok());
  EXPECT_EQ((*cache)->memory()[MemoryKind::kPayload], 100 * (10 + 15) * 2);
  EXPECT_EQ((*cache)->stored_tokens(0, 0), 100);
}

// Quantized factors: codes under kPayload, the f16 scale and zero of every group of 16 along the
// rank under kMeta with B; a prompt shorter than the rank pads the guarded rank to whole groups
// and still reads back its keys and values.
TEST(XkvTest, QuantizedFactorsHoldTheBytesOfTheirLayout) {
  Synthetic s(16, 1024);  // 2 layers, 2 kv heads of 16: C = 32
  for (int bits : {8, 4}) {
    auto cache = KvCache::create(s.geo, &s.rope,
                                 "xkv:group=2,rank_k=16,rank_v=32,factor_group=16,factors=int" + std::to_string(bits), 1);
    ASSERT_TRUE(cache.ok());
    s.step(**cache, 300);
    const MemoryReport m = (*cache)->memory();
    const int64_t code_bytes = bits * (16 + 32) / 8, scale_bytes = 4 * (16 + 32) / 16;  // per row of A or B^T
    EXPECT_EQ(m[MemoryKind::kPayload], 300 * code_bytes) << bits;
    EXPECT_EQ(m[MemoryKind::kMeta], 300 * scale_bytes + 2 /*layers*/ * 32 * (code_bytes + scale_bytes)) << bits;
  }
  // 10 tokens: rank guarded to 10, stored as one group of 16 (zero-padded); full rank, so the
  // keys and values come back within the 8-bit rounding.
  auto cache = KvCache::create(s.geo, &s.rope, "xkv:group=2,rank_k=16,rank_v=16,factor_group=16,factors=int8", 1);
  ASSERT_TRUE(cache.ok());
  const std::vector<int> slots = {0}, counts = {10};
  auto batch = (*cache)->plan(slots, counts);
  ASSERT_TRUE(batch.ok());
  std::vector<float> q(size_t(10) * s.geo.q_dim()), k(size_t(10) * s.geo.kv_dim()), v(k.size()), out(q.size());
  for (auto* x : {&q, &k, &v}) {
    for (float& e : *x) e = s.nd(s.rng);
  }
  for (int l = 0; l < 2; ++l) (*cache)->attend(l, *batch, q.data(), k.data(), v.data(), out.data());
  (*cache)->commit(*batch);
  EXPECT_EQ((*cache)->memory()[MemoryKind::kPayload], 10 * (16 + 16));
  const LayerContents c = (*cache)->read(1, 0);
  std::vector<float> k_rot = k;
  std::vector<int32_t> pos(10);
  for (int t = 0; t < 10; ++t) pos[size_t(t)] = t;
  s.rope.rotate(k_rot.data(), 10, s.geo.n_kv_heads, pos.data());
  ASSERT_EQ(c.k.size(), k.size());
  for (size_t i = 0; i < k.size(); ++i) {
    EXPECT_NEAR(c.k[i], k_rot[i], 0.05) << i;
    EXPECT_NEAR(c.v[i], v[i], 0.05) << i;
  }
}

// Logits at full rank with the factors in 8 and 4 bits against the f32 cache: 4 bits cost
// clearly more than 8 (the test fails if the quantization is skipped or broken).
TEST(XkvTest, QuantizedFactorsCostTheirBits) {
  const std::vector<float> ref = prompt_then_decode("full:dtype=f32");
  auto worst = [&](const std::string& spec) {
    const std::vector<float> x = prompt_then_decode(spec);
    EXPECT_EQ(x.size(), ref.size());
    double w = 0;
    for (size_t i = 0; i < std::min(x.size(), ref.size()); ++i) w = std::max(w, double(std::fabs(x[i] - ref[i])));
    return w;
  };
  const double int8 = worst("xkv:group=2,rank_k=64,rank_v=64,factors=int8,factor_group=16");
  const double int4 = worst("xkv:group=2,rank_k=64,rank_v=64,factors=int4,factor_group=16");
  const double q8 = worst("quant:kbits=8,vbits=8,group=16");
  const double q4 = worst("quant:kbits=4,vbits=4,group=16");
  std::printf("largest logit error at full rank: int8 factors %.4g, int4 factors %.4g; quant 8 %.4g, 4 %.4g\n", int8, int4, q8, q4);
  EXPECT_GT(int8, 1e-4);
  EXPECT_GT(int4, 4 * int8);
  // At full rank the factors hold the same information as the cache: rounding them costs no more
  // than rounding K / V themselves with as many bits in groups as small (measured 0.16 vs 0.47
  // at 8 bits, 2.2 vs 4.2 at 4 bits).
  EXPECT_LT(int8, q8);
  EXPECT_LT(int4, q4);
}

TEST(XkvTest, ImpossibleParametersAreClearErrors) {
  Synthetic s(16, 1024);  // 2 layers, C = 32
  auto expect_error = [&](const std::string& spec, const std::string& needle) {
    auto c = KvCache::create(s.geo, &s.rope, spec, 1);
    ASSERT_FALSE(c.ok()) << spec;
    EXPECT_NE(c.status().message().find(needle), std::string::npos) << c.status().message();
  };
  expect_error("xkv:group=2,rank_k=0", "rank_k");
  expect_error("xkv:group=2,rank_k=65,rank_v=8", "rank 65 is above the group width 64");
  expect_error("xkv:group=3,rank_k=8,rank_v=8", "group 3 is larger than the layer range (2 layers)");
  expect_error("xkv:group=2,rank_k=24,rank_v=32,factors=int8", "rank 24 is not a multiple of factor_group 32");
  s.geo.n_layers = 3;
  expect_error("xkv:group=2,rank_k=8,rank_v=8,short_group=off", "3 layers are not a multiple of group 2");
  EXPECT_TRUE(KvCache::create(s.geo, &s.rope, "xkv:group=2,rank_k=8,rank_v=8", 1).ok());
}

TEST(StreamingTest, BytesStayConstantOnceTheWindowIsFull) {
  Synthetic s(16, 8192);
  auto cache = KvCache::create(s.geo, &s.rope, "streaming:sink=4,window=256", 1);
  ASSERT_TRUE(cache.ok());
  s.step(**cache, 100);
  int64_t full_bytes = -1;
  for (int t = 0; t < 4096 + 200; ++t) {
    s.step(**cache, 1);
    const int n = (*cache)->seq_length(0);
    if (n < 4 + 256) continue;
    const int64_t bytes = (*cache)->memory().kv_bytes();
    if (full_bytes < 0) full_bytes = bytes;
    ASSERT_EQ(bytes, full_bytes) << "after " << n << " tokens";
    ASSERT_EQ((*cache)->stored_tokens(0, 0), 4 + 256);
  }
  EXPECT_EQ((*cache)->seq_length(0), 100 + 4096 + 200);
  // The kept positions: the sinks and the last 256.
  const LayerContents c = (*cache)->read(1, 0);
  ASSERT_EQ(c.positions.size(), 260u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(c.positions[i], i);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(c.positions[4 + i], 100 + 4096 + 200 - 256 + i);
}

// kivi, 2 bits, group 32, head size 32: a block of 32 tokens of one kv head holds
//   K codes 32 channels x 8 bytes + V codes 32 tokens x 8 bytes = 512 bytes   (payload)
//   K scale + zero 2 x 32 f16 + V scale + zero 2 x 32 x 1 f16 = 256 bytes      (meta)
// and the exact residual lies between 32 and 63 tokens.
TEST(KiviTest, TiersHoldTheBytesOfTheirLayout) {
  Synthetic s(32, 4096);
  auto cache = KvCache::create(s.geo, &s.rope, "kivi:bits=2,group=32,residual=32", 1);
  ASSERT_TRUE(cache.ok());
  s.step(**cache, 1000);
  for (int t = 0; t < 45; ++t) s.step(**cache, 1);
  const int n = 1045;
  const int compressed = (n - 32) / 32 * 32;  // whole groups beyond the residual: 31
  ASSERT_EQ(compressed, 992);
  // Pages of 128 tokens (4 key groups); the last holds 3 groups and is booked whole. Per kv head
  // and page: K codes 32 channels x 32 bytes + V codes 128 tokens x 8 bytes; K scale and zero
  // 4 groups x 32 channels, V scale and zero 128 tokens x 1 group, f16.
  const int64_t pages = 8;
  const MemoryReport m = (*cache)->memory();
  EXPECT_EQ(m[MemoryKind::kPayload], 2 /*layers*/ * 2 /*heads*/ * pages * (32 * 32 + 128 * 8));
  EXPECT_EQ(m[MemoryKind::kMeta], 2 * 2 * pages * 2 * 2 * (4 * 32 + 128));
  const int exact = n - compressed;
  EXPECT_GE(exact, 32);
  EXPECT_LE(exact, 63);
  EXPECT_EQ((*cache)->stored_tokens(0, 0), n);
  // The residual ring has 64 slots (two pages of 32), K and V, 2 heads, f16.
  EXPECT_EQ(m[MemoryKind::kExact], 2 * 2 * 2 * 32 * 2 * 2 * 32);
}

// A block store whose blocks hold several KIVI key groups reads back, token for token, what a
// store of one group per block reads (the groups are quantized alike); a truncate inside a group
// sends the next tokens to a new block; a saved store refuses to load into other block sizes.
TEST(BlockStoreTest, PagesOfSeveralKeyGroups) {
  const int heads = 2, d = 32, kv_dim = heads * d;
  const IntFormat kf{KvFormat::kIntChannel, 4, 32}, vf{KvFormat::kIntToken, 4, 32};
  MemoryLedger ledger;
  BlockStore paged(&ledger, heads, d, 128, kf, vf), single(&ledger, heads, d, 32, kf, vf);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  std::vector<float> k(size_t(96) * kv_dim), v(k.size());
  auto append = [&](int n) {
    for (float& x : k) x = nd(rng);
    for (float& x : v) x = nd(rng);
    paged.append(k.data(), v.data(), n, kv_dim);
    single.append(k.data(), v.data(), n, kv_dim);
  };
  auto expect_same = [&](int from, int to) {
    std::vector<float> ka(kv_dim), va(kv_dim), kb(kv_dim), vb(kv_dim);
    for (int i = from; i < to; ++i) {
      paged.read(i, ka.data(), va.data());
      single.read(i, kb.data(), vb.data());
      ASSERT_EQ(ka, kb) << "keys of token " << i;
      ASSERT_EQ(va, vb) << "values of token " << i;
    }
  };
  append(96);
  append(32);
  EXPECT_EQ(paged.n_blocks(), 1);
  append(32);
  EXPECT_EQ(paged.n_blocks(), 2);
  EXPECT_EQ(paged.size(), 160);
  expect_same(0, 160);
  paged.truncate(100);
  single.truncate(100);
  append(64);
  EXPECT_EQ(paged.n_blocks(), 2);  // 100 tokens, then a new block of 64
  KvBlock kb, vb;
  int first = 0;
  paged.block(1, 0, &kb, &vb, &first);
  EXPECT_EQ(first, 100);
  EXPECT_EQ(kb.n, 64);
  expect_same(0, 164);

  BinaryWriter w;
  paged.save(w);
  BlockStore other(&ledger, heads, d, 32, kf, vf);
  BinaryReader r(w.bytes().data(), w.bytes().size(), "store");
  const Status st = other.load(r);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("blocks of 128 tokens, this cache's are of 32"), std::string::npos) << st.message();
  BlockStore back(&ledger, heads, d, 128, kf, vf);
  BinaryReader r2(w.bytes().data(), w.bytes().size(), "store");
  ASSERT_TRUE(back.load(r2).ok());
  std::vector<float> ka(kv_dim), va(kv_dim), kc(kv_dim), vc(kv_dim);
  for (int i = 0; i < 164; ++i) {
    back.read(i, ka.data(), va.data());
    paged.read(i, kc.data(), vc.data());
    ASSERT_EQ(ka, kc) << i;
    ASSERT_EQ(va, vc) << i;
  }
}

TEST(PolicyParamsTest, ImpossibleGroupsAreClearErrors) {
  Synthetic s(64, 1024);
  auto kivi = KvCache::create(s.geo, &s.rope, "kivi:group=48", 1);
  ASSERT_FALSE(kivi.ok());
  EXPECT_NE(kivi.status().message().find("kivi: group 48 does not divide the head size 64"), std::string::npos)
      << kivi.status().message();
  auto quant = KvCache::create(s.geo, &s.rope, "quant:group=24", 1);
  ASSERT_FALSE(quant.ok());
  EXPECT_NE(quant.status().message().find("quant: group 24 does not divide the head size 64"), std::string::npos);
  // Groups above the head size are capped at it.
  EXPECT_TRUE(KvCache::create(s.geo, &s.rope, "kivi:group=128", 1).ok());
}

}  // namespace
}  // namespace kvlab
