#include "tests/testing/heap_counter.h"

#include <atomic>
#include <cstdlib>
#include <new>

namespace {

std::atomic<int64_t> g_live{0};

// Each block carries a 64-byte header holding the requested size and the malloc'ed address, so
// that any alignment up to 64 is served the same way.
constexpr size_t kHeader = 64;

void* allocate(size_t n, size_t align) {
  if (align < kHeader) align = kHeader;
  void* raw = std::malloc(n + kHeader + align);
  if (!raw) throw std::bad_alloc();
  uintptr_t user = (reinterpret_cast<uintptr_t>(raw) + kHeader + align - 1) & ~(uintptr_t(align) - 1);
  reinterpret_cast<size_t*>(user)[-1] = n;
  reinterpret_cast<void**>(user)[-2] = raw;
  g_live.fetch_add(int64_t(n), std::memory_order_relaxed);
  return reinterpret_cast<void*>(user);
}

void release(void* p) {
  if (!p) return;
  g_live.fetch_sub(int64_t(static_cast<size_t*>(p)[-1]), std::memory_order_relaxed);
  std::free(static_cast<void**>(p)[-2]);
}

}  // namespace

namespace kvlab::testing {
int64_t live_heap_bytes() { return g_live.load(); }
}  // namespace kvlab::testing

void* operator new(size_t n) { return allocate(n, 0); }
void* operator new[](size_t n) { return allocate(n, 0); }
void* operator new(size_t n, std::align_val_t a) { return allocate(n, size_t(a)); }
void* operator new[](size_t n, std::align_val_t a) { return allocate(n, size_t(a)); }
void* operator new(size_t n, const std::nothrow_t&) noexcept {
  try { return allocate(n, 0); } catch (...) { return nullptr; }
}
void* operator new[](size_t n, const std::nothrow_t&) noexcept {
  try { return allocate(n, 0); } catch (...) { return nullptr; }
}
void operator delete(void* p) noexcept { release(p); }
void operator delete[](void* p) noexcept { release(p); }
void operator delete(void* p, size_t) noexcept { release(p); }
void operator delete[](void* p, size_t) noexcept { release(p); }
void operator delete(void* p, std::align_val_t) noexcept { release(p); }
void operator delete[](void* p, std::align_val_t) noexcept { release(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { release(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { release(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { release(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { release(p); }
