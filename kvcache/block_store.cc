#include "kvcache/block_store.h"

#include <algorithm>
#include <cstring>

#include "base/check.h"
#include "kernels/cpu/kv_quantize.h"

namespace kvlab {

BlockStore::BlockStore(MemoryLedger* ledger, int n_kv_heads, int head_dim, int block_tokens, IntFormat k,
                       IntFormat v)
    : n_kv_heads_(n_kv_heads),
      head_dim_(head_dim),
      block_tokens_(block_tokens),
      kf_(k),
      vf_(v),
      codes_(ledger, MemoryKind::kPayload, size_t(n_kv_heads) * (code_bytes(k) + code_bytes(v))),
      meta_(ledger, MemoryKind::kMeta, size_t(n_kv_heads) * 2 * 2 * (meta_entries(k) + meta_entries(v))),
      counts_(TrackedAllocator<int32_t>(ledger, MemoryKind::kIndex)),
      firsts_(TrackedAllocator<int32_t>(ledger, MemoryKind::kIndex)) {
  for (const IntFormat& f : {k, v}) {
    KVLAB_CHECK(f.format == KvFormat::kIntToken || f.format == KvFormat::kIntChannel);
    KVLAB_CHECK(f.format == KvFormat::kIntChannel || head_dim % f.group == 0);
    // Token groups of a page start on a byte (kv_format.h) and fill it exactly.
    KVLAB_CHECK(f.format == KvFormat::kIntToken ||
                (f.group > 0 && block_tokens % f.group == 0 &&
                 (f.group == block_tokens || (int64_t(f.group) * f.bits) % 8 == 0)));
  }
  KVLAB_CHECK(kf_.format == KvFormat::kIntToken || vf_.format == KvFormat::kIntToken || kf_.group == vf_.group);
}

int BlockStore::chunk_tokens() const {
  if (kf_.format == KvFormat::kIntChannel) return kf_.group;
  return vf_.format == KvFormat::kIntChannel ? vf_.group : 1;
}

int64_t BlockStore::code_bytes(const IntFormat& f) const {
  return f.format == KvFormat::kIntChannel ? int64_t(head_dim_) * packed_bytes(block_tokens_, f.bits)
                                           : int64_t(block_tokens_) * packed_bytes(head_dim_, f.bits);
}

int64_t BlockStore::meta_entries(const IntFormat& f) const {
  return f.format == KvFormat::kIntChannel ? int64_t(block_tokens_ / f.group) * head_dim_
                                           : int64_t(block_tokens_) * (head_dim_ / f.group);
}

bool BlockStore::token_granular() const { return chunk_tokens() == 1; }

// Layout inside a block's pages, kv head by kv head: codes page [head][K codes | V codes], meta
// page [head][K scale | K zero | V scale | V zero] (f16 entries).
int64_t BlockStore::code_offset(int side, int h) const {
  return int64_t(h) * (code_bytes(kf_) + code_bytes(vf_)) + (side == 0 ? 0 : code_bytes(kf_));
}

int64_t BlockStore::meta_offset(int side, int zero, int h) const {
  const int64_t ke = meta_entries(kf_), ve = meta_entries(vf_);
  const int64_t side_off = side == 0 ? 0 : 2 * ke;
  return int64_t(h) * 2 * (ke + ve) + side_off + (zero ? (side == 0 ? ke : ve) : 0);
}

KvBlock BlockStore::view(int side, const uint8_t* codes, const uint16_t* meta, int n, int h) const {
  const IntFormat& f = side == 0 ? kf_ : vf_;
  KvBlock b;
  b.format = f.format;
  b.n = n;
  b.d = head_dim_;
  b.bits = f.bits;
  b.group = f.group;
  b.data = codes + code_offset(side, h);
  b.stride = f.format == KvFormat::kIntChannel ? packed_bytes(block_tokens_, f.bits) : packed_bytes(head_dim_, f.bits);
  b.scale = meta + meta_offset(side, 0, h);
  b.zero = meta + meta_offset(side, 1, h);
  return b;
}

void BlockStore::block(int b, int kv_head, KvBlock* k, KvBlock* v, int* first_token) const {
  const uint8_t* codes = codes_.page(size_t(b));
  const auto* meta = reinterpret_cast<const uint16_t*>(meta_.page(size_t(b)));
  *k = view(0, codes, meta, counts_[b], kv_head);
  *v = view(1, codes, meta, counts_[b], kv_head);
  *first_token = firsts_[b];
}

void BlockStore::append(const float* k, const float* v, int n, int64_t ld) {
  const int chunk = chunk_tokens();
  KVLAB_CHECK(n % chunk == 0);
  int done = 0;
  while (done < n) {
    // A block cut inside a token group by truncate() is not written to again: that group's
    // scales describe its old tokens.
    if (counts_.empty() || counts_.back() == block_tokens_ || counts_.back() % chunk != 0) {
      codes_.add_page();
      meta_.add_page();
      firsts_.push_back(size_ + done);
      counts_.push_back(0);
    }
    const int b = n_blocks() - 1;
    uint8_t* codes = codes_.page(size_t(b));
    auto* meta = reinterpret_cast<uint16_t*>(meta_.page(size_t(b)));
    const int take = std::min(n - done, block_tokens_ - counts_[b]);  // whole chunks: both are multiples
    for (int side = 0; side < 2; ++side) {
      const IntFormat& f = side == 0 ? kf_ : vf_;
      const float* x = (side == 0 ? k : v) + int64_t(done) * ld;
      for (int h = 0; h < n_kv_heads_; ++h) {
        uint8_t* hc = codes + code_offset(side, h);
        uint16_t* hs = meta + meta_offset(side, 0, h);
        uint16_t* hz = meta + meta_offset(side, 1, h);
        if (f.format == KvFormat::kIntChannel) {
          for (int t = 0; t < take; t += f.group) {
            const int slot = counts_[b] + t;  // a multiple of the group: its codes start on a byte
            const int64_t meta = int64_t(slot / f.group) * head_dim_;
            quantize_channels(f.bits, x + int64_t(t) * ld + int64_t(h) * head_dim_, f.group, ld, head_dim_,
                              hc + packed_bytes(slot, f.bits), packed_bytes(block_tokens_, f.bits), hs + meta,
                              hz + meta);
          }
          continue;
        }
        const int groups = head_dim_ / f.group;
        for (int t = 0; t < take; ++t) {
          const int slot = counts_[b] + t;
          quantize_token(KvFormat::kIntToken, f.bits, f.group, x + int64_t(t) * ld + int64_t(h) * head_dim_, head_dim_,
                         hc + int64_t(slot) * packed_bytes(head_dim_, f.bits), hs + int64_t(slot) * groups,
                         hz + int64_t(slot) * groups);
        }
      }
    }
    counts_[b] += take;
    done += take;
  }
  size_ += n;
}

void BlockStore::truncate(int n) {
  KVLAB_CHECK(n >= 0 && n <= size_);
  size_ = n;
  size_t keep = 0;
  while (keep < counts_.size() && firsts_[keep] < n) ++keep;
  counts_.resize(keep);
  firsts_.resize(keep);
  if (keep > 0) counts_.back() = n - firsts_.back();
  codes_.truncate(keep);
  meta_.truncate(keep);
}

void BlockStore::clear() {
  size_ = 0;
  counts_.clear();
  counts_.shrink_to_fit();
  firsts_.clear();
  firsts_.shrink_to_fit();
  codes_.clear();
  meta_.clear();
}

void BlockStore::read(int first, int n, float* k, float* v) const {
  KVLAB_CHECK(first >= 0 && n >= 0 && first + n <= size_);
  const int64_t kv_dim = int64_t(n_kv_heads_) * head_dim_;
  // A block is dequantized whole (a kIntChannel token group is read from its first token), then
  // the rows asked for are copied out: [block_tokens, head_dim] f32.
  std::vector<float> tmp(size_t(block_tokens_) * head_dim_);
  int b = int(std::upper_bound(firsts_.begin(), firsts_.end(), first) - firsts_.begin()) - 1;
  for (int i = first; i < first + n; ++b) {
    const int j = i - firsts_[b], m = std::min(first + n - i, counts_[b] - j);
    for (int h = 0; h < n_kv_heads_; ++h) {
      KvBlock kv[2];
      int block_first = 0;
      block(b, h, &kv[0], &kv[1], &block_first);
      for (int side = 0; side < 2; ++side) {
        dequantize_block(kv[side], tmp.data());
        float* out = (side == 0 ? k : v) + int64_t(i - first) * kv_dim + int64_t(h) * head_dim_;
        for (int t = 0; t < m; ++t) std::copy_n(&tmp[size_t(j + t) * head_dim_], head_dim_, out + t * kv_dim);
      }
    }
    i += m;
  }
}

// Saved pages keep one canonical order, independent of the layout in memory: codes K of every
// head then V of every head; meta K scales, K zeros, V scales, V zeros (each of every head).
void BlockStore::save(BinaryWriter& out) const {
  out.put<int32_t>(block_tokens_);
  out.put<int32_t>(size_);
  out.put<int32_t>(n_blocks());
  for (int b = 0; b < n_blocks(); ++b) {
    out.put<int32_t>(counts_[b]);
    const uint8_t* codes = codes_.page(size_t(b));
    const uint8_t* meta = meta_.page(size_t(b));
    for (int side = 0; side < 2; ++side) {
      const int64_t bytes = code_bytes(side == 0 ? kf_ : vf_);
      for (int h = 0; h < n_kv_heads_; ++h) out.put_bytes(codes + code_offset(side, h), size_t(bytes));
    }
    for (int side = 0; side < 2; ++side) {
      const int64_t bytes = 2 * meta_entries(side == 0 ? kf_ : vf_);
      for (int zero = 0; zero < 2; ++zero) {
        for (int h = 0; h < n_kv_heads_; ++h) out.put_bytes(meta + 2 * meta_offset(side, zero, h), size_t(bytes));
      }
    }
  }
}

Status BlockStore::load(BinaryReader& in) {
  clear();
  int32_t page = 0, n = 0, blocks = 0;
  KVLAB_RETURN_IF_ERROR(in.get(&page));
  if (page != block_tokens_) {
    return data_loss(in.what() + ": blocks of " + std::to_string(page) + " tokens, this cache's are of " +
                     std::to_string(block_tokens_));
  }
  KVLAB_RETURN_IF_ERROR(in.get(&n));
  KVLAB_RETURN_IF_ERROR(in.get(&blocks));
  if (n < 0 || blocks < 0 || int64_t(blocks) * block_tokens_ < n || blocks > n) {
    return data_loss(in.what() + ": block store of " + std::to_string(n) + " tokens in " + std::to_string(blocks) +
                     " blocks");
  }
  for (int b = 0; b < blocks; ++b) {
    int32_t count = 0;
    KVLAB_RETURN_IF_ERROR(in.get(&count));
    if (count < 1 || count > block_tokens_) return data_loss(in.what() + ": block of " + std::to_string(count) + " tokens");
    uint8_t* codes = codes_.add_page();
    uint8_t* meta = meta_.add_page();
    firsts_.push_back(size_);
    counts_.push_back(count);
    size_ += count;
    for (int side = 0; side < 2; ++side) {
      const int64_t bytes = code_bytes(side == 0 ? kf_ : vf_);
      for (int h = 0; h < n_kv_heads_; ++h) {
        KVLAB_RETURN_IF_ERROR(in.get_bytes(codes + code_offset(side, h), size_t(bytes)));
      }
    }
    for (int side = 0; side < 2; ++side) {
      const int64_t bytes = 2 * meta_entries(side == 0 ? kf_ : vf_);
      for (int zero = 0; zero < 2; ++zero) {
        for (int h = 0; h < n_kv_heads_; ++h) {
          KVLAB_RETURN_IF_ERROR(in.get_bytes(meta + 2 * meta_offset(side, zero, h), size_t(bytes)));
        }
      }
    }
  }
  if (size_ != n) return data_loss(in.what() + ": block counts do not add up");
  return Status::Ok();
}

}  // namespace kvlab
