#include "kvcache/kv_cache.h"

#include <cstring>
#include <set>

#include "base/check.h"
#include "base/file.h"
#include "base/serialize.h"
#include "kvcache/registry.h"

namespace kvlab {
namespace {

constexpr char kMagic[8] = {'K', 'V', 'L', 'A', 'B', 'K', 'V', 'C'};
constexpr uint32_t kFileVersion = 2;  // 2: block stores record their block size (KIVI pages of several groups)

void put_geometry(BinaryWriter& w, const KvGeometry& g, const RopeTable& rope) {
  for (int v : {g.n_layers, g.n_heads, g.n_kv_heads, g.head_dim, g.max_seq_len}) w.put<int32_t>(v);
  w.put<float>(rope.theta());
  w.put<int32_t>(int32_t(rope.style()));
}

}  // namespace

KvCache::~KvCache() = default;

StatusOr<std::unique_ptr<KvCache>> KvCache::create(const KvGeometry& geometry, const RopeTable* rope,
                                                   std::string_view spec, int max_seqs) {
  if (max_seqs < 1) return invalid_argument("a cache needs at least one sequence slot (got " + std::to_string(max_seqs) + ")");
  KVLAB_CHECK(rope != nullptr && geometry.n_kv_heads > 0 && geometry.n_heads % geometry.n_kv_heads == 0);
  KVLAB_ASSIGN_OR_RETURN(auto layout, parse_cache_spec(spec, geometry.n_layers));
  std::unique_ptr<KvCache> cache(new KvCache());
  cache->geometry_ = geometry;
  cache->max_seqs_ = max_seqs;
  cache->layout_ = std::move(layout);
  cache->spec_ = cache_spec_text(cache->layout_);
  cache->lengths_.assign(max_seqs, 0);
  cache->layer_policy_.assign(geometry.n_layers, nullptr);
  for (const LayerAssignment& a : cache->layout_) {
    PolicyContext ctx;
    ctx.geometry = geometry;
    ctx.first_layer = a.first_layer;
    ctx.last_layer = a.last_layer;
    ctx.max_seqs = max_seqs;
    ctx.rope = rope;
    ctx.ledger = &cache->ledger_;
    ctx.observer = &cache->observer_;
    ctx.spec_text = a.spec.text;
    KVLAB_ASSIGN_OR_RETURN(auto policy, find_policy(a.spec.name)->make(ctx, a.spec.params));
    for (int l = a.first_layer; l <= a.last_layer; ++l) cache->layer_policy_[l] = policy.get();
    cache->policies_.push_back(std::move(policy));
  }
  return cache;
}

StatusOr<ForwardBatch> KvCache::plan(std::span<const int> seqs, std::span<const int> counts) const {
  KVLAB_CHECK(seqs.size() == counts.size());
  if (seqs.empty()) return invalid_argument("a forward needs at least one sequence");
  ForwardBatch b;
  std::set<int> seen;
  int row = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const int s = seqs[i];
    if (s < 0 || s >= max_seqs_) {
      return out_of_range("sequence slot " + std::to_string(s) + " is outside [0, " + std::to_string(max_seqs_) + ")");
    }
    if (!seen.insert(s).second) return invalid_argument("sequence slot " + std::to_string(s) + " appears twice in one forward");
    if (counts[i] < 1) return invalid_argument("sequence slot " + std::to_string(s) + " has no new tokens");
    if (int64_t(lengths_[s]) + counts[i] > geometry_.max_seq_len) {
      return out_of_range("sequence slot " + std::to_string(s) + " would reach " +
                          std::to_string(int64_t(lengths_[s]) + counts[i]) + " tokens; the model's context is " +
                          std::to_string(geometry_.max_seq_len));
    }
    b.seqs.push_back({s, lengths_[s], counts[i], row});
    for (int t = 0; t < counts[i]; ++t) b.positions.push_back(lengths_[s] + t);
    row += counts[i];
  }
  return b;
}

bool KvCache::wants_hidden(int layer) const {
  return policy_of(layer).wants_hidden(layer) || (hidden_observer_ && hidden_observer_->wants(layer));
}

void KvCache::observe_hidden(int layer, const ForwardBatch& batch, const float* h, int dim) {
  if (policy_of(layer).wants_hidden(layer)) policy_of(layer).observe_hidden(layer, batch, h, dim);
  if (hidden_observer_ && hidden_observer_->wants(layer)) hidden_observer_->observe(layer, batch, h, dim);
}

void KvCache::attend(int layer, const ForwardBatch& batch, const float* q, const float* k,
                     const float* v, float* out) {
  policy_of(layer).attend(layer, batch, q, k, v, out);
}

void KvCache::commit(const ForwardBatch& batch) {
  for (auto& p : policies_) p->commit(batch);
  for (const SeqSpan& sp : batch.seqs) lengths_[sp.seq] += sp.n_new;
}

