// A std::vector whose resize() leaves new elements of trivial types unwritten, for arrays that
// their producer fills right after growing them: zero-filling first would be a second pass over
// the memory (for a 4096-token layer read out of a cache, as long as the read itself).
#pragma once

#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

namespace kvlab {

template <typename T>
struct NoFillAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = NoFillAllocator<U>;
  };
  NoFillAllocator() = default;
  template <typename U>
  NoFillAllocator(const NoFillAllocator<U>&) noexcept {}

  // Value-initialization (what resize() asks for) becomes default-initialization: no write for
  // trivial types. Every other construction is the usual one.
  template <typename U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible_v<U>) {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

template <typename T>
using NoFillVector = std::vector<T, NoFillAllocator<T>>;

}  // namespace kvlab
