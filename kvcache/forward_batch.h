// What one forward of the decoder writes into the cache: the new tokens of several sequences,
// stacked row-wise in the decoder's activation arrays.
#pragma once

#include <cstdint>
#include <vector>

namespace kvlab {

struct SeqSpan {
  int seq = 0;        // sequence slot in [0, max_seqs)
  int start_pos = 0;  // position of the first new token = tokens written to this slot so far
  int n_new = 0;      // new tokens of this sequence in this forward (>= 1)
  int row = 0;        // first row of these tokens in the [n_rows, ...] arrays
  // false: the new tokens attend over the history and themselves but are not stored, and the
  // slot's length does not advance (decode sparsification's dropped tokens). Only policies whose
  // registry entry says stores_selectively honour it.
  bool store = true;
};

struct ForwardBatch {
  std::vector<SeqSpan> seqs;       // distinct slots, rows in this order
  std::vector<int32_t> positions;  // [n_rows] original position of every row
  int n_rows() const { return int(positions.size()); }
};

}  // namespace kvlab
