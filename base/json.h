// A minimal ordered JSON writer for the results kvlab writes (no parser: kvlab never reads JSON).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kvlab {

class JsonValue {
 public:
  JsonValue() : text_("null") {}
  JsonValue(double v);                 // NOLINT: shortest round-trip form; NaN/inf become null
  JsonValue(int64_t v);                // NOLINT
  JsonValue(int v) : JsonValue(int64_t(v)) {}  // NOLINT
  JsonValue(bool v) : text_(v ? "true" : "false") {}  // NOLINT
  JsonValue(std::string_view s);       // NOLINT
  JsonValue(const char* s) : JsonValue(std::string_view(s)) {}  // NOLINT
  JsonValue(const std::string& s) : JsonValue(std::string_view(s)) {}  // NOLINT

  static JsonValue raw(std::string json) {
    JsonValue v;
    v.text_ = std::move(json);
    return v;
  }
  const std::string& text() const { return text_; }

 private:
  std::string text_;
};

class JsonObject {
 public:
  JsonObject& add(std::string key, JsonValue value) {
    fields_.emplace_back(std::move(key), std::move(value));
    return *this;
  }
  bool empty() const { return fields_.empty(); }
  // Pretty-printed with two-space indentation at `indent` levels.
  std::string dump(int indent = 0) const;
  JsonValue value() const { return JsonValue::raw(dump()); }

 private:
  std::vector<std::pair<std::string, JsonValue>> fields_;
};

std::string json_array(const std::vector<JsonObject>& items);
// [1.5, 2, ...] on one line.
JsonValue json_numbers(const std::vector<double>& values);

}  // namespace kvlab
