// The libtorch adapter against the plain API: the same cache policy, the same inputs, once as
// at::Tensor through libtorch/kv_torch.h and once as float pointers through KvCache::attend.
#include <gtest/gtest.h>

#include "libtorch/kv_torch.h"
#include "tests/testing/models.h"

namespace kvlab {
namespace {

const Model& model() { return testing::stories260k(); }

// Runs two forwards (a 5-token prompt, then one token) over every layer of two caches of `spec`,
// one through the adapter with tensors made by `as_input`, one through the plain API with the
// float32 values the adapter computes from; outputs and stored contents must be identical.
template <typename AsInput>
void expect_same_as_plain_api(const std::string& spec, AsInput as_input) {
  const KvGeometry g = model().cache_geometry();
  auto a = model().make_cache(spec, 1), b = model().make_cache(spec, 1);
  ASSERT_TRUE(a.ok() && b.ok());
  at::manual_seed(7);
  for (int n : {5, 1}) {
    const int count[1] = {n}, slot[1] = {0};
    auto ba = (*a)->plan(slot, count), bb = (*b)->plan(slot, count);
    ASSERT_TRUE(ba.ok() && bb.ok());
    for (int layer = 0; layer < g.n_layers; ++layer) {
      const at::Tensor q = as_input(at::randn({n, g.q_dim()})), k = as_input(at::randn({n, g.kv_dim()})),
                       v = as_input(at::randn({n, g.kv_dim()}));
      auto out = aten::attend(**a, layer, *ba, q, k, v);
      ASSERT_TRUE(out.ok()) << out.status().to_string();
      const at::Tensor qf = q.to(at::kFloat).contiguous(), kf = k.to(at::kFloat).contiguous(),
                       vf = v.to(at::kFloat).contiguous();
      std::vector<float> plain(size_t(n) * g.q_dim());
      (*b)->attend(layer, *bb, qf.data_ptr<float>(), kf.data_ptr<float>(), vf.data_ptr<float>(), plain.data());
      ASSERT_TRUE(out->is_contiguous() && out->scalar_type() == at::kFloat);
      EXPECT_EQ(std::vector<float>(out->data_ptr<float>(), out->data_ptr<float>() + plain.size()), plain) << spec;
    }
    (*a)->commit(*ba);
    (*b)->commit(*bb);
  }
  for (int layer = 0; layer < g.n_layers; ++layer) {
    auto t = aten::read(**a, layer, 0);
    ASSERT_TRUE(t.ok());
    const LayerContents c = (*b)->read(layer, 0);
    const at::Tensor& k = std::get<1>(*t);
    ASSERT_EQ(k.size(0), 6);
    EXPECT_EQ(std::vector<float>(k.data_ptr<float>(), k.data_ptr<float>() + k.numel()),
              std::vector<float>(c.k.begin(), c.k.end()));
    EXPECT_EQ(std::get<0>(*t)[5].item<int>(), 5);
  }
}

TEST(TorchAdapterTest, Float32ContiguousEqualsThePlainApi) {
  expect_same_as_plain_api("full:dtype=f32", [](at::Tensor t) { return t; });
  expect_same_as_plain_api("kivi:bits=4,residual=2", [](at::Tensor t) { return t; });
}

TEST(TorchAdapterTest, HalfBfloat16AndStridedEqualThePlainApi) {
  expect_same_as_plain_api("kivi:bits=4,residual=2", [](at::Tensor t) { return t.to(at::kHalf); });
  expect_same_as_plain_api("full:dtype=f16", [](at::Tensor t) { return t.to(at::kBFloat16); });
  // Every other column of a wider tensor, and a transposed one: strided views.
  expect_same_as_plain_api("full:dtype=f32", [](at::Tensor t) {
    return at::cat({t, t}, 1).view({t.size(0), t.size(1), 2}).select(2, 0);
  });
  expect_same_as_plain_api("full:dtype=f32", [](at::Tensor t) { return t.t().contiguous().t(); });
}

// A full f32 cache of one slot and the plan of a forward writing 2 tokens to it.
struct TwoTokenForward {
  std::unique_ptr<KvCache> cache = std::move(model().make_cache("full:dtype=f32", 1)).value();
  StatusOr<ForwardBatch> batch = cache->plan(std::vector<int>{0}, std::vector<int>{2});
};

TEST(TorchAdapterTest, Float32RowsAreReadInPlaceAndOutIsWrittenInPlace) {
  EXPECT_TRUE(aten::read_in_place(at::zeros({3, 8})));
  EXPECT_FALSE(aten::read_in_place(at::zeros({3, 8}, at::kHalf)));
  EXPECT_FALSE(aten::read_in_place(at::zeros({8, 3}).t()));
  const KvGeometry g = model().cache_geometry();
  const TwoTokenForward f;
  ASSERT_TRUE(f.cache && f.batch.ok());
  KvCache* cache = f.cache.get();
  const ForwardBatch* b = &*f.batch;
  const at::Tensor out = at::zeros({2, g.q_dim()});
  auto r = aten::attend(*cache, 0, *b, at::randn({2, g.q_dim()}), at::randn({2, g.kv_dim()}),
                        at::randn({2, g.kv_dim()}), out);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->data_ptr(), out.data_ptr());
  EXPECT_GT(out.abs().sum().item<float>(), 0.0f);
}

TEST(TorchAdapterTest, BadTensorsAreClearErrors) {
  const KvGeometry g = model().cache_geometry();
  const TwoTokenForward f;
  ASSERT_TRUE(f.cache && f.batch.ok());
  KvCache* cache = f.cache.get();
  const ForwardBatch* b = &*f.batch;
  const at::Tensor q = at::randn({2, g.q_dim()}), kv = at::randn({2, g.kv_dim()});
  auto wrong_type = aten::attend(*cache, 0, *b, q.to(at::kDouble), kv, kv);
  EXPECT_EQ(wrong_type.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(wrong_type.status().message().find("q: dtype Double"), std::string::npos) << wrong_type.status().message();
  auto wrong_shape = aten::attend(*cache, 0, *b, q, kv, at::randn({3, g.kv_dim()}));
  EXPECT_NE(wrong_shape.status().message().find("v: shape [3, 32], expected [2, 32]"), std::string::npos)
      << wrong_shape.status().message();
  EXPECT_EQ(aten::attend(*cache, 9, *b, q, kv, kv).status().code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(aten::attend(*cache, 0, *b, q, kv, kv, at::zeros({2, g.q_dim()}, at::kHalf)).status().code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(aten::read(*cache, 0, 3).status().code(), ErrorCode::kOutOfRange);
}

}  // namespace
}  // namespace kvlab
