// `kivi` (Liu et al., ICML'24): keys quantized per channel over groups of `group` tokens, values
// per token over groups of channels, asymmetric min-max with f16 scale and zero-point. The newest
// `residual` tokens stay exact until a whole group of older ones can be quantized (so between
// residual and residual + group - 1 exact tokens); `sink` first tokens stay exact for good.
#include <algorithm>

#include "kvcache/formats.h"
#include "kvcache/policies/policies.h"
#include "kvcache/policies/tiered_policy.h"

namespace kvlab {
namespace {
constexpr int kPageTokens = 128;
}  // namespace

PolicyInfo kivi_policy_info() {
  PolicyInfo info;
  info.name = "kivi";
  info.summary = "KIVI: per-channel keys, per-token values, exact recent residual";
  info.params = {
      {"bits", ParamInfo::Kind::kChoice, "2", {"2", "3", "4", "8"}, 0, 0, "bits per quantized value"},
      {"group", ParamInfo::Kind::kInt, "32", {}, 8, 4096,
       "tokens per key group; channels per value group (capped at the head size, must divide it)"},
      {"residual", ParamInfo::Kind::kInt, "128", {}, 0, 1 << 20, "newest tokens kept exact"},
      {"sink", ParamInfo::Kind::kInt, "0", {}, 0, 1 << 20, "first tokens kept exact"},
      {"dtype", ParamInfo::Kind::kChoice, "f16", {"f32", "f16", "bf16"}, 0, 0, "storage of the exact tokens"},
  };
  info.stores_selectively = true;
  info.make = [](const PolicyContext& ctx, const PolicyParams& p) -> StatusOr<std::unique_ptr<Policy>> {
    const int d = ctx.geometry.head_dim;
    const int group = p.get_int("group");
    const int value_group = std::min(group, d);
    if (d % value_group != 0) {
      return invalid_argument("kivi: group " + std::to_string(group) + " does not divide the head size " +
                              std::to_string(d) + " (values are grouped along channels)");
    }
    TieredConfig cfg;
    KVLAB_ASSIGN_OR_RETURN(cfg.exact_format, parse_dense_format(p.get("dtype")));
    cfg.exact_kind = MemoryKind::kExact;
    cfg.sink = p.get_int("sink");
    cfg.recent = p.get_int("residual");
    cfg.overflow = TieredConfig::Overflow::kCompress;
    cfg.k_format = {KvFormat::kIntChannel, p.get_int("bits"), group};
    cfg.v_format = {KvFormat::kIntToken, p.get_int("bits"), value_group};
    // Blocks (pages) of about kPageTokens tokens, a whole number of key groups: the kernels
    // then take a page's groups in one call and the engine's per-block costs (block lookup,
    // softmax step, value pass) are paid once per page (docs/results.md: 32-token blocks made
    // KIVI decode slower than f16). The last page's unused groups are booked like any slack.
    const int bits = p.get_int("bits");
    const int per_page = (group * bits) % 8 == 0 ? std::max(1, kPageTokens / group) : 1;
    cfg.block_tokens = group * per_page;
    cfg.chunk = group;
    return make_tiered_policy(ctx, cfg);
  };
  info.test_specs = {"kivi:bits=2,group=32,residual=32", "kivi:bits=4,group=32,residual=16,sink=4",
                     "kivi:bits=3,group=8,residual=0", "kivi:bits=8,group=16,residual=64,dtype=bf16"};
  info.off_spec = "kivi:residual=1048576,dtype=f32";
  info.roundtrip_tolerance = [](const PolicyParams& p) {
    // Tokens are quantized from their exact-format copy: both errors add up.
    return int_relative_error(p.get_int("bits")) + dense_relative_error(parse_dense_format(p.get("dtype")).value());
  };
  return info;
}

}  // namespace kvlab
