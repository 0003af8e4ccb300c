#include "attention/attend.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "base/check.h"
#include "kernels/cpu/kv_attention.h"
#include "kernels/cpu/kv_quantize.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/softmax.h"

namespace kvlab {
namespace {

constexpr int kQueryTile = 32;           // new tokens per prefill work item
constexpr int kNewKeyTile = 64;          // new keys per step of the causal part
constexpr int kBlockHeadsPerChunk = 32;  // (history block, kv head) pairs per decode work item
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// One work item: rows = the query heads of kv heads [g0, g1) for new tokens [t0, t1) of sequence
// `s`, keys = units [u0, u1) where units are the history blocks followed by tiles of new keys.
// Decode items take every kv head of a span of blocks, block by block and kv head by kv head, so
// that they read each block page front to back (see kvcache/block_store.h).
struct Item {
  int s, g0, g1, t0, t1, u0, u1;
  int first_chunk;  // index of this tile's first item (merge target)
  int n_chunks;
};

// Online-softmax state of `rows` query rows: running max m, running sum l, unnormalized output.
struct Partial {
  std::vector<float> m, l, acc;  // [rows], [rows], [rows, head_dim]
  void init(int rows, int d) {
    m.assign(rows, kNegInf);
    l.assign(rows, 0.0f);
    acc.assign(size_t(rows) * d, 0.0f);
  }
};

// The coefficient sums of factored values (HistoryBlock::v_basis) of one kv head's rows in a
// work item: [rows, rank], rescaled with the rows' acc by the online softmax. Local to the work
// item (allocated only when a history has factored values).
struct FactoredSums {
  const float* basis = nullptr;  // [d, rank]
  int rank = 0;
  std::vector<float> acc;
  std::vector<float> m_before;  // [rows]
};

struct Scratch {
  std::vector<float> q;       // [rows, d] pre-scaled queries of the item
  std::vector<float> scores;  // [rows of one kv head, n] scores, then probabilities
  std::vector<int32_t> row_pos;
};

// Folds one block into the state of `rows` query rows of one kv head: scores from the packed
// keys, the online softmax step, values accumulated (factored values into f->acc, which is
// rescaled as acc is; f null: the item has seen no factored values). row_pos: each row's
// position for the causal mask, or null when no key can lie in any row's future (history blocks).
void accumulate_block(const HistoryBlock& b, int rows, const int32_t* row_pos, int d, const float* q,
                      std::vector<float>& scores, FactoredSums* f, float* m, float* l, float* acc) {
  const int n = b.k.n;
  if (n == 0) return;
  if (b.v_basis && !f->basis) {
    f->basis = b.v_basis;
    f->rank = b.v.d;
    f->acc.assign(size_t(rows) * f->rank, 0.0f);
  }
  KVLAB_CHECK(!b.v_basis || (b.v_basis == f->basis && b.v.d == f->rank));
  const bool factored = f && f->basis;
  scores.resize(size_t(rows) * n);
  kv_scores(b.k, q, rows, scores.data());
  if (factored) f->m_before.assign(m, m + rows);
  online_softmax_block(scores.data(), rows, n, b.positions, b.first_pos, row_pos, m, l, acc, d);
  for (int r = 0; factored && r < rows; ++r) {
    const float m0 = f->m_before[size_t(r)];
    if (m[r] == m0) continue;
    const float c = m0 == kNegInf ? 0.0f : std::exp(m0 - m[r]);
    for (int k = 0; k < f->rank; ++k) f->acc[size_t(r) * f->rank + k] *= c;
  }
  kv_accumulate(b.v, scores.data(), rows, b.v_basis ? f->acc.data() : acc);
}

// acc[r, c] += sum_k f.acc[r, k] basis[c, k] for the rows of one kv head.
void apply_basis(const FactoredSums& f, int rows, int d, float* acc) {
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < d; ++c) {
      float sum = 0.0f;
      for (int k = 0; k < f.rank; ++k) sum += f.acc[size_t(r) * f.rank + k] * f.basis[size_t(c) * f.rank + k];
      acc[size_t(r) * d + c] += sum;
    }
  }
}

// The new tokens [j0, j1) of kv head g, exact f32, as a block.
HistoryBlock new_tokens_block(const AttentionShape& shape, const SeqAttention& sa, int g, int j0, int j1) {
  HistoryBlock b;
  const size_t off = size_t(j0) * shape.kv_dim() + size_t(g) * shape.head_dim;
  b.k = f32_block(sa.k_new + off, j1 - j0, shape.head_dim, shape.kv_dim());
  b.v = f32_block(sa.v_new + off, j1 - j0, shape.head_dim, shape.kv_dim());
  b.positions = sa.positions + j0;
  return b;
}

