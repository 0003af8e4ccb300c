// `quant`: plain per-token quantization of keys and values (asymmetric min-max over groups of
// `group` channels, f16 scale and zero-point), separate bit widths for K and V, with an optional
// exact residual of the newest tokens (HF QuantizedCache's residual_length).
#include <algorithm>

#include "kvcache/formats.h"
#include "kvcache/policies/policies.h"
#include "kvcache/policies/tiered_policy.h"

namespace kvlab {

PolicyInfo quant_policy_info() {
  PolicyInfo info;
  info.name = "quant";
  info.summary = "per-token integer quantization of K and V (separate bits)";
  info.params = {
      {"kbits", ParamInfo::Kind::kChoice, "8", {"2", "3", "4", "8"}, 0, 0, "bits per key value"},
      {"vbits", ParamInfo::Kind::kChoice, "8", {"2", "3", "4", "8"}, 0, 0, "bits per value value"},
      {"group", ParamInfo::Kind::kInt, "32", {}, 8, 4096,
       "channels per quantization group (capped at the head size, must divide it)"},
      {"residual", ParamInfo::Kind::kInt, "0", {}, 0, 1 << 20, "newest tokens kept exact"},
      {"dtype", ParamInfo::Kind::kChoice, "f16", {"f32", "f16", "bf16"}, 0, 0, "storage of the exact tokens"},
  };
  info.stores_selectively = true;
  info.make = [](const PolicyContext& ctx, const PolicyParams& p) -> StatusOr<std::unique_ptr<Policy>> {
    const int d = ctx.geometry.head_dim;
    const int group = std::min(p.get_int("group"), d);
    if (d % group != 0) {
      return invalid_argument("quant: group " + std::to_string(group) + " does not divide the head size " +
                              std::to_string(d));
    }
    TieredConfig cfg;
    KVLAB_ASSIGN_OR_RETURN(cfg.exact_format, parse_dense_format(p.get("dtype")));
    cfg.exact_kind = MemoryKind::kExact;
    cfg.recent = p.get_int("residual");
    cfg.overflow = TieredConfig::Overflow::kCompress;
    cfg.k_format = {KvFormat::kIntToken, p.get_int("kbits"), group};
    cfg.v_format = {KvFormat::kIntToken, p.get_int("vbits"), group};
    cfg.block_tokens = 32;
    cfg.chunk = 1;
    return make_tiered_policy(ctx, cfg);
  };
  info.test_specs = {"quant:kbits=8,vbits=8,group=8", "quant:kbits=4,vbits=2,group=8,residual=5",
                     "quant:kbits=3,vbits=4,group=8,dtype=f32"};
  info.off_spec = "quant:residual=1048576,dtype=f32";
  info.roundtrip_tolerance = [](const PolicyParams& p) {
    // Tokens are quantized from their exact-format copy: both errors add up.
    return std::max(int_relative_error(p.get_int("kbits")), int_relative_error(p.get_int("vbits"))) +
           dense_relative_error(parse_dense_format(p.get("dtype")).value());
  };
  return info;
}

}  // namespace kvlab
