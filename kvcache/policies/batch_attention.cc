#include "kvcache/policies/batch_attention.h"

#include <cmath>

namespace kvlab {

std::vector<float> attend_batch(const PolicyContext& ctx, int layer, const ForwardBatch& batch, const float* q,
                                const float* k, const float* v, float* out,
                                const std::vector<const KvHistory*>& histories) {
  const KvGeometry& geo = ctx.geometry;
  const int kv_dim = geo.kv_dim();
  std::vector<float> k_rot(k, k + size_t(batch.n_rows()) * kv_dim);
  ctx.rope->rotate(k_rot.data(), batch.n_rows(), geo.n_kv_heads, batch.positions.data());
  std::vector<SeqAttention> work;
  for (size_t i = 0; i < batch.seqs.size(); ++i) {
    const SeqSpan& sp = batch.seqs[i];
    SeqAttention sa;
    sa.seq = sp.seq;
    sa.n_new = sp.n_new;
    sa.positions = batch.positions.data() + sp.row;
    sa.q = q + size_t(sp.row) * geo.q_dim();
    sa.k_new = k_rot.data() + size_t(sp.row) * kv_dim;
    sa.v_new = v + size_t(sp.row) * kv_dim;
    sa.out = out + size_t(sp.row) * geo.q_dim();
    sa.history = histories[i] && histories[i]->n_blocks() > 0 ? histories[i] : nullptr;
    work.push_back(sa);
  }
  const AttentionShape shape{geo.n_heads, geo.n_kv_heads, geo.head_dim, 1.0f / std::sqrt(float(geo.head_dim))};
  attend(shape, work, layer, ctx.observer ? *ctx.observer : nullptr);
  return k_rot;
}

}  // namespace kvlab