int KvCache::stored_tokens(int layer, int seq) const { return policy_of(layer).stored_tokens(layer, seq); }

Status KvCache::crop(int seq, int n_tokens) {
  if (seq < 0 || seq >= max_seqs_) return out_of_range("sequence slot " + std::to_string(seq) + " does not exist");
  if (n_tokens < 0 || n_tokens > lengths_[seq]) {
    return out_of_range("cannot crop slot " + std::to_string(seq) + " of " + std::to_string(lengths_[seq]) +
                        " tokens to " + std::to_string(n_tokens));
  }
  for (auto& p : policies_) KVLAB_RETURN_IF_ERROR(p->crop(seq, n_tokens));
  lengths_[seq] = n_tokens;
  return Status::Ok();
}

void KvCache::reset(int seq) {
  KVLAB_CHECK(seq >= 0 && seq < max_seqs_);
  for (auto& p : policies_) p->reset(seq);
  lengths_[seq] = 0;
}

void KvCache::reset_all() {
  for (int s = 0; s < max_seqs_; ++s) reset(s);
}

LayerContents KvCache::read(int layer, int seq) const { return policy_of(layer).read(layer, seq); }

JsonObject KvCache::report() const {
  JsonObject out;
  for (size_t i = 0; i < policies_.size(); ++i) {
    JsonObject one;
    policies_[i]->report(one);
    if (one.empty()) continue;
    const LayerAssignment& a = layout_[i];
    out.add("L" + std::to_string(a.first_layer) + "-" + std::to_string(a.last_layer), one.value());
  }
  return out;
}

Status KvCache::save(const std::string& path) const {
  BinaryWriter w;
  w.put_bytes(kMagic, sizeof(kMagic));
  w.put<uint32_t>(kFileVersion);
  put_geometry(w, geometry_, *policies_.front()->context().rope);
  w.put<int32_t>(max_seqs_);
  w.put_string(spec_);
  w.put_array(lengths_.data(), lengths_.size());
  for (const auto& p : policies_) {
    BinaryWriter blob;
    p->save(blob);
    w.put_string(blob.bytes());
  }
  return write_file_atomic(path, w.bytes());
}

StatusOr<std::unique_ptr<KvCache>> KvCache::restore(const std::string& path, const KvGeometry& geometry,
                                                    const RopeTable* rope) {
  KVLAB_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, read_file_bytes(path));
  BinaryReader r(bytes.data(), bytes.size(), "cache file '" + path + "'");
  char magic[8];
  uint32_t version = 0;
  KVLAB_RETURN_IF_ERROR(r.get_bytes(magic, sizeof(magic)));
  if (std::memcmp(magic, kMagic, sizeof(kMagic)) != 0) return data_loss("'" + path + "' is not a kvlab cache file (bad magic)");
  KVLAB_RETURN_IF_ERROR(r.get(&version));
  if (version != kFileVersion) {
    return unsupported("'" + path + "' is cache file version " + std::to_string(version) +
                       "; this build reads version " + std::to_string(kFileVersion));
  }
  BinaryWriter expect;
  put_geometry(expect, geometry, *rope);
  std::string got(expect.bytes().size(), '\0');
  KVLAB_RETURN_IF_ERROR(r.get_bytes(got.data(), got.size()));
  if (got != expect.bytes()) return invalid_argument("'" + path + "' was saved for a model of another shape");
  int32_t max_seqs = 0;
  std::string spec;
  KVLAB_RETURN_IF_ERROR(r.get(&max_seqs));
  KVLAB_RETURN_IF_ERROR(r.get_string(&spec));
  if (max_seqs < 1 || max_seqs > (1 << 20)) return data_loss(r.what() + ": bad slot count");
  KVLAB_ASSIGN_OR_RETURN(auto cache, create(geometry, rope, spec, max_seqs));
  std::vector<int> lengths;
  KVLAB_RETURN_IF_ERROR(r.get_array(&lengths, max_seqs));
  for (int n : lengths) {
    if (n < 0 || n > geometry.max_seq_len) return data_loss(r.what() + ": sequence length out of range");
  }
  cache->lengths_ = lengths;
  for (auto& p : cache->policies_) {
    std::string blob;
    KVLAB_RETURN_IF_ERROR(r.get_string(&blob, bytes.size()));
    BinaryReader pr(blob.data(), blob.size(), r.what() + " (" + p->context().spec_text + ")");
    KVLAB_RETURN_IF_ERROR(p->load(pr));
    if (pr.remaining() != 0) return data_loss(pr.what() + ": " + std::to_string(pr.remaining()) + " unread bytes");
  }
  if (r.remaining() != 0) return data_loss(r.what() + ": trailing bytes");
  return cache;
}

}  // namespace kvlab
