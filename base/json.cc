#include "base/json.h"

#include <charconv>
#include <cmath>
#include <cstdio>

namespace kvlab {

JsonValue::JsonValue(double v) {
  if (!std::isfinite(v)) {
    text_ = "null";
    return;
  }
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  text_.assign(buf, r.ptr);
}

JsonValue::JsonValue(int64_t v) : text_(std::to_string(v)) {}

JsonValue::JsonValue(std::string_view s) {
  text_.reserve(s.size() + 2);
  text_.push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': text_ += "\\\""; break;
      case '\\': text_ += "\\\\"; break;
      case '\n': text_ += "\\n"; break;
      case '\t': text_ += "\\t"; break;
      case '\r': text_ += "\\r"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          text_ += buf;
        } else {
          text_ += char(c);
        }
    }
  }
  text_.push_back('"');
}

std::string JsonObject::dump(int indent) const {
  const std::string pad(size_t(indent + 1) * 2, ' ');
  std::string s = "{\n";
  for (size_t i = 0; i < fields_.size(); ++i) {
    s += pad + JsonValue(fields_[i].first).text() + ": " + fields_[i].second.text();
    s += i + 1 < fields_.size() ? ",\n" : "\n";
  }
  return s + std::string(size_t(indent) * 2, ' ') + "}";
}

std::string json_array(const std::vector<JsonObject>& items) {
  std::string s = "[\n";
  for (size_t i = 0; i < items.size(); ++i) {
    s += "  " + items[i].dump(1) + (i + 1 < items.size() ? ",\n" : "\n");
  }
  return s + "]";
}

JsonValue json_numbers(const std::vector<double>& values) {
  std::string s = "[";
  for (size_t i = 0; i < values.size(); ++i) s += (i ? ", " : "") + JsonValue(values[i]).text();
  return JsonValue::raw(s + "]");
}

}  // namespace kvlab
