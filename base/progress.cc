#include "base/progress.h"

#include <cstdio>

namespace kvlab {

void Progress::update(const std::string& label, int64_t done, int64_t total) {
  if (quiet_) return;
  const auto now = std::chrono::steady_clock::now();
  if (open_ && done < total && now - last_ < std::chrono::milliseconds(200)) return;
  last_ = now;
  std::fprintf(stderr, "\r[%s] %lld/%lld\033[K", label.c_str(), static_cast<long long>(done),
               static_cast<long long>(total));
  std::fflush(stderr);
  open_ = true;
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
