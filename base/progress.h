// Progress of long work on stderr, silenced by --quiet: a line rewritten a few times a second on
// a terminal, a plain line every ten seconds into a log.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace kvlab {

class Progress {
 public:
  explicit Progress(bool quiet) : quiet_(quiet) {}
  ~Progress() { finish(); }
  // "[label] done/total" on one rewritten line.
  void update(const std::string& label, int64_t done, int64_t total);
  // A line of its own (ends any progress line first).
  void note(const std::string& line);
  void finish();

 private:
  bool quiet_;
  bool open_ = false;  // a rewritten terminal line is waiting for its newline
  std::string label_;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace kvlab
