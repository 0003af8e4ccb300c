// Errors as values at API boundaries (Abseil-style Status / StatusOr), asserts inside.
//
// Every function that can fail on user input (a file, a policy spec, a parameter) returns a
// Status or a StatusOr<T>. The `kvlab` command turns any error into a message on stderr and exit
// code 2. Invariants that only a bug can break use KVLAB_CHECK (base/check.h) instead.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace kvlab {

enum class ErrorCode {
  kOk = 0,
  kInvalidArgument,  // a bad parameter, spec or command-line value
  kNotFound,         // a missing file, tensor or metadata key
  kDataLoss,         // a truncated or corrupt file
  kUnsupported,      // a valid input that kvlab does not handle (tensor type, format version)
  kOutOfRange,       // a context longer than the model allows, a sequence slot out of range
  kInternal,         // a broken invariant detected at a boundary
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  bool ok() const { return code_ == ErrorCode::kOk; }
  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "invalid argument: <message>"
  std::string to_string() const;

 private:
  ErrorCode code_ = ErrorCode::kOk;
  std::string message_;
};

inline Status invalid_argument(std::string m) { return {ErrorCode::kInvalidArgument, std::move(m)}; }
inline Status not_found(std::string m) { return {ErrorCode::kNotFound, std::move(m)}; }
inline Status data_loss(std::string m) { return {ErrorCode::kDataLoss, std::move(m)}; }
inline Status unsupported(std::string m) { return {ErrorCode::kUnsupported, std::move(m)}; }
inline Status out_of_range(std::string m) { return {ErrorCode::kOutOfRange, std::move(m)}; }
inline Status internal_error(std::string m) { return {ErrorCode::kInternal, std::move(m)}; }

// A value or the error that prevented it.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(T value) : v_(std::move(value)) {}           // NOLINT: implicit by design
  StatusOr(Status status) : v_(std::move(status)) {}    // NOLINT: must not be Ok
  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  // REQUIRES: ok().
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace kvlab

#define KVLAB_CONCAT_INNER_(a, b) a##b
#define KVLAB_CONCAT_(a, b) KVLAB_CONCAT_INNER_(a, b)

#define KVLAB_RETURN_IF_ERROR(expr)                 \
  do {                                              \
    ::kvlab::Status kvlab_status_ = (expr);         \
    if (!kvlab_status_.ok()) return kvlab_status_;  \
  } while (0)

#define KVLAB_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()

// KVLAB_ASSIGN_OR_RETURN(auto x, make_x());
#define KVLAB_ASSIGN_OR_RETURN(lhs, expr) \
  KVLAB_ASSIGN_OR_RETURN_IMPL_(KVLAB_CONCAT_(kvlab_statusor_, __LINE__), lhs, expr)
