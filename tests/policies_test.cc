// Behaviour of the individual policies beyond the generic conformance suite: KIVI with a residual
// longer than the context is the f16 cache; the streaming window keeps its bytes constant over a
// long decode; the quantized tiers hold exactly the bytes their layouts say; block stores with
// several key groups per block; LightTransfer's rules, peak memory, rings and short prompts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>

#include "base/serialize.h"
#include "kernels/cpu/kv_attention.h"
#include "kvcache/block_store.h"
#include "kvcache/kv_cache.h"
#include "kvcache/token_ring.h"
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
// Reads of a range (across blocks, from inside one) give the tokens' own reads.
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
    std::vector<float> kr(size_t(to - from) * kv_dim), vr(kr.size());
    paged.read(from, to - from, kr.data(), vr.data());
    for (int i = from; i < to; ++i) {
      paged.read(i, 1, ka.data(), va.data());
      single.read(i, 1, kb.data(), vb.data());
      ASSERT_EQ(ka, kb) << "keys of token " << i;
      ASSERT_EQ(va, vb) << "values of token " << i;
      ASSERT_TRUE(std::equal(ka.begin(), ka.end(), &kr[size_t(i - from) * kv_dim])) << "range read, keys of " << i;
      ASSERT_TRUE(std::equal(va.begin(), va.end(), &vr[size_t(i - from) * kv_dim])) << "range read, values of " << i;
    }
  };
  append(96);
  append(32);
  EXPECT_EQ(paged.n_blocks(), 1);
  append(32);
  EXPECT_EQ(paged.n_blocks(), 2);
  EXPECT_EQ(paged.size(), 160);
  expect_same(0, 160);
  expect_same(37, 140);
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
  expect_same(99, 101);

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
    back.read(i, 1, ka.data(), va.data());
    paged.read(i, 1, kc.data(), vc.data());
    ASSERT_EQ(ka, kc) << i;
    ASSERT_EQ(va, vc) << i;
  }
}

// A ring that has wrapped reads back the f32 tokens pushed, for ranges that start inside a page,
// cross pages and cross the wrap, and token by token.
TEST(TokenRingTest, RangeReadsAcrossPagesAndTheWrap) {
  const int heads = 3, d = 8, kv_dim = heads * d;
  MemoryLedger ledger;
  TokenRing ring(&ledger, MemoryKind::kExact, KvFormat::kF32, heads, d, 64);
  ASSERT_EQ(ring.page_tokens(), 32);
  std::vector<float> pushed_k, pushed_v;  // every token ever pushed, [t, kv_dim]
  auto push = [&](int n) {
    for (int t = 0; t < n; ++t) {
      const size_t at = pushed_k.size();
      for (int c = 0; c < kv_dim; ++c) {
        pushed_k.push_back(float(at + size_t(c)));
        pushed_v.push_back(-float(at + size_t(c)));
      }
      ring.push(&pushed_k[at], &pushed_v[at]);
    }
  };
  push(50);
  ring.pop_front(40);
  push(40);  // slots 50..63, then 0..25: the ring has wrapped
  ASSERT_EQ(ring.size(), 50);
  const int dropped = 40;
  for (auto [first, n] : {std::pair{0, 50}, {5, 40}, {13, 1}, {20, 30}, {49, 1}, {0, 0}}) {
    std::vector<float> k(size_t(n) * kv_dim), v(k.size()), k1(kv_dim), v1(kv_dim);
    ring.read(first, n, k.data(), v.data());
    for (int i = 0; i < n; ++i) {
      const size_t at = size_t(dropped + first + i) * kv_dim;
      ASSERT_TRUE(std::equal(&k[size_t(i) * kv_dim], &k[size_t(i + 1) * kv_dim], &pushed_k[at])) << first << "+" << i;
      ASSERT_TRUE(std::equal(&v[size_t(i) * kv_dim], &v[size_t(i + 1) * kv_dim], &pushed_v[at])) << first << "+" << i;
      ring.read(first + i, 1, k1.data(), v1.data());
      ASSERT_TRUE(std::equal(k1.begin(), k1.end(), &pushed_k[at])) << first + i;
    }
  }
}