void run_item(const AttentionShape& shape, const SeqAttention& sa, const Item& it, Partial& st, Scratch& scratch) {
  const int d = shape.head_dim, G = shape.n_heads / shape.n_kv_heads;
  const int rh = (it.t1 - it.t0) * G;  // rows per kv head
  const int rows = rh * (it.g1 - it.g0);
  // Row (g - g0) * rh + (t - t0) * G + i <- query head g * G + i of token t; scaled once here.
  scratch.q.resize(size_t(rows) * d);
  for (int g = it.g0; g < it.g1; ++g) {
    for (int t = it.t0; t < it.t1; ++t) {
      const float* src = sa.q + size_t(t) * shape.q_dim() + size_t(g) * G * d;
      float* dst = scratch.q.data() + (size_t(g - it.g0) * rh + size_t(t - it.t0) * G) * d;
      for (int i = 0; i < G * d; ++i) dst[i] = src[i] * shape.scale;
    }
  }
  // Row positions for the causal part (the same for every kv head): rows of token t share
  // positions[t].
  scratch.row_pos.resize(rh);
  for (int r = 0; r < rh; ++r) scratch.row_pos[r] = sa.positions[it.t0 + r / G];
  st.init(rows, d);
  std::vector<FactoredSums> factored;  // [kv heads of the item] once a factored block is seen
  auto fold = [&](const HistoryBlock& b, int g, const int32_t* row_pos) {
    const int r0 = (g - it.g0) * rh;
    if (b.v_basis && factored.empty()) factored.resize(size_t(it.g1 - it.g0));
    FactoredSums* f = factored.empty() ? nullptr : &factored[size_t(g - it.g0)];
    accumulate_block(b, rh, row_pos, d, scratch.q.data() + size_t(r0) * d, scratch.scores, f, st.m.data() + r0,
                     st.l.data() + r0, st.acc.data() + size_t(r0) * d);
  };

  // History blocks, each block's kv heads one after the other: a block page front to back. Each
  // kernel is told the block read after its own (KvBlock::next: a head's values after its keys,
  // the next head's keys after them, across block pages too), whose lines it asks for while it
  // works (kernels/cpu/kv_kernels_internal.h).
  const int n_hist = sa.history ? sa.history->n_blocks() : 0;
  const int heads = it.g1 - it.g0, n_pairs = std::max(0, std::min(it.u1, n_hist) - it.u0) * heads;
  const bool ahead = sa.history && sa.history->blocks_outlive_next_call();
  auto pair_block = [&](int i) { return sa.history->block(it.u0 + i / heads, it.g0 + i % heads); };
  HistoryBlock cur, after;
  if (n_pairs > 0) cur = pair_block(0);
  for (int i = 0; i < n_pairs; ++i) {
    const bool more = i + 1 < n_pairs;
    if (more && ahead) after = pair_block(i + 1);
    cur.k.next = &cur.v;
    cur.v.next = more && ahead ? &after.k : nullptr;
    fold(cur, it.g0 + i % heads, nullptr);
    if (more) cur = ahead ? after : pair_block(i + 1);
  }
  for (int u = std::max(it.u0, n_hist); u < it.u1; ++u) {
    const int j0 = (u - n_hist) * kNewKeyTile;
    const int j1 = std::min(sa.n_new, j0 + kNewKeyTile);
    for (int g = it.g0; g < it.g1; ++g) fold(new_tokens_block(shape, sa, g, j0, j1), g, scratch.row_pos.data());
  }
  for (size_t i = 0; i < factored.size(); ++i) {
    if (factored[i].basis) apply_basis(factored[i], rh, d, st.acc.data() + i * size_t(rh) * d);
  }
}

// Folds partial states b into a (same rows), flash-decoding style.
void merge_into(Partial& a, const Partial& b, int d) {
  for (size_t r = 0; r < a.m.size(); ++r) {
    if (b.m[r] == kNegInf) continue;
    const float m = std::max(a.m[r], b.m[r]);
    const float ca = a.m[r] == kNegInf ? 0.0f : std::exp(a.m[r] - m);
    const float cb = std::exp(b.m[r] - m);
    a.l[r] = a.l[r] * ca + b.l[r] * cb;
    for (int i = 0; i < d; ++i) a.acc[r * d + i] = a.acc[r * d + i] * ca + b.acc[r * d + i] * cb;
    a.m[r] = m;
  }
}

