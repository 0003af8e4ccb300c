// Live heap bytes requested through operator new, counted by replacing the global allocation
// functions. Link tests/testing/heap_counter.cc into a test binary to enable it; the byte
// accounting test compares a cache's ledger with this independent count.
#pragma once

#include <cstdint>

namespace kvlab::testing {

int64_t live_heap_bytes();

}  // namespace kvlab::testing
