#include "kvcache/memory.h"

#include <cstdio>

namespace kvlab {

const char* memory_kind_name(MemoryKind kind) {
  switch (kind) {
    case MemoryKind::kPayload: return "payload";
    case MemoryKind::kMeta: return "meta";
    case MemoryKind::kExact: return "exact";
    case MemoryKind::kIndex: return "index";
    case MemoryKind::kSide: return "side";
    case MemoryKind::kDerived: return "derived";
    case MemoryKind::kCount: break;
  }
  return "?";
}

std::string format_bytes(int64_t bytes) {
  char buf[64];
  const double b = double(bytes);
  if (b >= 1024.0 * 1024 * 1024) std::snprintf(buf, sizeof buf, "%.2f GiB", b / (1024.0 * 1024 * 1024));
  else if (b >= 1024.0 * 1024) std::snprintf(buf, sizeof buf, "%.2f MiB", b / (1024.0 * 1024));
  else if (b >= 1024.0) std::snprintf(buf, sizeof buf, "%.1f KiB", b / 1024.0);
  else std::snprintf(buf, sizeof buf, "%lld B", static_cast<long long>(bytes));
  return buf;
}

std::string format_memory(const MemoryReport& r) {
  std::string s;
  for (size_t k = 0; k < r.bytes.size(); ++k) {
    if (!s.empty()) s += ", ";
    s += std::string(memory_kind_name(MemoryKind(k))) + " " + format_bytes(r.bytes[k]);
  }
  return s;
}

}  // namespace kvlab
