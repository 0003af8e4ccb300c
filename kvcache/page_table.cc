#include "kvcache/page_table.h"

#include <cstring>

namespace kvlab {

PageTable::PageTable(MemoryLedger* ledger, MemoryKind kind, size_t page_bytes)
    : page_bytes_(page_bytes),
      page_alloc_(ledger, kind),
      pages_(TrackedAllocator<uint8_t*>(ledger, MemoryKind::kIndex)) {}

PageTable::PageTable(PageTable&& o) noexcept
    : page_bytes_(o.page_bytes_), page_alloc_(o.page_alloc_), pages_(std::move(o.pages_)) {
  o.pages_.clear();
}

PageTable::~PageTable() { truncate(0); }

uint8_t* PageTable::add_page() {
  uint8_t* p = page_alloc_.allocate(page_bytes_);
  std::memset(p, 0, page_bytes_);
  pages_.push_back(p);
  return p;
}

void PageTable::truncate(size_t n) {
  while (pages_.size() > n) {
    page_alloc_.deallocate(pages_.back(), page_bytes_);
    pages_.pop_back();
  }
}

void PageTable::clear() {
  truncate(0);
  pages_.shrink_to_fit();
}

}  // namespace kvlab
