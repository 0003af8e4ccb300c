// Fixed-size pages for one (layer, sequence): the storage unit of the paged policies. Memory
// grows one page at a time and is freed page by page on crop/reset, so the bytes a cache holds
// follow its length (page slack included in the accounting, never hidden).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcache/memory.h"

namespace kvlab {

class PageTable {
 public:
  // Pages of `page_bytes` bytes booked under `kind`; the table itself under kIndex.
  PageTable(MemoryLedger* ledger, MemoryKind kind, size_t page_bytes);
  ~PageTable();
  PageTable(PageTable&& o) noexcept;
  PageTable(const PageTable&) = delete;
  PageTable& operator=(const PageTable&) = delete;
  PageTable& operator=(PageTable&&) = delete;

  size_t n_pages() const { return pages_.size(); }
  size_t page_bytes() const { return page_bytes_; }
  uint8_t* page(size_t i) { return pages_[i]; }
  const uint8_t* page(size_t i) const { return pages_[i]; }
  // Appends a zero-filled page and returns it.
  uint8_t* add_page();
  // Keeps the first n pages.
  void truncate(size_t n);
  // Frees every page and the table's own capacity.
  void clear();

 private:
  size_t page_bytes_;
  TrackedAllocator<uint8_t> page_alloc_;
  TrackedVector<uint8_t*> pages_;
};

}  // namespace kvlab
