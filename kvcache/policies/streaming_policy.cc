// `streaming` (StreamingLLM, Xiao et al., ICLR'24): the first `sink` tokens plus a sliding
// window of the newest `window` tokens, in every layer. Tokens keep their original positions
// (no re-indexing). The window is a ring: once full, the cache holds a constant number of bytes
// however long the decode.
#include "kvcache/formats.h"
#include "kvcache/policies/policies.h"
#include "kvcache/policies/tiered_policy.h"

namespace kvlab {

PolicyInfo streaming_policy_info() {
  PolicyInfo info;
  info.name = "streaming";
  info.summary = "StreamingLLM: attention sinks plus a sliding window";
  info.params = {
      {"sink", ParamInfo::Kind::kInt, "4", {}, 0, 1 << 20, "first tokens kept"},
      {"window", ParamInfo::Kind::kInt, "1024", {}, 1, 1 << 20, "newest tokens kept"},
      {"dtype", ParamInfo::Kind::kChoice, "f16", {"f32", "f16", "bf16", "fp8"}, 0, 0, "element type of kept tokens"},
  };
  info.stores_selectively = true;
  info.make = [](const PolicyContext& ctx, const PolicyParams& p) -> StatusOr<std::unique_ptr<Policy>> {
    KVLAB_ASSIGN_OR_RETURN(const KvFormat format, parse_dense_format(p.get("dtype")));
    return make_tiered_policy(ctx, streaming_config(format, p.get_int("sink"), p.get_int("window")));
  };
  info.test_specs = {"streaming:sink=4,window=16", "streaming:sink=0,window=40,dtype=f32",
                     "streaming:sink=2,window=100,dtype=fp8"};
  info.off_spec = "streaming:sink=0,window=1048576,dtype=f32";
  info.roundtrip_tolerance = [](const PolicyParams& p) {
    return dense_relative_error(parse_dense_format(p.get("dtype")).value());
  };
  return info;
}

}  // namespace kvlab
