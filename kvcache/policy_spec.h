// Policy specs are strings:
//
//   NAME[:key=value,...]                        one policy for every layer
//   L0-14=full:dtype=f16;L15-29=full:dtype=bf16  per-layer mixing; "L7=..." names one layer
//   lighttransfer:rho=0.5,base=[kivi:bits=4]     a parameter holding a policy spec, in brackets
//
// Layers a mixed spec does not name get kDefaultPolicySpec. Each assignment becomes one policy
// instance that owns its layer range, so a cross-layer policy (AQUA-KV's predictor chain, xKV's
// layer groups) sees all of its layers; "L0-14=x;L15-29=x" makes two independent instances.
// Names, keys and values are validated against the registry (kvcache/registry.h); every error
// says what is valid.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace kvlab {

inline constexpr const char* kDefaultPolicySpec = "full:dtype=f16";

struct PolicySpec;

// One value per parameter, validated and with defaults filled in.
class PolicyParams {
 public:
  const std::string& get(const std::string& key) const;  // REQUIRES: a declared key
  int get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  // A parameter holding a nested spec ("[kivi:bits=4]"), parsed.
  StatusOr<PolicySpec> get_spec(const std::string& key) const;
  void set(const std::string& key, std::string value) { values_[key] = std::move(value); }
  const std::map<std::string, std::string>& values() const { return values_; }

 private:
  std::map<std::string, std::string> values_;
};

struct PolicySpec {
  std::string name;
  PolicyParams params;
  // Canonical text: name and every parameter in declaration order, "full:dtype=f16".
  std::string text;
};

struct LayerAssignment {
  int first_layer = 0;
  int last_layer = 0;  // inclusive
  PolicySpec spec;
};

// Parses and validates one policy's spec, "name:key=value,..." (no layer ranges). A parameter
// holding a nested spec keeps its canonical text in brackets, "[kivi:bits=4,...]".
StatusOr<PolicySpec> parse_policy_spec(std::string_view text);
// Parses and validates a spec for a model of `n_layers` layers. The assignments cover every
// layer exactly once, in increasing order.
StatusOr<std::vector<LayerAssignment>> parse_cache_spec(std::string_view text, int n_layers);
// The canonical text of a parsed spec (single policy: its text; mixed: "L0-14=...;L15-29=...").
std::string cache_spec_text(const std::vector<LayerAssignment>& layers);

}  // namespace kvlab