// The probabilities of the queries the observer wants, per kv head: its keys are dequantized
// once ([n, d] f32, history then new tokens), the scores of every wanted query head of its group
// come from one matrix product (the dispatched matmul kernel, f32), and the masked softmax of
// each row from the online-softmax kernel in one block (so the observers' cost is that of two
// kernel calls, not of a scalar loop: H2O and TOVA pay it at every decode step).
void report_probs(const AttentionShape& shape, const SeqAttention& sa, int layer,
                  const AttentionObserver& observer) {
  const int d = shape.head_dim, G = shape.n_heads / shape.n_kv_heads;
  std::vector<int> wanted;  // rows of the new tokens whose probabilities are wanted
  for (int t = 0; t < sa.n_new; ++t) {
    if (observer.wants(layer, sa.seq, sa.positions[t])) wanted.push_back(t);
  }
  if (wanted.empty()) return;
  constexpr int kRowsPerPass = 64;  // wanted tokens per product: bounds s at 64 * G * n floats
  std::vector<float> keys, block, qs, s;
  std::vector<int32_t> kpos, row_pos;
  std::vector<float> m, l;
  float no_acc = 0;  // d = 0 below: the kernel has no accumulator to rescale
  for (int g = 0; g < shape.n_kv_heads; ++g) {
    keys.clear();
    kpos.clear();
    for (int b = 0; sa.history && b < sa.history->n_blocks(); ++b) {
      const HistoryBlock blk = sa.history->block(b, g);
      block.resize(size_t(blk.k.n) * d);
      dequantize_block(blk.k, block.data());
      keys.insert(keys.end(), block.begin(), block.end());
      for (int j = 0; j < blk.k.n; ++j) kpos.push_back(blk.positions ? blk.positions[j] : blk.first_pos + j);
    }
    const size_t n_hist = kpos.size();
    for (int j = 0; j < sa.n_new; ++j) {
      const float* k = sa.k_new + size_t(j) * shape.kv_dim() + size_t(g) * d;
      keys.insert(keys.end(), k, k + d);
      kpos.push_back(sa.positions[j]);
    }
    for (size_t w0 = 0; w0 < wanted.size(); w0 += kRowsPerPass) {
      const size_t w1 = std::min(wanted.size(), w0 + kRowsPerPass);
      // History, then the new tokens up to the last wanted one of this pass.
      const int64_t n_pass = int64_t(n_hist) + wanted[w1 - 1] + 1;
      const int rows = int(w1 - w0) * G;
      qs.resize(size_t(rows) * d);
      row_pos.resize(size_t(rows));
      for (size_t w = w0; w < w1; ++w) {
        for (int h = 0; h < G; ++h) {
          const float* q = sa.q + size_t(wanted[w]) * shape.q_dim() + size_t(g * G + h) * d;
          std::copy(q, q + d, &qs[((w - w0) * G + h) * d]);
          row_pos[(w - w0) * G + h] = sa.positions[wanted[w]];
        }
      }
      s.resize(size_t(rows) * n_pass);
      matmul(qs.data(), rows, d, keys.data(), n_pass, s.data());
      for (float& x : s) x *= shape.scale;
      m.assign(size_t(rows), kNegInf);
      l.assign(size_t(rows), 0.0f);
      online_softmax_block(s.data(), rows, int(n_pass), kpos.data(), 0, row_pos.data(), m.data(), l.data(), &no_acc, 0);
      for (size_t w = w0; w < w1; ++w) {
        const int32_t pos = sa.positions[wanted[w]];
        // The keys it sees: every history key, then the new ones up to itself.
        const size_t seen = n_hist + size_t(wanted[w]) + 1;
        for (int h = 0; h < G; ++h) {
          const int r = int(w - w0) * G + h;
          float* p = &s[size_t(r) * n_pass];
          const float inv = 1.0f / l[size_t(r)];
          for (size_t j = 0; j < seen; ++j) p[j] *= inv;
          observer.observe(layer, sa.seq, pos, g * G + h, std::span<const float>(p, seen),
                           std::span<const int32_t>(kpos.data(), seen));
        }
      }
    }
  }
}

}  // namespace

