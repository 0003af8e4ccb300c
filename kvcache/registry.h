// The policy registry: every policy kvlab knows, its parameters, and how the conformance suite
// exercises it. Adding a policy = one PolicyInfo in registry.cc; tests/conformance_test.cc then
// runs it through every generic test without naming it.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "kvcache/policy.h"
#include "kvcache/policy_spec.h"

namespace kvlab {

struct ParamInfo {
  enum class Kind { kInt, kFloat, kChoice, kString, kSpec };  // kSpec: a nested policy spec
  std::string key;
  Kind kind = Kind::kInt;
  std::string default_value;
  std::vector<std::string> choices;  // kChoice
  double min = 0, max = 0;           // kInt / kFloat, inclusive
  std::string doc;
};

// The values a parameter accepts, as `kvlab policies` lists them and errors quote them:
// "f32|f16" (choices), "1..1048576" (integers), "0..1" (numbers), "text", "[policy spec]".
std::string param_values(const ParamInfo& p);

struct PolicyInfo {
  std::string name;
  std::string summary;  // one line for `kvlab policies` and error messages
  std::vector<ParamInfo> params;
  // Builds the instance for layers [ctx.first_layer, ctx.last_layer]. May fail on parameter
  // combinations the schema cannot express (an error, never a silent fallback).
  std::function<StatusOr<std::unique_ptr<Policy>>(const PolicyContext& ctx, const PolicyParams&)> make;
  // Whether an instance keeps state that spans its layers (AQUA-KV's predictor chain, xKV's
  // layer groups), so that running it one layer at a time would change the method. Unset: no.
  std::function<bool(const PolicyParams&)> crosses_layers;
  // Whether attend() honours SeqSpan::store == false (stores nothing for such a sequence and
  // keeps its slot as it was), so that the policy can hold decode sparsification's kept tokens.
  bool stores_selectively = false;

  // --- what the conformance suite needs ---
  // Specs exercised by every generic test (at least the default and the off setting). "{test_dir}"
  // stands for a directory where prepare_test (if set) has written the side files they name.
  std::vector<std::string> test_specs;
  std::function<Status(const KvGeometry& g, const std::string& dir)> prepare_test;
  // The setting at which the policy must reproduce the full f32 cache's logits exactly.
  std::string off_spec;
  // Largest |read - written| / max|written| of a K or V element that survives in the cache.
  std::function<double(const PolicyParams&)> roundtrip_tolerance;
};

const std::vector<PolicyInfo>& registered_policies();
// Adds a policy written outside kvlab (a test's reference, a policy from Python). Call it before
// any cache is made, from one thread; the name must be new. The policy is then valid in specs.
Status register_policy(PolicyInfo info);
const PolicyInfo* find_policy(const std::string& name);
// "full, quant, ..." for error messages.
std::string registered_policy_names();

}  // namespace kvlab
