// Byte accounting. Every byte a cache holds is allocated through a TrackedAllocator bound to the
// cache's MemoryLedger, under one of the kinds below; the report is read off the ledger, so the
// numbers kvlab prints are what was allocated (page slack and bookkeeping included), never a
// formula. tests/conformance_test.cc checks the ledger against the global heap.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kvlab {

enum class MemoryKind {
  kPayload = 0,  // stored K/V in the policy's format (codes, f16 values, ...)
  kMeta,         // per-token or per-group metadata: scales, zero-points, norms, positions
  kExact,        // full-precision tokens a compressing policy keeps (sink, buffer, residual)
  kIndex,        // bookkeeping: page tables, per-sequence lists
  kSide,         // model-level side data (predictors, bases): not per-sequence, not in kv_bytes
  kDerived,      // working copies recomputable from the stored state (AQUA-KV's reconstructed
                 // chain): reported on its own, not in kv_bytes
  kCount,
};

const char* memory_kind_name(MemoryKind kind);

struct MemoryReport {
  std::array<int64_t, size_t(MemoryKind::kCount)> bytes{};
  int64_t peak_kv_bytes = 0;  // the most kv_bytes() held at any moment since the ledger began

  int64_t operator[](MemoryKind k) const { return bytes[size_t(k)]; }
  // Bytes of K/V state: everything but side data and derived working copies.
  int64_t kv_bytes() const { return total() - (*this)[MemoryKind::kSide] - (*this)[MemoryKind::kDerived]; }
  int64_t total() const {
    int64_t t = 0;
    for (int64_t b : bytes) t += b;
    return t;
  }
  MemoryReport& operator+=(const MemoryReport& o) {
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] += o.bytes[i];
    peak_kv_bytes += o.peak_kv_bytes;  // an upper bound of the peak of the sum
    return *this;
  }
};

class MemoryLedger {
 public:
  void add(MemoryKind kind, int64_t n) {
    bytes_[size_t(kind)].fetch_add(n, std::memory_order_relaxed);
    if (!counts_as_kv(kind)) return;
    const int64_t now = kv_.fetch_add(n, std::memory_order_relaxed) + n;
    int64_t peak = kv_peak_.load(std::memory_order_relaxed);
    while (now > peak && !kv_peak_.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
    }
  }
  void sub(MemoryKind kind, int64_t n) {
    bytes_[size_t(kind)].fetch_sub(n, std::memory_order_relaxed);
    if (counts_as_kv(kind)) kv_.fetch_sub(n, std::memory_order_relaxed);
  }
  MemoryReport report() const {
    MemoryReport r;
    for (size_t i = 0; i < r.bytes.size(); ++i) r.bytes[i] = bytes_[i].load(std::memory_order_relaxed);
    r.peak_kv_bytes = kv_peak_.load(std::memory_order_relaxed);
    return r;
  }

 private:
  static bool counts_as_kv(MemoryKind k) { return k != MemoryKind::kSide && k != MemoryKind::kDerived; }

  std::array<std::atomic<int64_t>, size_t(MemoryKind::kCount)> bytes_{};
  std::atomic<int64_t> kv_{0}, kv_peak_{0};  // kv_bytes() now and at most
};

// std::allocator that books every allocation on a ledger under a kind.
template <typename T>
class TrackedAllocator {
 public:
  using value_type = T;

  TrackedAllocator(MemoryLedger* ledger, MemoryKind kind) : ledger_(ledger), kind_(kind) {}
  template <typename U>
  TrackedAllocator(const TrackedAllocator<U>& o) : ledger_(o.ledger()), kind_(o.kind()) {}  // NOLINT

  T* allocate(size_t n) {
    ledger_->add(kind_, int64_t(n * sizeof(T)));
    return std::allocator<T>().allocate(n);
  }
  void deallocate(T* p, size_t n) {
    ledger_->sub(kind_, int64_t(n * sizeof(T)));
    std::allocator<T>().deallocate(p, n);
  }

  MemoryLedger* ledger() const { return ledger_; }
  MemoryKind kind() const { return kind_; }
  template <typename U>
  bool operator==(const TrackedAllocator<U>& o) const { return ledger_ == o.ledger() && kind_ == o.kind(); }

 private:
  MemoryLedger* ledger_;
  MemoryKind kind_;
};

template <typename T>
using TrackedVector = std::vector<T, TrackedAllocator<T>>;

// An empty TrackedVector booking its allocations on `ledger` under `kind`.
template <typename T>
TrackedVector<T> tracked(MemoryLedger* ledger, MemoryKind kind) {
  return TrackedVector<T>(TrackedAllocator<T>(ledger, kind));
}

// "payload 1.2 MiB, meta 0 B, ..."
std::string format_memory(const MemoryReport& r);
std::string format_bytes(int64_t bytes);

}  // namespace kvlab
