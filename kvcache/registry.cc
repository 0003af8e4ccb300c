#include "kvcache/registry.h"

#include <sstream>

#include "kvcache/policies/policies.h"

namespace kvlab {

const std::vector<PolicyInfo>& registered_policies() {
  // One line per policy. The conformance suite (tests/conformance_test.cc) runs all of them.
  static const std::vector<PolicyInfo> policies = {
      full_policy_info(),
      quant_policy_info(),
      kivi_policy_info(),
      streaming_policy_info(),
      aquakv_policy_info(),
      xkv_policy_info(),
      lighttransfer_policy_info(),
  };
  return policies;
}

const PolicyInfo* find_policy(const std::string& name) {
  for (const PolicyInfo& p : registered_policies()) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

std::string registered_policy_names() {
  std::string s;
  for (const PolicyInfo& p : registered_policies()) s += (s.empty() ? "" : ", ") + p.name;
  return s;
}

std::string param_values(const ParamInfo& p) {
  switch (p.kind) {
    case ParamInfo::Kind::kChoice: {
      std::string v;
      for (const std::string& c : p.choices) v += (v.empty() ? "" : "|") + c;
      return v;
    }
    case ParamInfo::Kind::kInt: return std::to_string(int64_t(p.min)) + ".." + std::to_string(int64_t(p.max));
    case ParamInfo::Kind::kFloat: {
      std::ostringstream r;
      r << p.min << ".." << p.max;
      return r.str();
    }
    case ParamInfo::Kind::kString: return "text";
    case ParamInfo::Kind::kSpec: return "[policy spec]";
  }
  return "";
}

}  // namespace kvlab
