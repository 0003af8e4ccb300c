// Greedy pair merging, the core of both tokenizers: repeatedly merge the adjacent pair of
// symbols with the best priority (the leftmost among equals) until no adjacent pair merges.
// A heap over the pairs of a doubly linked list gives the result of rescanning the whole
// sequence after every merge, in O(n log n): entries whose nodes changed since they were pushed
// are stale and skipped.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace kvlab {

struct PairMergeScratch {
  struct Candidate {
    double priority;            // lower merges first
    int32_t left, right;        // list nodes (indices into ids)
    int32_t left_id, right_id;  // their ids when pushed, to detect stale entries
    int32_t merged;             // the id the pair becomes
  };
  std::vector<int32_t> prev, next;
  std::vector<Candidate> heap;
};

// Merges ids[begin, end) and appends the result to `out`. `lookup(left_id, right_id, &merged,
// &priority)` returns false when the pair does not merge. `ids` is used as the list's storage.
template <typename Lookup>
void merge_pairs(std::vector<int32_t>& ids, int32_t begin, int32_t end, const Lookup& lookup,
                 std::vector<int32_t>& out, PairMergeScratch& s) {
  using Candidate = PairMergeScratch::Candidate;
  if (s.prev.size() < ids.size()) {
    s.prev.resize(ids.size());
    s.next.resize(ids.size());
  }
  for (int32_t i = begin; i < end; ++i) {
    s.prev[i] = (i > begin) ? i - 1 : -1;
    s.next[i] = (i + 1 < end) ? i + 1 : -1;
  }
  // std heap functions build a max-heap: "less" means lower priority, i.e. merges later.
  const auto later = [](const Candidate& x, const Candidate& y) {
    if (x.priority != y.priority) return x.priority > y.priority;
    return x.left > y.left;
  };
  const auto push_pair = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    int32_t merged = -1;
    double priority = 0;
    if (!lookup(ids[left], ids[right], &merged, &priority)) return;
    s.heap.push_back({priority, left, right, ids[left], ids[right], merged});
    std::push_heap(s.heap.begin(), s.heap.end(), later);
  };
  s.heap.clear();
  for (int32_t i = begin; i + 1 < end; ++i) push_pair(i, i + 1);
  while (!s.heap.empty()) {
    std::pop_heap(s.heap.begin(), s.heap.end(), later);
    const Candidate c = s.heap.back();
    s.heap.pop_back();
    if (ids[c.left] != c.left_id || s.next[c.left] != c.right || ids[c.right] != c.right_id) continue;
    ids[c.left] = c.merged;
    ids[c.right] = -1;
    s.next[c.left] = s.next[c.right];
    if (s.next[c.right] >= 0) s.prev[s.next[c.right]] = c.left;
    push_pair(s.prev[c.left], c.left);
    push_pair(c.left, s.next[c.left]);
  }
  for (int32_t i = begin; i >= 0 && i < end; i = s.next[i]) out.push_back(ids[i]);
}

}  // namespace kvlab