// An fp8 ring tells the kernels which pages hold no NaN code (KvBlock::fp8_nan_free), so that they
// skip their scan there: a page that got a NaN element, or loaded one, keeps it NaN in the fused
// scores and values; the other pages give the bits of the scanning path.
TEST(TokenRingTest, Fp8PagesWithoutNanSkipTheScanAndNanStillReadsAsNan) {
  const int heads = 2, d = 16, kv_dim = heads * d;
  MemoryLedger ledger;
  TokenRing ring(&ledger, MemoryKind::kExact, KvFormat::kFp8, heads, d, 64);
  ASSERT_EQ(ring.page_tokens(), 32);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int t = 0; t < 40; ++t) {  // pages 0 (tokens 0..31) and 1 (32..39)
    std::vector<float> k(kv_dim), v(kv_dim);
    for (float& x : k) x = nd(rng);
    for (float& x : v) x = nd(rng);
    if (t == 35) k[d + 3] = std::numeric_limits<float>::quiet_NaN();  // head 1, channel 3
    ring.push(k.data(), v.data());
  }
  std::vector<float> q(d);
  for (float& x : q) x = nd(rng);
  auto check = [&](const TokenRing& r) {
    ASSERT_EQ(r.n_runs(), 2);
    for (int run = 0; run < 2; ++run) {
      for (int h = 0; h < heads; ++h) {
        KvBlock kb, vb;
        int first = 0;
        r.run(run, h, &kb, &vb, &first);
        EXPECT_EQ(kb.fp8_nan_free, run == 0);
        EXPECT_EQ(vb.fp8_nan_free, run == 0);
        std::vector<float> s(size_t(kb.n)), s_scan(s.size());
        kv_scores(kb, q.data(), 1, s.data());
        KvBlock scanned = kb;
        scanned.fp8_nan_free = false;
        kv_scores(scanned, q.data(), 1, s_scan.data());
        for (int j = 0; j < kb.n; ++j) {
          EXPECT_EQ(std::isnan(s[size_t(j)]), run == 1 && h == 1 && first + j == 35) << run << " " << h << " " << j;
          if (!std::isnan(s[size_t(j)])) {
            EXPECT_EQ(s[size_t(j)], s_scan[size_t(j)]) << run << " " << h << " " << j;
          }
        }
      }
    }
  };
  check(ring);
  BinaryWriter w;
  ring.save(w);
  TokenRing back(&ledger, MemoryKind::kExact, KvFormat::kFp8, heads, d, 64);
  BinaryReader r(w.bytes().data(), w.bytes().size(), "ring");
  ASSERT_TRUE(back.load(r).ok());
  check(back);
  // Cleared, the pages start without NaN again.
  ring.clear();
  std::vector<float> k(kv_dim, 0.5f), v(kv_dim, -0.5f);
  for (int t = 0; t < 40; ++t) ring.push(k.data(), v.data());
  KvBlock kb, vb;
  int first = 0;
  ring.run(1, 1, &kb, &vb, &first);
  EXPECT_TRUE(kb.fp8_nan_free);
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