void attend(const AttentionShape& shape, std::span<const SeqAttention> seqs, int layer,
            const AttentionObserver* observer) {
  KVLAB_CHECK(shape.n_kv_heads > 0 && shape.n_heads % shape.n_kv_heads == 0);
  const int d = shape.head_dim, G = shape.n_heads / shape.n_kv_heads;
  std::vector<Item> items;
  for (int s = 0; s < int(seqs.size()); ++s) {
    const SeqAttention& sa = seqs[s];
    const int n_hist = sa.history ? sa.history->n_blocks() : 0;
    const int n_tiles = (sa.n_new + kQueryTile - 1) / kQueryTile;
    if (n_tiles == 1) {
      // Decode (one query tile): every kv head together, the keys split into chunks of about
      // kBlockHeadsPerChunk (block, kv head) pairs so that both cores work.
      const int n_units = n_hist + (sa.n_new + kNewKeyTile - 1) / kNewKeyTile;
      const int per_chunk = std::max(1, kBlockHeadsPerChunk / shape.n_kv_heads);
      const int n_chunks = (n_units + per_chunk - 1) / per_chunk;
      const int first = int(items.size());
      for (int c = 0; c < n_chunks; ++c) {
        const int u0 = c * n_units / n_chunks, u1 = (c + 1) * n_units / n_chunks;
        items.push_back({s, 0, shape.n_kv_heads, 0, sa.n_new, u0, u1, first, n_chunks});
      }
      continue;
    }
    for (int g = 0; g < shape.n_kv_heads; ++g) {
      for (int tile = 0; tile < n_tiles; ++tile) {
        const int t0 = tile * kQueryTile, t1 = std::min(sa.n_new, t0 + kQueryTile);
        // Units this tile can see: all history blocks, then new-key tiles up to its last token.
        const int n_units = n_hist + (t1 + kNewKeyTile - 1) / kNewKeyTile;
        items.push_back({s, g, g + 1, t0, t1, 0, n_units, int(items.size()), 1});
      }
    }
  }
  std::vector<Partial> partial(items.size());
  // Per thread, for this call only: nothing stays allocated between calls (the caches' byte
  // accounting is checked against the heap).
  std::vector<Scratch> scratch(static_cast<size_t>(omp_get_max_threads()));
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < items.size(); ++i) {
    run_item(shape, seqs[items[i].s], items[i], partial[i], scratch[size_t(omp_get_thread_num())]);
  }

  for (size_t i = 0; i < items.size(); ++i) {
    const Item& it = items[i];
    if (int(i) != it.first_chunk) continue;
    Partial& st = partial[i];
    for (int c = 1; c < it.n_chunks; ++c) merge_into(st, partial[i + c], d);
    const SeqAttention& sa = seqs[it.s];
    const int rh = (it.t1 - it.t0) * G;
    for (int g = it.g0; g < it.g1; ++g) {
      for (int t = it.t0; t < it.t1; ++t) {
        for (int h = 0; h < G; ++h) {
          const int r = (g - it.g0) * rh + (t - it.t0) * G + h;
          float* o = sa.out + size_t(t) * shape.q_dim() + size_t(g * G + h) * d;
          const float inv = st.l[r] > 0 ? 1.0f / st.l[r] : 0.0f;
          for (int e = 0; e < d; ++e) o[e] = st.acc[size_t(r) * d + e] * inv;
        }
      }
    }
  }
  if (observer) {
    for (const SeqAttention& sa : seqs) report_probs(shape, sa, layer, *observer);
  }
}

void attend_reference(const AttentionShape& shape, const float* q, const int32_t* q_pos, int n_q,
                      const float* k, const float* v, const int32_t* k_pos, int n_k, float* out) {
  const int d = shape.head_dim, G = shape.n_heads / shape.n_kv_heads;
  std::vector<double> s(n_k);
  for (int i = 0; i < n_q; ++i) {
    for (int h = 0; h < shape.n_heads; ++h) {
      const int g = h / G;
      const float* qh = q + size_t(i) * shape.q_dim() + size_t(h) * d;
      double mx = -INFINITY;
      for (int j = 0; j < n_k; ++j) {
        if (k_pos[j] > q_pos[i]) {
          s[j] = -INFINITY;
          continue;
        }
        const float* kj = k + size_t(j) * shape.kv_dim() + size_t(g) * d;
        double dot = 0;
        for (int e = 0; e < d; ++e) dot += double(qh[e]) * kj[e];
        s[j] = dot * shape.scale;
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      for (int j = 0; j < n_k; ++j) sum += s[j] == -INFINITY ? 0.0 : std::exp(s[j] - mx);
      float* o = out + size_t(i) * shape.q_dim() + size_t(h) * d;
      for (int e = 0; e < d; ++e) {
        double acc = 0;
        for (int j = 0; j < n_k; ++j) {
          if (s[j] == -INFINITY) continue;
          acc += std::exp(s[j] - mx) / sum * v[size_t(j) * shape.kv_dim() + size_t(g) * d + e];
        }
        o[e] = float(acc);
      }
    }
  }
}

}  // namespace kvlab
