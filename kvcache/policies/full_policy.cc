// `full`: every token of every layer kept, in f32, f16, bf16 or fp8 e4m3 (one f16 scale per
// token and head). dtype=f32 is the exact reference every other policy is compared with.
#include "kvcache/formats.h"
#include "kvcache/policies/policies.h"
#include "kvcache/policies/tiered_policy.h"

namespace kvlab {

PolicyInfo full_policy_info() {
  PolicyInfo info;
  info.name = "full";
  info.summary = "every token kept (f32, f16, bf16, or fp8 e4m3 with a per-token scale)";
  info.params = {{"dtype", ParamInfo::Kind::kChoice, "f16", {"f32", "f16", "bf16", "fp8"}, 0, 0,
                  "element type of stored keys and values"}};
  info.stores_selectively = true;
  info.make = [](const PolicyContext& ctx, const PolicyParams& p) -> StatusOr<std::unique_ptr<Policy>> {
    TieredConfig cfg;
    KVLAB_ASSIGN_OR_RETURN(cfg.exact_format, parse_dense_format(p.get("dtype")));
    cfg.exact_kind = MemoryKind::kPayload;
    cfg.overflow = TieredConfig::Overflow::kNone;
    return make_tiered_policy(ctx, cfg);
  };
  info.test_specs = {"full:dtype=f32", "full:dtype=f16", "full:dtype=bf16", "full:dtype=fp8"};
  info.off_spec = "full:dtype=f32";
  info.roundtrip_tolerance = [](const PolicyParams& p) {
    return dense_relative_error(parse_dense_format(p.get("dtype")).value());
  };
  return info;
}

}  // namespace kvlab