namespace kvlab {
namespace {

// The numbers of a "key": [a, b, ...] array in a JSON dump.
std::vector<double> json_array_of(const std::string& json, const std::string& key) {
  std::vector<double> out;
  size_t at = json.find("\"" + key + "\": [");
  if (at == std::string::npos) return out;
  const char* p = json.c_str() + json.find('[', at) + 1;
  while (*p && *p != ']') {
    char* end = nullptr;
    out.push_back(std::strtod(p, &end));
    p = end;
    while (*p == ',' || *p == ' ') ++p;
  }
  return out;
}

// rule=first makes layers 0..k-1 lazy for every sequence; with a one-forward prompt that is
// exactly StreamingLLM on those layers and the base on the others (the prompt attends to itself
// exactly in both, then both keep the sinks and the last W tokens in the same ring slots): the
// same logits, bit for bit, under every ISA.
TEST(LightTransferTest, FirstLayersRuleIsTheMixedStreamingSpec) {
  const std::vector<float> lt = prompt_then_decode("lighttransfer:rule=first,rho=0.4,sink=4,window=32");
  const std::vector<float> mixed = prompt_then_decode("L0-1=streaming:sink=4,window=32;L2-4=full:dtype=f16");
  const std::vector<float> full = prompt_then_decode("full:dtype=f16");
  ASSERT_EQ(lt.size(), mixed.size());
  ASSERT_EQ(lt.size(), full.size());
  double to_full = 0;
  for (size_t i = 0; i < lt.size(); ++i) to_full = std::max(to_full, double(std::fabs(lt[i] - full[i])));
  EXPECT_EQ(lt, mixed);
  EXPECT_GT(to_full, 0.1);  // the window does matter here: the test can fail
}

// The ratio rule keeps the round((1 - rho) L) least lazy layers of each sequence and converts
// the others, as the reported scores say; sequences keep their own sets.
TEST(LightTransferTest, RatioRuleMakesTheLaziestLayersStreaming) {
  const Model& m = testing::stories260k();
  const int L = m.config().n_layers;  // 5
  std::vector<int32_t> ids;
  for (int i = 0; i < 300; ++i) ids.push_back(int32_t(3 + (i * 131) % 500));
  for (int slot = 0; slot < 2; ++slot) {
    auto cache = m.make_cache("lighttransfer:rule=ratio,rho=0.6,sink=4,window=24", 1);
    ASSERT_TRUE(cache.ok());
    const int n = slot == 0 ? 200 : 260;
    SeqInput in{0, std::span<const int32_t>(ids.data() + slot * 40, size_t(n))};
    std::vector<float> logits;
    ASSERT_TRUE(m.forward(**cache, {&in, 1}, LogitsMode::kLast, &logits).ok());
    const std::string json = (*cache)->report().dump();
    const std::vector<double> scores = json_array_of(json, "lazy_scores");
    const std::vector<double> chosen = json_array_of(json, "lazy_chosen");
    ASSERT_EQ(int(scores.size()), L) << json;
    std::vector<int> order(static_cast<size_t>(L));
    for (int l = 0; l < L; ++l) order[size_t(l)] = l;
    std::sort(order.begin(), order.end(), [&](int a, int b) { return scores[size_t(a)] > scores[size_t(b)]; });
    for (int r = 0; r < L; ++r) {
      const int l = order[size_t(r)];
      const bool lazy = r < 3;  // round(0.6 * 5)
      EXPECT_EQ(chosen[size_t(l)], lazy ? 1.0 : 0.0) << "layer " << l << " " << json;
      EXPECT_EQ((*cache)->stored_tokens(l, 0), lazy ? 4 + 24 : n) << "layer " << l;
      EXPECT_GT(scores[size_t(l)], 0.0);
      EXPECT_LE(scores[size_t(l)], 1.0 + 1e-6);
    }
  }
}

// The priority queue converts a layer as soon as it is known to be among the laziest: while the
// prompt is written, no more than (1 - rho) L + 1 layers hold it whole. Identification from the
// first decoded token instead holds every layer whole until then.
TEST(LightTransferTest, RatioRulePeakMemoryIsNearTheKeptLayers) {
  const Model& m = testing::stories260k();
  const int L = m.config().n_layers;
  std::vector<int32_t> ids;
  for (int i = 0; i < 401; ++i) ids.push_back(int32_t(3 + (i * 131) % 500));
  auto run = [&](const std::string& spec) {
    auto cache = m.make_cache(spec, 1);
    EXPECT_TRUE(cache.ok()) << spec;
    std::vector<float> logits;
    SeqInput in{0, std::span<const int32_t>(ids.data(), 400)};
    EXPECT_TRUE(m.forward(**cache, {&in, 1}, LogitsMode::kLast, &logits).ok());
    SeqInput one{0, std::span<const int32_t>(&ids[400], 1)};
    EXPECT_TRUE(m.forward(**cache, {&one, 1}, LogitsMode::kLast, &logits).ok());
    return (*cache)->memory();
  };
  const double layer = double(run("full:dtype=f16").kv_bytes()) / L;  // one layer of 401 tokens
  const MemoryReport prefill = run("lighttransfer:rho=0.6,sink=4,window=16");
  const MemoryReport decode = run("lighttransfer:rho=0.6,sink=4,window=16,ident=decode");
  // 2 kept layers + 1 being decided, plus 3 lazy layers of 20 tokens (page slack included).
  EXPECT_LE(double(prefill.peak_kv_bytes), 3.25 * layer);
  EXPECT_GE(double(decode.peak_kv_bytes), 0.99 * L * layer);
  EXPECT_LE(double(prefill.kv_bytes()), 2.2 * layer);
  EXPECT_LE(double(decode.kv_bytes()), 2.2 * layer);
}

// A lazy layer is a true ring: over 4096 decode steps its bytes stay constant and it holds the
// sinks and the last W positions. rho = 1: every layer lazy, so the cache's bytes are the rings'.
TEST(LightTransferTest, LazyLayersKeepConstantBytesOver4096DecodeSteps) {
  Synthetic s(16, 8192);
  auto cache = KvCache::create(s.geo, &s.rope, "lighttransfer:rho=1,sink=4,window=256", 1);
  ASSERT_TRUE(cache.ok());
  s.step(**cache, 300);
  const int64_t after_prompt = (*cache)->memory().kv_bytes();
  for (int t = 0; t < 4096; ++t) {
    s.step(**cache, 1);
    ASSERT_EQ((*cache)->memory().kv_bytes(), after_prompt) << "step " << t;
  }
  for (int l = 0; l < s.geo.n_layers; ++l) {
    const LayerContents c = (*cache)->read(l, 0);
    ASSERT_EQ(c.positions.size(), 260u);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(c.positions[size_t(i)], i);
    for (int i = 0; i < 256; ++i) EXPECT_EQ(c.positions[size_t(4 + i)], 300 + 4096 - 256 + i);
  }
}

// A prompt of at most S + W tokens compresses nothing, and the report says so.
TEST(LightTransferTest, ShortPromptsCompressNothing) {
  Synthetic s(16, 8192);
  auto cache = KvCache::create(s.geo, &s.rope, "lighttransfer:rho=1,sink=4,window=256", 1);
  ASSERT_TRUE(cache.ok());
  s.step(**cache, 260);
  for (int t = 0; t < 100; ++t) s.step(**cache, 1);
  EXPECT_EQ((*cache)->stored_tokens(0, 0), 360);
  EXPECT_NE((*cache)->report().dump().find("\"short_prompts\": 1"), std::string::npos) << (*cache)->report().dump();
}

TEST(LightTransferTest, ImpossibleParametersAreClearErrors) {
  Synthetic s(16, 1024);
  auto expect_error = [&](const std::string& spec, const std::string& needle) {
    auto c = KvCache::create(s.geo, &s.rope, spec, 1);
    ASSERT_FALSE(c.ok()) << spec;
    EXPECT_NE(c.status().message().find(needle), std::string::npos) << c.status().message();
  };
  expect_error("lighttransfer:rho=1.5", "bad value '1.5' for lighttransfer:rho: out of range");
  expect_error("lighttransfer:rho=-0.1", "out of range");
  expect_error("lighttransfer:window=1024", "is not below the model's context of 1024 tokens");
  expect_error("lighttransfer:base=[kivi:bits=5]", "bad policy spec for lighttransfer:base: bad value '5' for kivi:bits");
  expect_error("lighttransfer:base=[nosuch]", "unknown policy 'nosuch'");
  expect_error("lighttransfer:base=[kivi:bits=4", "unbalanced brackets");
  expect_error("lighttransfer:window=64,base=[xkv:group=2,rank_k=8,rank_v=8]", "keeps state across layers");
  expect_error("lighttransfer:window=64,base=[streaming]", "evicts tokens itself");
  auto ok = KvCache::create(s.geo, &s.rope, "lighttransfer:window=64,base=[kivi:bits=4,group=16]", 1);
  ASSERT_TRUE(ok.ok()) << ok.status().to_string();
  EXPECT_EQ((*ok)->spec(),
            "lighttransfer:rule=ratio,rho=0.5,tau=0.9,sink=4,window=64,ident=prefill,queries=32,seed=1,dtype=f16,"
            "base=[kivi:bits=4,group=16,residual=128,sink=0,dtype=f16]");
}

}  // namespace
}  // namespace kvlab
