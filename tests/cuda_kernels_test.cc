// The CUDA backend (kernels/cuda) against the CPU: decode attention and the writers.
//
// On every machine, GPU or not:
//   - the per-thread arithmetic of kernels/cuda/kv_element.h, compiled here as host code: its
//     element readers bit for bit against the library's dequantize_block, its
//     scores and value sums against the independent double reader of testing/packed_blocks.h
//     within the f32 budget of the CPU kernels, on the awkward shapes of the CPU tests;
//   - merge_splits against a one-shot softmax;
//   - what check(), check_block(), upload_history() and the GPU writers refuse, and device_info()
//     without a GPU.
// With a GPU (skipped otherwise, saying so): decode_attention over paged histories of every
// format, sequences of unequal lengths and GQA groups 1 to 8, against attention in double over the
// same packed bytes; a sequence alone and in a batch gives the same bits; the GPU writers give
// the CPU writers' bytes (kernels/cuda/kv_write.h); xKV's factorization by cuBLAS and cuSOLVER
// gives the CPU's spectrum and product A B (kernels/cuda/low_rank.h against kvcache/xkv.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "base/half.h"
#include "kernels/cpu/kv_format.h"
#include "kernels/cpu/kv_quantize.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/kv_attention_cuda.h"
#include "kernels/cuda/kv_element.h"
#include "kernels/cuda/kv_write.h"
#include "kernels/cuda/low_rank.h"
#include "kvcache/xkv.h"
#include "testing/packed_blocks.h"

