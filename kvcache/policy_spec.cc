#include "kvcache/policy_spec.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <set>

#include "base/check.h"
#include "kvcache/registry.h"

namespace kvlab {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Splits at `sep` outside brackets: "base=[kivi:bits=4,group=32],rho=0.5" is two entries.
std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  int depth = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i < s.size() && s[i] == '[') ++depth;
    if (i < s.size() && s[i] == ']') --depth;
    if (i == s.size() || (s[i] == sep && depth == 0)) {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  return out;
}

bool parse_int(std::string_view s, long long* out) {
  const auto r = std::from_chars(s.data(), s.data() + s.size(), *out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size() && !s.empty();
}

bool parse_float(std::string_view s, double* out) {
  // std::from_chars for double is in libstdc++ 11+.
  const auto r = std::from_chars(s.data(), s.data() + s.size(), *out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size() && !s.empty() && std::isfinite(*out);
}

std::string describe(const ParamInfo& p) { return p.key + "=" + param_values(p); }

std::string valid_keys(const PolicyInfo& info) {
  if (info.params.empty()) return "(policy '" + info.name + "' takes no parameters)";
  std::string s;
  for (size_t i = 0; i < info.params.size(); ++i) s += (i ? ", " : "") + describe(info.params[i]);
  return s;
}

Status check_value(const PolicyInfo& info, const ParamInfo& p, std::string_view value) {
  auto bad = [&](const std::string& why) {
    return invalid_argument("bad value '" + std::string(value) + "' for " + info.name + ":" + p.key +
                            ": " + why + " (valid: " + describe(p) + ")");
  };
  switch (p.kind) {
    case ParamInfo::Kind::kChoice:
      if (std::find(p.choices.begin(), p.choices.end(), value) == p.choices.end()) return bad("not a choice");
      return Status::Ok();
    case ParamInfo::Kind::kInt: {
      long long v = 0;
      if (!parse_int(value, &v)) return bad("not an integer");
      if (double(v) < p.min || double(v) > p.max) return bad("out of range");
      return Status::Ok();
    }
    case ParamInfo::Kind::kFloat: {
      double v = 0;
      if (!parse_float(value, &v)) return bad("not a number");
      if (v < p.min || v > p.max) return bad("out of range");
      return Status::Ok();
    }
    case ParamInfo::Kind::kString:
      if (value.empty()) return bad("empty");
      return Status::Ok();
    case ParamInfo::Kind::kSpec: return Status::Ok();  // parsed by the caller
  }
  return Status::Ok();
}

// "[kivi:bits=4]" or "kivi:bits=4" -> "kivi:bits=4"; unbalanced brackets are an error.
StatusOr<std::string_view> unbracket(std::string_view value) {
  int depth = 0;
  for (char c : value) {
    depth += c == '[' ? 1 : c == ']' ? -1 : 0;
    if (depth < 0) break;
  }
  if (depth != 0) return invalid_argument("unbalanced brackets in '" + std::string(value) + "'");
  if (value.size() >= 2 && value.front() == '[' && value.back() == ']') return trim(value.substr(1, value.size() - 2));
  return value;
}

}  // namespace

StatusOr<PolicySpec> parse_policy_spec(std::string_view text) {
  text = trim(text);
  const size_t colon = text.find(':');
  const std::string name(trim(text.substr(0, colon)));
  if (name.empty()) return invalid_argument("empty policy name in '" + std::string(text) + "' (valid: " + registered_policy_names() + ")");
  const PolicyInfo* info = find_policy(name);
  if (!info) return invalid_argument("unknown policy '" + name + "' (valid: " + registered_policy_names() + ")");
  PolicySpec spec;
  spec.name = name;
  std::set<std::string> seen;
  if (colon != std::string_view::npos) {
    for (std::string_view kv : split(text.substr(colon + 1), ',')) {
      kv = trim(kv);
      const size_t eq = kv.find('=');
      if (eq == std::string_view::npos) {
        return invalid_argument("expected key=value in '" + std::string(kv) + "' of policy spec '" +
                                std::string(text) + "' (valid: " + valid_keys(*info) + ")");
      }
      const std::string key(trim(kv.substr(0, eq)));
      const std::string_view value = trim(kv.substr(eq + 1));
      const auto it = std::find_if(info->params.begin(), info->params.end(),
                                   [&](const ParamInfo& p) { return p.key == key; });
      if (it == info->params.end()) {
        return invalid_argument("unknown key '" + key + "' for policy '" + name + "' (valid: " + valid_keys(*info) + ")");
      }
      if (!seen.insert(key).second) return invalid_argument("key '" + key + "' given twice in '" + std::string(text) + "'");
      KVLAB_RETURN_IF_ERROR(check_value(*info, *it, value));
      if (it->kind == ParamInfo::Kind::kSpec) {
        // A nested spec is kept in canonical form, bracketed so that its commas stay inside.
        KVLAB_ASSIGN_OR_RETURN(std::string_view inner, unbracket(value));
        auto nested = parse_policy_spec(inner);
        if (!nested.ok()) {
          return invalid_argument("bad policy spec for " + name + ":" + key + ": " + nested.status().message());
        }
        spec.params.set(key, "[" + nested->text + "]");
        continue;
      }
      spec.params.set(key, std::string(value));
    }
  }
  spec.text = name;
  for (size_t i = 0; i < info->params.size(); ++i) {
    const ParamInfo& p = info->params[i];
    if (!seen.count(p.key)) {
      if (p.kind == ParamInfo::Kind::kSpec) {
        KVLAB_ASSIGN_OR_RETURN(PolicySpec nested, parse_policy_spec(p.default_value));
        spec.params.set(p.key, "[" + nested.text + "]");
      } else {
        spec.params.set(p.key, p.default_value);
      }
    }
    spec.text += (i ? "," : ":") + p.key + "=" + spec.params.get(p.key);
  }
  return spec;
}

namespace {

// "L3" or "L0-14" -> [first, last].
Status parse_layer_range(std::string_view s, int n_layers, int* first, int* last) {
  const std::string text(s);
  if (s.size() < 2 || s[0] != 'L') return invalid_argument("expected a layer range like L0-14 in '" + text + "'");
  s.remove_prefix(1);
  const size_t dash = s.find('-');
  long long a = 0, b = 0;
  if (!parse_int(s.substr(0, dash), &a) || (dash != std::string_view::npos && !parse_int(s.substr(dash + 1), &b))) {
    return invalid_argument("bad layer range '" + text + "' (expected L<first>-<last> or L<layer>)");
  }
  if (dash == std::string_view::npos) b = a;
  if (a < 0 || b >= n_layers || a > b) {
    return invalid_argument("layer range '" + text + "' is outside the model's layers L0-" + std::to_string(n_layers - 1));
  }
  *first = int(a);
  *last = int(b);
  return Status::Ok();
}

}  // namespace

const std::string& PolicyParams::get(const std::string& key) const {
  const auto it = values_.find(key);
  KVLAB_CHECK(it != values_.end());
  return it->second;
}

int PolicyParams::get_int(const std::string& key) const {
  long long v = 0;
  KVLAB_CHECK(parse_int(get(key), &v));
  return int(v);
}

double PolicyParams::get_float(const std::string& key) const {
  double v = 0;
  KVLAB_CHECK(parse_float(get(key), &v));
  return v;
}

StatusOr<PolicySpec> PolicyParams::get_spec(const std::string& key) const {
  KVLAB_ASSIGN_OR_RETURN(std::string_view inner, unbracket(get(key)));
  return parse_policy_spec(inner);
}

StatusOr<std::vector<LayerAssignment>> parse_cache_spec(std::string_view text, int n_layers) {
  text = trim(text);
  if (text.empty()) return invalid_argument("empty policy spec (valid policies: " + registered_policy_names() + ")");
  const bool mixed = text.size() >= 2 && text[0] == 'L' && text[1] >= '0' && text[1] <= '9';
  std::vector<LayerAssignment> named;
  if (!mixed) {
    KVLAB_ASSIGN_OR_RETURN(PolicySpec spec, parse_policy_spec(text));
    return std::vector<LayerAssignment>{{0, n_layers - 1, std::move(spec)}};
  }
  for (std::string_view entry : split(text, ';')) {
    entry = trim(entry);
    if (entry.empty()) continue;
    const size_t eq = entry.find('=');
    if (eq == std::string_view::npos) {
      return invalid_argument("expected L<first>-<last>=<policy> in '" + std::string(entry) + "'");
    }
    LayerAssignment a;
    KVLAB_RETURN_IF_ERROR(parse_layer_range(trim(entry.substr(0, eq)), n_layers, &a.first_layer, &a.last_layer));
    KVLAB_ASSIGN_OR_RETURN(a.spec, parse_policy_spec(entry.substr(eq + 1)));
    named.push_back(std::move(a));
  }
  std::sort(named.begin(), named.end(),
            [](const LayerAssignment& x, const LayerAssignment& y) { return x.first_layer < y.first_layer; });
  for (size_t i = 1; i < named.size(); ++i) {
    if (named[i].first_layer <= named[i - 1].last_layer) {
      return invalid_argument("layer " + std::to_string(named[i].first_layer) + " is assigned twice in '" +
                              std::string(text) + "'");
    }
  }
  // Layers not named get the default policy, one instance per gap.
  KVLAB_ASSIGN_OR_RETURN(PolicySpec fallback, parse_policy_spec(kDefaultPolicySpec));
  std::vector<LayerAssignment> out;
  int next = 0;
  for (LayerAssignment& a : named) {
    if (a.first_layer > next) out.push_back({next, a.first_layer - 1, fallback});
    next = a.last_layer + 1;
    out.push_back(std::move(a));
  }
  if (next < n_layers) out.push_back({next, n_layers - 1, fallback});
  return out;
}

std::string cache_spec_text(const std::vector<LayerAssignment>& layers) {
  if (layers.size() == 1) return layers[0].spec.text;
  std::string s;
  for (const LayerAssignment& a : layers) {
    if (!s.empty()) s += ";";
    s += 'L';
    s += std::to_string(a.first_layer);
    if (a.last_layer != a.first_layer) {
      s += '-';
      s += std::to_string(a.last_layer);
    }
    s += '=';
    s += a.spec.text;
  }
  return s;
}

}  // namespace kvlab
