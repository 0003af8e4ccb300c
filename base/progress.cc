#include "base/progress.h"

#include <unistd.h>

#include <cstdio>

namespace kvlab {
namespace {

// On a terminal one line is rewritten a few times a second; into a file or pipe (a CI log) a
// new line every ten seconds is enough.
bool stderr_is_terminal() {
  static const bool tty = ::isatty(2) == 1;
  return tty;
}

}  // namespace

void Progress::update(const std::string& label, int64_t done, int64_t total) {
  if (quiet_) return;
  const auto now = std::chrono::steady_clock::now();
  const bool tty = stderr_is_terminal();
  const auto period = tty ? std::chrono::milliseconds(200) : std::chrono::milliseconds(10000);
  const bool first = label != label_;
  if (!first && done < total && now - last_ < period) return;
  last_ = now;
  label_ = label;
  if (tty) {
    std::fprintf(stderr, "\r[%s] %lld/%lld\033[K", label.c_str(), static_cast<long long>(done),
                 static_cast<long long>(total));
  } else {
    std::fprintf(stderr, "[%s] %lld/%lld\n", label.c_str(), static_cast<long long>(done),
                 static_cast<long long>(total));
  }
  std::fflush(stderr);
  open_ = tty;
}

void Progress::note(const std::string& line) {
  if (quiet_) return;
  finish();
  std::fprintf(stderr, "%s\n", line.c_str());
}

void Progress::finish() {
  if (!open_) return;
  std::fprintf(stderr, "\n");
  open_ = false;
}

}  // namespace kvlab
