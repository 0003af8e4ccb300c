#include "base/status.h"

namespace kvlab {

std::string Status::to_string() const {
  const char* name = "ok";
  switch (code_) {
    case ErrorCode::kOk: return "ok";
    case ErrorCode::kInvalidArgument: name = "invalid argument"; break;
    case ErrorCode::kNotFound: name = "not found"; break;
    case ErrorCode::kDataLoss: name = "corrupt or truncated input"; break;
    case ErrorCode::kUnsupported: name = "unsupported"; break;
    case ErrorCode::kOutOfRange: name = "out of range"; break;
    case ErrorCode::kInternal: name = "internal error"; break;
  }
  return std::string(name) + ": " + message_;
}

}  // namespace kvlab