namespace kvlab {
namespace {

using namespace kvlab::testing;  // NOLINT: the packed-block helpers

bool same_float(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  uint32_t x, y;
  std::memcpy(&x, &a, 4);
  std::memcpy(&y, &b, 4);
  return x == y;
}

// Every format with every token or channel group of the CPU tests, and the shapes they use.
struct Shape {
  int n, d;
};
const Shape kShapes[] = {{1, 8}, {5, 17}, {33, 64}, {130, 128}, {7, 256}};

// Calls fn(format, block, what) for every format, group and shape, the blocks packed from kv_like
// data of the seed.
template <class Fn>
void for_each_packed_block(uint64_t seed, Fn fn) {
  Rng rng(seed);
  for (const Format& base : all_formats()) {
    for (const Shape& sh : kShapes) {
      for (int group : groups_for(base, sh.d)) {
        Format f = base;
        f.group = group;
        const std::vector<float> x = kv_like(rng, sh.n, sh.d);
        for (int pad : {3, 0}) {  // odd strides (bytewise loads), then aligned rows (whole loads)
          const Packed p = pack(f, x.data(), sh.n, sh.d, pad);
          fn(rng, p.block, format_name(f) + " n=" + std::to_string(sh.n) + " d=" + std::to_string(sh.d) +
                               " pad=" + std::to_string(pad));
        }
      }
    }
  }
}

TEST(CudaElement, ElementsMatchDequantizeBlock) {
  for_each_packed_block(21, [](Rng&, const KvBlock& b, const std::string& what) {
    std::vector<float> ref(size_t(b.n) * b.d);
    dequantize_block(b, ref.data());
    for (int j = 0; j < b.n; ++j) {
      for (int c = 0; c < b.d; ++c) {
        const float got = cuda::element(b, j, c);
        ASSERT_TRUE(same_float(got, ref[size_t(j) * b.d + c]))
            << what << " (" << j << ", " << c << "): " << got << " vs " << ref[size_t(j) * b.d + c];
      }
    }
  });
}

template <int R>
void check_scores_and_sums(const KvBlock& b, const std::vector<float>& q, const std::vector<float>& w,
                           const std::string& what) {
  for (int j = 0; j < b.n; ++j) {
    float s[R];
    cuda::token_scores<R>(b, j, q.data(), s, 1);
    for (int r = 0; r < R; ++r) {
      double exact = 0, terms = 0;
      for (int c = 0; c < b.d; ++c) {
        const Terms t = ref_terms(b, j, c);
        exact += double(q[r * b.d + c]) * (t.main + t.zero);
        terms += std::fabs(q[r * b.d + c]) * (std::fabs(t.main) + std::fabs(t.zero));
      }
      ASSERT_LE(std::fabs(s[r] - exact), f32_budget(b.d, terms)) << what << " score row " << r << " token " << j;
      if (b.format == KvFormat::kIntChannel) {
        // The folded path the kernel takes for these keys: q times the group's scales, plus the
        // zero term, as the split kernel stages them.
        const int t = j / channel_group_tokens(b);
        std::vector<float> qs(static_cast<size_t>(R * b.d)), z(static_cast<size_t>(R));
        for (int rr = 0; rr < R; ++rr) {
          for (int c = 0; c < b.d; ++c) qs[size_t(rr) * b.d + c] = q[rr * b.d + c] * cuda::folded_scale(b, t, c);
          z[rr] = cuda::folded_zero_term(b, t, q.data() + rr * b.d);
        }
        float fs[R];
        cuda::folded_token_scores<R>(b, j, qs.data(), z.data(), fs, 1);
        ASSERT_LE(std::fabs(fs[r] - exact), f32_budget(b.d, terms)) << what << " folded score row " << r << " token " << j;
      }
    }
  }
  // Value sums over the whole block and over a middle range, onto a nonzero start; for kIntToken
  // values also the folded path the kernel takes (weights times the tokens' group scales
  // [R, j1 - j0, groups], plus the groups' zero sums [R, groups]: one more addition).
  for (auto [j0, j1] : {std::pair{0, b.n}, std::pair{b.n / 3, b.n - b.n / 4}}) {
    if (j1 <= j0) continue;
    const bool folded = b.format == KvFormat::kIntToken;
    const int groups = folded ? b.d / b.group : 0, len = j1 - j0;
    std::vector<float> pw(static_cast<size_t>(R * len * groups)), zs(static_cast<size_t>(R * groups));
    for (int r = 0; r < R; ++r) {
      for (int g = 0; g < groups; ++g) {
        for (int j = j0; j < j1; ++j) pw[(size_t(r) * len + j - j0) * groups + g] = cuda::folded_weight(b, j, g, w[r * b.n + j]);
        zs[size_t(r) * groups + g] = cuda::folded_zero_sum(b, g, j0, j1, w.data() + r * b.n + j0);
      }
    }
    for (int c = 0; c < b.d; ++c) {
      float acc[R], facc[R];
      for (int r = 0; r < R; ++r) acc[r] = facc[r] = 0.25f * float(r + 1);
      cuda::channel_sums<R>(b, c, j0, j1, w.data() + j0, b.n, acc);
      if (folded) cuda::folded_channel_sums<R>(b, c, j0, j1, pw.data(), len, zs.data(), facc);
      for (int r = 0; r < R; ++r) {
        double exact = 0.25 * (r + 1), terms = std::fabs(exact);
        for (int j = j0; j < j1; ++j) {
          const Terms t = ref_terms(b, j, c);
          exact += double(w[r * b.n + j]) * (t.main + t.zero);
          terms += std::fabs(w[r * b.n + j]) * (std::fabs(t.main) + std::fabs(t.zero));
        }
        ASSERT_LE(std::fabs(acc[r] - exact), f32_budget(len + 1, terms))
            << what << " channel " << c << " row " << r << " tokens " << j0 << ".." << j1;
        if (folded) {
          ASSERT_LE(std::fabs(facc[r] - exact), f32_budget(len + 2, terms))
              << what << " folded channel " << c << " row " << r << " tokens " << j0 << ".." << j1;
        }
      }
    }
  }
}

TEST(CudaElement, ScoresAndValueSumsWithinTheF32Budget) {
  for_each_packed_block(22, [](Rng& rng, const KvBlock& b, const std::string& what) {
    const std::vector<float> q = random_matrix(rng, 8, b.d, 2.0f);
    std::vector<float> w = random_matrix(rng, 8, b.n);
    for (float& v : w) v = std::fabs(v);  // softmax weights are >= 0
    check_scores_and_sums<1>(b, q, w, what);
    check_scores_and_sums<3>(b, q, w, what);
    check_scores_and_sums<8>(b, q, w, what);
  });
}

// States [m, l, acc[d]] of parts of one row's scores, merged, against softmax(s) V in double.
TEST(CudaMerge, SplitsMergeToTheOneShotSoftmax) {
  Rng rng(23);
  const int n = 1000, d = 5;
  std::vector<double> s(n), v(size_t(n) * d);
  for (double& x : s) x = 8.0 * rng.uniform();
  for (double& x : v) x = rng.uniform();
  const std::vector<int> cuts = {0, 1, 1, 300, 301, 999, 1000};  // an empty part, one-token parts
  const int splits = int(cuts.size()) - 1;
  std::vector<float> part(size_t(splits) * (d + 2));
  for (int p = 0; p < splits; ++p) {
    float* st = part.data() + p * (d + 2);
    double m = -INFINITY, l = 0;
    for (int j = cuts[p]; j < cuts[p + 1]; ++j) m = std::max(m, s[j]);
    std::vector<double> acc(d, 0.0);
    for (int j = cuts[p]; j < cuts[p + 1]; ++j) {
      const double e = std::exp(s[j] - m);
      l += e;
      for (int c = 0; c < d; ++c) acc[c] += e * v[size_t(j) * d + c];
    }
    st[0] = float(m), st[1] = float(l);
    for (int c = 0; c < d; ++c) st[2 + c] = float(acc[c]);
  }
  const double m = *std::max_element(s.begin(), s.end());
  double l = 0;
  for (double x : s) l += std::exp(x - m);
  for (int c = 0; c < d; ++c) {
    double exact = 0;
    for (int j = 0; j < n; ++j) exact += std::exp(s[j] - m) / l * v[size_t(j) * d + c];
    EXPECT_NEAR(cuda::merge_splits(part.data(), splits, d + 2, c), exact, 1e-6) << "channel " << c;
  }
  // No state with a token: 0. A NaN score reaches the output.
  const float empty[2 * (d + 2)] = {-INFINITY, 0, 0, 0, 0, 0, 0, -INFINITY, 0, 0, 0, 0, 0, 0};
  EXPECT_EQ(cuda::merge_splits(empty, 2, d + 2, 0), 0.0f);
  part[1] = NAN;
  EXPECT_TRUE(std::isnan(cuda::merge_splits(part.data(), splits, d + 2, 0)));
}

// A problem that passes check(); the pointers are never dereferenced by check().
cuda::DecodeAttention valid_problem() {
  static float dummy[1];
  static KvBlock blocks[1];
  static int32_t first[2];
  cuda::DecodeAttention a;
  a.batch = 2, a.n_heads = 32, a.n_kv_heads = 8, a.head_dim = 128, a.scale = 0.125f;
  a.q = dummy, a.out = dummy, a.k = blocks, a.v = blocks, a.first = first;
  return a;
}

void expect_refused(const Status& st, ErrorCode code, const std::string& needle) {
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.code(), code) << st.to_string();
  EXPECT_NE(st.message().find(needle), std::string::npos) << st.to_string();
}

TEST(CudaCheck, RefusesWhatTheKernelsCannotRun) {
  EXPECT_TRUE(cuda::check(valid_problem()).ok());
  cuda::DecodeAttention a = valid_problem();
  a.n_heads = 72;  // 9 query heads per kv head
  expect_refused(cuda::check(a), ErrorCode::kUnsupported, "9 query heads per kv head (at most 8)");
  a = valid_problem(), a.head_dim = 257;
  expect_refused(cuda::check(a), ErrorCode::kUnsupported, "head size 257");
  a = valid_problem(), a.n_heads = 30;
  expect_refused(cuda::check(a), ErrorCode::kInvalidArgument, "30 query heads over 8 kv heads");
  a = valid_problem(), a.batch = 0;
  expect_refused(cuda::check(a), ErrorCode::kInvalidArgument, "batch 0");
  a = valid_problem(), a.scale = INFINITY;
  expect_refused(cuda::check(a), ErrorCode::kInvalidArgument, "scale is not finite");
  a = valid_problem(), a.first = nullptr;
  expect_refused(cuda::check(a), ErrorCode::kInvalidArgument, "null device pointer");
}

TEST(CudaCheck, RefusesMalformedBlocksAndHistories) {
  Rng rng(24);
  const std::vector<float> x = kv_like(rng, 40, 64);
  const Packed good = pack({KvFormat::kIntToken, 4, 32}, x.data(), 40, 64);
  EXPECT_TRUE(cuda::check_block(good.block).ok());
  KvBlock b = good.block;
  b.bits = 5;
  expect_refused(cuda::check_block(b), ErrorCode::kInvalidArgument, "5-bit codes");
  b = good.block, b.group = 24;
  expect_refused(cuda::check_block(b), ErrorCode::kInvalidArgument, "channel group 24 does not divide head size 64");
  b = good.block, b.stride = 8;
  expect_refused(cuda::check_block(b), ErrorCode::kInvalidArgument, "stride 8 shorter than a row of 32 bytes");
  b = good.block, b.zero = nullptr;
  expect_refused(cuda::check_block(b), ErrorCode::kInvalidArgument, "missing scales or zeros");
  const Packed channel = pack({KvFormat::kIntChannel, 3, 8}, x.data(), 40, 64);
  EXPECT_TRUE(cuda::check_block(channel.block).ok());
  b = channel.block, b.group = 6;  // 6 * 3 bits: groups would not start on a byte
  expect_refused(cuda::check_block(b), ErrorCode::kInvalidArgument, "do not start on a byte");

  // upload_history checks before it touches the device.
  const Packed short_v = pack({KvFormat::kF16}, x.data(), 39, 64);
  const KvBlock k[] = {good.block}, v[] = {short_v.block};
  expect_refused(cuda::upload_history(k, v, 64).status(), ErrorCode::kInvalidArgument, "40 keys and 39 values");
  const KvBlock v2[] = {good.block};
  expect_refused(cuda::upload_history(k, v2, 128).status(), ErrorCode::kInvalidArgument, "not of head size 128");
}

TEST(CudaDevice, InfoNamesTheDeviceOrSaysWhyThereIsNone) {
  const StatusOr<cuda::DeviceInfo> info = cuda::device_info();
  if (info.ok()) {
    EXPECT_FALSE(info->name.empty());
    EXPECT_GT(info->sm_count, 0);
    EXPECT_GT(info->memory_bytes, size_t(0));
  } else {
    EXPECT_EQ(info.status().code(), ErrorCode::kUnsupported);
    EXPECT_EQ(info.status().message().rfind("no CUDA device", 0), 0u) << info.status().message();
  }
}

// ---- on the GPU ---------------------------------------------------------------------------------

// Skips without a GPU, saying why; with $KVLAB_EXPECT_GPU set (scripts/cuda_device_check.sh on a
// GPU machine) a missing GPU (an old driver, say) fails instead, so that no run passes untested.
#define KVLAB_REQUIRE_GPU()                                                                          \
  do {                                                                                               \
    const StatusOr<cuda::DeviceInfo> gpu = cuda::device_info();                                      \
    if (!gpu.ok() && std::getenv("KVLAB_EXPECT_GPU")) FAIL() << gpu.status().message();              \
    if (!gpu.ok()) GTEST_SKIP() << "GPU test not run: " << gpu.status().message();                   \
  } while (0)

// A batch of sequences on the device: each (sequence, kv head) a run of pages of `page` tokens
// (the last one shorter), keys and values in their formats; q random; the reference in double.
struct Batch {
  int n_kv_heads, group, d;
  std::vector<int> lengths;
  std::vector<Packed> k_pages, v_pages;
  std::vector<int32_t> first;
  std::vector<float> q;
  int max_blocks = 0;
};

Batch make_batch(Rng& rng, const Format& kf, const Format& vf, std::vector<int> lengths, int n_kv_heads, int group,
                 int d, int page, int pad = 3) {
  Batch bt{n_kv_heads, group, d, lengths, {}, {}, {0}, {}, 0};
  for (int len : lengths) {
    for (int h = 0; h < n_kv_heads; ++h) {
      const std::vector<float> k = kv_like(rng, len, d), v = kv_like(rng, len, d);
      int blocks = 0;
      for (int j0 = 0; j0 < len; j0 += page, ++blocks) {
        const int n = std::min(page, len - j0);
        bt.k_pages.push_back(pack(kf, k.data() + size_t(j0) * d, n, d, pad));
        bt.v_pages.push_back(pack(vf, v.data() + size_t(j0) * d, n, d, pad));
      }
      bt.first.push_back(bt.first.back() + blocks);
      bt.max_blocks = std::max(bt.max_blocks, blocks);
    }
  }
  bt.q = random_matrix(rng, int(lengths.size()) * n_kv_heads * group, d, 2.0f);
  return bt;
}

// softmax(q . K * scale) V in double over the packed bytes, [batch, heads, d].
std::vector<double> reference(const Batch& bt, float scale) {
  const int H = bt.n_kv_heads, G = bt.group, d = bt.d;
  std::vector<double> out(bt.q.size());
  for (size_t b = 0; b < bt.lengths.size(); ++b) {
    for (int h = 0; h < H; ++h) {
      for (int r = 0; r < G; ++r) {
        const float* q = bt.q.data() + ((b * H + h) * G + r) * d;
        std::vector<double> s;
        std::vector<std::pair<const KvBlock*, int>> tokens;
        for (int i = bt.first[b * H + h]; i < bt.first[b * H + h + 1]; ++i) {
          for (int j = 0; j < bt.k_pages[i].block.n; ++j) {
            double dot = 0;
            for (int c = 0; c < d; ++c) dot += double(q[c] * scale) * value(bt.k_pages[i].block, j, c);
            s.push_back(dot);
            tokens.push_back({&bt.v_pages[i].block, j});
          }
        }
        const double m = s.empty() ? 0 : *std::max_element(s.begin(), s.end());
        double l = 0;
        for (double x : s) l += std::exp(x - m);
        double* o = out.data() + ((b * H + h) * G + r) * d;
        for (size_t t = 0; t < s.size(); ++t) {
          for (int c = 0; c < d; ++c) o[c] += std::exp(s[t] - m) / l * value(*tokens[t].first, tokens[t].second, c);
        }
      }
    }
  }
  return out;
}

// decode_attention on the device; the output, [batch, heads, d].
std::vector<float> run_gpu(const Batch& bt, float scale) {
  std::vector<KvBlock> k, v;
  for (const Packed& p : bt.k_pages) k.push_back(p.block);
  for (const Packed& p : bt.v_pages) v.push_back(p.block);
  StatusOr<cuda::DeviceHistory> hist = cuda::upload_history(k, v, bt.d);
  EXPECT_TRUE(hist.ok()) << hist.status().to_string();
  if (!hist.ok()) return {};
  cuda::DecodeAttention a;
  a.batch = int(bt.lengths.size()), a.n_kv_heads = bt.n_kv_heads, a.n_heads = bt.n_kv_heads * bt.group;
  a.head_dim = bt.d, a.scale = scale, a.max_blocks = bt.max_blocks;
  auto q = cuda::DeviceBuffer::allocate(bt.q.size() * 4);
  auto first = cuda::DeviceBuffer::allocate(bt.first.size() * 4);
  auto out = cuda::DeviceBuffer::allocate(bt.q.size() * 4);
  auto ws = cuda::DeviceBuffer::allocate(cuda::decode_workspace_floats(a) * 4);
  if (!q.ok() || !first.ok() || !out.ok() || !ws.ok()) {
    ADD_FAILURE() << "device allocation failed";
    return {};
  }
  if (!q->upload(bt.q.data(), bt.q.size() * 4).ok() || !first->upload(bt.first.data(), bt.first.size() * 4).ok()) {
    ADD_FAILURE() << "upload failed";
    return {};
  }
  a.q = static_cast<const float*>(q->data());
  a.k = hist->k.blocks(), a.v = hist->v.blocks();
  a.first = static_cast<const int32_t*>(first->data());
  a.out = static_cast<float*>(out->data());
  const Status st = cuda::decode_attention(a, static_cast<float*>(ws->data()));
  EXPECT_TRUE(st.ok()) << st.to_string();
  const Status sync = cuda::synchronize("decode attention");
  EXPECT_TRUE(sync.ok()) << sync.to_string();
  std::vector<float> result(bt.q.size());
  EXPECT_TRUE(out->download(result.data(), result.size() * 4).ok());
  return result;
}

TEST(CudaDecodeAttention, MatchesAttentionInDoubleForEveryFormat) {
  KVLAB_REQUIRE_GPU();
  Rng rng(25);
  std::vector<std::pair<Format, Format>> pairs;  // (keys, values)
  for (const Format& f : all_formats()) pairs.push_back({f, f});
  pairs.push_back({{KvFormat::kIntChannel, 4, 32}, {KvFormat::kIntToken, 4, 32}});  // KIVI, pages of 4 groups
  pairs.push_back({{KvFormat::kIntChannel, 2, 32}, {KvFormat::kIntToken, 2, 32}});
  // Key groups of 8 tokens (16 per tile: every element dequantized) and of 40 (tiles that start
  // in the middle of a group with pages of 300).
  pairs.push_back({{KvFormat::kIntChannel, 4, 8}, {KvFormat::kIntToken, 4, 32}});
  pairs.push_back({{KvFormat::kIntChannel, 4, 40}, {KvFormat::kIntToken, 4, 32}});
  // Values in groups of 8 channels: at d = 256, G = 8 the weights do not fit folded.
  pairs.push_back({{KvFormat::kF16}, {KvFormat::kIntToken, 4, 8}});
  struct Layout {
    int kv_heads, group, d, page;
  };
  // Every group size, head sizes that leave threads without a channel (3, 17, 40) or with one of
  // two (200), pages shorter and longer than a tile of 128.
  const Layout layouts[] = {{2, 1, 17, 100}, {1, 2, 200, 129}, {3, 3, 64, 128}, {2, 4, 128, 128},
                            {2, 5, 40, 64},  {2, 6, 32, 50},   {1, 7, 3, 1},    {1, 8, 256, 300}};
  const float scale = 0.125f;
  for (const auto& [kf, vf] : pairs) {
    for (const Layout& ly : layouts) {
      Format k = kf, v = vf;
      if (v.format == KvFormat::kIntToken && v.group && ly.d % v.group != 0) v.group = 0;
      if (v.format == KvFormat::kIntToken && !v.group) v.group = ly.d;
      // Lengths: none (its output is 0), one token, a partial page, pages for three splits. Rows
      // padded by 3 bytes (bytewise loads) and not at all (whole and 16-byte loads); with the
      // true max_blocks and with 1 (one split per sequence, which then takes every block).
      for (int pad : {3, 0}) {
        Batch bt = make_batch(rng, k, v, {0, 1, 77, 2 * cuda::kBlocksPerSplit * ly.page + 5}, ly.kv_heads, ly.group,
                              ly.d, ly.page, pad);
        const std::vector<double> ref = reference(bt, scale);
        for (int max_blocks : {bt.max_blocks, 1}) {
          bt.max_blocks = max_blocks;
          const std::vector<float> got = run_gpu(bt, scale);
          ASSERT_EQ(got.size(), ref.size());
          // The output is a convex combination of values up to ~5 in size; f32 sums over up to
          // 4,000 tokens stay within 1e-5 of it (an indexing error is off by O(1)).
          double worst = 0;
          for (size_t i = 0; i < ref.size(); ++i) {
            const double err = std::fabs(got[i] - ref[i]);
            worst = err <= worst ? worst : err;  // a NaN output makes worst NaN, which fails below
          }
          EXPECT_LE(worst, 1e-4) << "keys " << format_name(k) << ", values " << format_name(v) << ", "
                                 << ly.kv_heads << " kv heads x " << ly.group << ", d=" << ly.d << ", pages of "
                                 << ly.page << ", pad " << pad << ", max_blocks " << max_blocks;
        }
      }
    }
  }
}

TEST(CudaDecodeAttention, ASequenceAloneGetsTheSameBitsAsInABatch) {
  KVLAB_REQUIRE_GPU();
  Rng rng(26);
  const Format kf{KvFormat::kIntChannel, 4, 32}, vf{KvFormat::kIntToken, 4, 32};
  const Batch batch = make_batch(rng, kf, vf, {3000, 40, 1200}, 3, 3, 64, 128);
  const std::vector<float> all = run_gpu(batch, 0.125f);
  // Sequence 2 alone: the same pages and query rows.
  Batch alone = batch;
  const int H = batch.n_kv_heads;
  alone.lengths = {1200};
  alone.k_pages.assign(batch.k_pages.begin() + batch.first[2 * H], batch.k_pages.end());
  alone.v_pages.assign(batch.v_pages.begin() + batch.first[2 * H], batch.v_pages.end());
  alone.first.clear();
  for (int h = 0; h <= H; ++h) alone.first.push_back(batch.first[2 * H + h] - batch.first[2 * H]);
  const size_t row = size_t(H) * batch.group * batch.d;
  alone.q.assign(batch.q.begin() + 2 * row, batch.q.end());
  alone.max_blocks = (1200 + 127) / 128;
  const std::vector<float> one = run_gpu(alone, 0.125f);
  ASSERT_EQ(one.size(), row);
  for (size_t i = 0; i < row; ++i) ASSERT_TRUE(same_float(one[i], all[2 * row + i])) << "element " << i;
}

// ---- writing on the GPU ---------------------------------------------------------------------------

TEST(CudaWrite, RefusesBadArgumentsBeforeWriting) {
  // Never dereferenced: every call below fails its checks first.
  float* x = reinterpret_cast<float*>(16);
  uint8_t* data = reinterpret_cast<uint8_t*>(16);
  uint16_t* sc = reinterpret_cast<uint16_t*>(16);
  expect_refused(cuda::write_tokens(KvFormat::kIntToken, 5, 32, x, 4, 64, 64, data, 64, sc, sc),
                 ErrorCode::kInvalidArgument, "5-bit codes");
  expect_refused(cuda::write_tokens(KvFormat::kIntToken, 4, 24, x, 4, 64, 64, data, 64, sc, sc),
                 ErrorCode::kInvalidArgument, "channel group 24 does not divide 64");
  expect_refused(cuda::write_tokens(KvFormat::kIntToken, 4, 32, x, 4, 64, 64, data, 64, sc, nullptr),
                 ErrorCode::kInvalidArgument, "scales and zeros");
  expect_refused(cuda::write_tokens(KvFormat::kF16, 0, 0, x, 4, 64, 64, data, 100, nullptr, nullptr),
                 ErrorCode::kInvalidArgument, "stride 100 below a row of 128");
  expect_refused(cuda::write_tokens(KvFormat::kFp8, 0, 0, x, 4, 64, 64, data, 64, nullptr, nullptr),
                 ErrorCode::kInvalidArgument, "fp8 needs its token scales");
  expect_refused(cuda::write_tokens(KvFormat::kIntChannel, 4, 0, x, 4, 64, 64, data, 64, sc, sc),
                 ErrorCode::kInvalidArgument, "write_channels");
  expect_refused(cuda::write_tokens(KvFormat::kF32, 0, 0, x, 4, 32, 64, data, 256, nullptr, nullptr),
                 ErrorCode::kInvalidArgument, "rows 32 apart");
  expect_refused(cuda::write_channels(3, x, 0, 64, 64, data, 64, sc, sc), ErrorCode::kInvalidArgument, "no tokens");
  expect_refused(cuda::write_channels(4, x, 128, 64, 64, data, 32, sc, sc), ErrorCode::kInvalidArgument,
                 "stride 32 below a channel of 64 bytes");
  expect_refused(cuda::write_channels(4, nullptr, 8, 64, 64, data, 32, sc, sc), ErrorCode::kInvalidArgument,
                 "null device pointer");
}

// Floats with the values the writers treat specially in a few tokens: NaN, +-inf, beyond the f16
// range, tiny, -0.
std::vector<float> awkward_values(Rng& rng, int n, int d) {
  std::vector<float> x = kv_like(rng, n, d);
  const float special[] = {NAN, INFINITY, -INFINITY, 1e6f, -7e4f, 1e-8f, -0.0f, 3e-5f};
  for (int j = 1; j < n; j += 5) {
    for (int i = 0; i < 3; ++i) x[size_t(j) * d + (j * 7 + i * 5) % d] = special[(j + i) % 8];
  }
  return x;
}

template <typename T>
std::vector<T> download(const cuda::DeviceBuffer& b, size_t count) {
  std::vector<T> v(count);
  EXPECT_TRUE(b.download(v.data(), count * sizeof(T)).ok());
  return v;
}

// A device buffer holding `v` (empty: a 1-element buffer).
template <typename T>
cuda::DeviceBuffer device_copy(const std::vector<T>& v) {
  auto b = cuda::DeviceBuffer::allocate(std::max<size_t>(v.size(), 1) * sizeof(T));
  EXPECT_TRUE(b.ok());
  if (!v.empty()) {
    EXPECT_TRUE(b->upload(v.data(), v.size() * sizeof(T)).ok());
  }
  return std::move(*b);
}

TEST(CudaWrite, TokensAndChannelsGetTheCpuWritersBytes) {
  KVLAB_REQUIRE_GPU();
  Rng rng(27);
  for (int d : {8, 17, 64, 128, 256}) {
    const int n = 37, pad = 3;
    const int64_t ldx = d + 5;  // input rows padded too
    std::vector<float> x(size_t(n) * ldx, NAN);
    const std::vector<float> values = awkward_values(rng, n, d);
    for (int j = 0; j < n; ++j) std::copy_n(values.data() + size_t(j) * d, d, x.data() + size_t(j) * ldx);
    cuda::DeviceBuffer xd = device_copy(x);
    for (const Format& base : all_formats()) {
      for (int group : groups_for(base, d)) {
        Format f = base;
        f.group = group;
        if (f.format == KvFormat::kIntChannel) {
          if (group != 0) continue;  // the token groups are this loop's own
          // Token groups of 1, 5 and all 37 tokens, channels `pad` bytes longer than their codes.
          for (int g : {1, 5, n}) {
            const int64_t stride = packed_bytes(g, f.bits) + pad;
            std::vector<uint8_t> data(size_t(stride) * d, 0xa5);
            std::vector<uint16_t> scale(d, 0x1234), zero(d, 0x1234);
            cuda::DeviceBuffer dd = device_copy(data), sd = device_copy(scale), zd = device_copy(zero);
            quantize_channels(f.bits, x.data(), g, ldx, d, data.data(), stride, scale.data(), zero.data());
            const Status st = cuda::write_channels(f.bits, static_cast<const float*>(xd.data()), g, ldx, d,
                                                   static_cast<uint8_t*>(dd.data()), stride,
                                                   static_cast<uint16_t*>(sd.data()), static_cast<uint16_t*>(zd.data()));
            ASSERT_TRUE(st.ok()) << st.to_string();
            ASSERT_TRUE(cuda::synchronize("write_channels").ok());
            EXPECT_EQ(download<uint8_t>(dd, data.size()), data) << format_name(f) << " d=" << d << " tokens " << g;
            EXPECT_EQ(download<uint16_t>(sd, scale.size()), scale) << format_name(f) << " d=" << d;
            EXPECT_EQ(download<uint16_t>(zd, zero.size()), zero) << format_name(f) << " d=" << d;
          }
          continue;
        }
        const int grp = f.format == KvFormat::kIntToken ? (f.group ? f.group : d) : 0;
        const int per_token = f.format == KvFormat::kIntToken ? d / grp : (f.format == KvFormat::kFp8 ? 1 : 0);
        const int64_t stride =
            (f.format == KvFormat::kIntToken ? packed_bytes(d, f.bits) : element_bytes(f.format) * d) + pad;
        std::vector<uint8_t> data(size_t(stride) * n, 0xa5);
        std::vector<uint16_t> scale(size_t(n) * per_token, 0x1234);
        std::vector<uint16_t> zero(f.format == KvFormat::kIntToken ? scale.size() : 0, 0x1234);
        cuda::DeviceBuffer dd = device_copy(data), sd = device_copy(scale), zd = device_copy(zero);
        KvBlock layout;
        layout.format = f.format, layout.n = n, layout.d = d, layout.bits = f.bits, layout.group = grp;
        layout.stride = stride;
        quantize_block(layout, x.data(), ldx, data.data(), scale.data(), zero.empty() ? nullptr : zero.data());
        const Status st = cuda::write_tokens(f.format, f.bits, grp, static_cast<const float*>(xd.data()), n, ldx, d,
                                             static_cast<uint8_t*>(dd.data()), stride,
                                             per_token ? static_cast<uint16_t*>(sd.data()) : nullptr,
                                             zero.empty() ? nullptr : static_cast<uint16_t*>(zd.data()));
        ASSERT_TRUE(st.ok()) << st.to_string();
        ASSERT_TRUE(cuda::synchronize("write_tokens").ok());
        EXPECT_EQ(download<uint8_t>(dd, data.size()), data) << format_name(f) << " d=" << d;
        EXPECT_EQ(download<uint16_t>(sd, scale.size()), scale) << format_name(f) << " d=" << d;
        EXPECT_EQ(download<uint16_t>(zd, zero.size()), zero) << format_name(f) << " d=" << d;
      }
    }
  }
}

// ---- xKV's factorization on the GPU -------------------------------------------------------------

TEST(CudaLowRank, RefusesBadShapesBeforeTouchingTheDevice) {
  const float* x = reinterpret_cast<const float*>(16);  // never dereferenced
  expect_refused(cuda::factorize_low_rank(x, 10, 8, 8, 0).status(), ErrorCode::kInvalidArgument, "rank 0");
  expect_refused(cuda::factorize_low_rank(x, 10, 8, 4, 2).status(), ErrorCode::kInvalidArgument, "rows 4 apart");
  expect_refused(cuda::factorize_low_rank(x, 0, 8, 8, 2).status(), ErrorCode::kInvalidArgument, "0 tokens");
}

TEST(CudaLowRank, MatchesTheCpuFactorization) {
  KVLAB_REQUIRE_GPU();
  Rng rng(28);
  struct Case {
    int tokens, width, ldx, rank;
  };
  // A group of 4 SmolLM2 layers (width 768) at a short prompt; fewer tokens than the rank; a rank
  // above the width; padded rows.
  for (const Case& cs : {Case{500, 768, 768, 96}, Case{20, 64, 70, 32}, Case{300, 48, 48, 100}}) {
    // Keys-like data: a few strong directions plus noise, so that the top components are well
    // separated (the factors of nearly equal eigenvalues are not unique).
    std::vector<float> x(size_t(cs.tokens) * cs.ldx, 0.0f);
    const std::vector<float> dirs = random_matrix(rng, 8, cs.width);
    for (int t = 0; t < cs.tokens; ++t) {
      for (int k = 0; k < 8; ++k) {
        const float w = float(8 - k) * rng.uniform();
        for (int c = 0; c < cs.width; ++c) x[size_t(t) * cs.ldx + c] += w * dirs[size_t(k) * cs.width + c];
      }
      for (int c = 0; c < cs.width; ++c) x[size_t(t) * cs.ldx + c] += 0.05f * rng.uniform();
    }
    const LowRankFactors cpu = factorize_low_rank(x.data(), cs.tokens, cs.width, cs.ldx, cs.rank);
    cuda::DeviceBuffer xd = device_copy(x);
    StatusOr<cuda::DeviceLowRank> gpu =
        cuda::factorize_low_rank(static_cast<const float*>(xd.data()), cs.tokens, cs.width, cs.ldx, cs.rank);
    ASSERT_TRUE(gpu.ok()) << gpu.status().to_string();
    ASSERT_EQ(gpu->rank, cpu.rank);
    ASSERT_EQ(gpu->sq_values.size(), cpu.sq_values.size());
    for (size_t i = 0; i < cpu.sq_values.size(); ++i) {
      EXPECT_NEAR(gpu->sq_values[i], cpu.sq_values[i], 1e-9 * cpu.sq_values[0]) << "eigenvalue " << i;
    }
    const std::vector<float> a = download<float>(gpu->a, size_t(cs.tokens) * gpu->rank);
    const std::vector<float> b = download<float>(gpu->b, size_t(gpu->rank) * cs.width);
    double worst = 0, scale = 0;
    for (int t = 0; t < cs.tokens; ++t) {
      for (int c = 0; c < cs.width; ++c) {
        double g = 0, e = 0;
        for (int k = 0; k < cpu.rank; ++k) {
          g += double(a[size_t(t) * cpu.rank + k]) * b[size_t(k) * cs.width + c];
          e += double(cpu.a[size_t(t) * cpu.rank + k]) * cpu.b[size_t(k) * cs.width + c];
        }
        worst = std::max(worst, std::fabs(g - e));
        scale = std::max(scale, std::fabs(e));
      }
    }
    // Both products are X's rank-r truncation rounded through f32 factors.
    EXPECT_LE(worst, 1e-5 * scale) << cs.tokens << " x " << cs.width << ", rank " << cs.rank;
  }
}

}  // namespace
}  // namespace kvlab
