#include "kvcache/registry.h"

#include <algorithm>
#include <cctype>
#include <sstream>

#include "kvcache/policies/policies.h"

namespace kvlab {

namespace {

std::vector<PolicyInfo>& registry() {
  // One line per policy. The conformance suite (tests/conformance_test.cc) runs all of them.
  static std::vector<PolicyInfo> policies = {
      full_policy_info(),
      quant_policy_info(),
      kivi_policy_info(),
      streaming_policy_info(),
      aquakv_policy_info(),
      xkv_policy_info(),
      lighttransfer_policy_info(),
      dynsparse_policy_info(),
      evict_policy_info(),
  };
  return policies;
}

}  // namespace

const std::vector<PolicyInfo>& registered_policies() { return registry(); }

Status register_policy(PolicyInfo info) {
  const auto name_char = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'; };
  if (info.name.empty() || !std::all_of(info.name.begin(), info.name.end(), name_char)) {
    return invalid_argument("register_policy: '" + info.name + "' is not a policy name (letters, digits, _ and -)");
  }
  if (find_policy(info.name)) return invalid_argument("register_policy: a policy named " + info.name + " exists");
  if (!info.make) return invalid_argument("register_policy: " + info.name + " has no make function");
  registry().push_back(std::move(info));
  return Status::Ok();
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
