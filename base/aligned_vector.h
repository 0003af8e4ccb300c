// A std::vector whose storage starts on a 64-byte boundary (a cache line, one AVX-512 vector).
// For matrices whose rows are a multiple of 64 bytes wide (SmolLM2's 576- and 1536-float rows),
// every vector load of a row then lies in one cache line. With malloc's 16-byte alignment, a
// 64-byte load in three of four positions touches two lines (figures in kernels/cpu/matmul.cc).
#pragma once

#include <cstddef>
#include <new>
#include <vector>

namespace kvlab {

inline constexpr size_t kCacheLineBytes = 64;

template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) noexcept {}  // NOLINT

  T* allocate(size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kCacheLineBytes)));
  }
  void deallocate(T* p, size_t n) noexcept {
    ::operator delete(p, n * sizeof(T), std::align_val_t(kCacheLineBytes));
  }
  template <typename U>
  bool operator==(const CacheLineAllocator<U>&) const noexcept {
    return true;
  }
};

template <typename T>
using AlignedVector = std::vector<T, CacheLineAllocator<T>>;

}  // namespace kvlab
