#include "libtorch/kv_torch.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace kvlab::aten {
namespace {

// `t` as float32 [rows, width] with contiguous rows: itself, or one converted copy.
StatusOr<at::Tensor> rows_f32(const at::Tensor& t, const char* what, int64_t rows, int64_t width) {
  if (!t.defined()) return invalid_argument(std::string(what) + ": undefined tensor");
  if (!t.device().is_cpu()) return invalid_argument(std::string(what) + ": tensor on " + t.device().str() + ", CPU needed");
  const auto type = t.scalar_type();
  if (type != at::kFloat && type != at::kHalf && type != at::kBFloat16) {
    return invalid_argument(std::string(what) + ": dtype " + std::string(c10::toString(type)) +
                            " (float32, float16 or bfloat16 needed)");
  }
  if (t.dim() != 2 || t.size(0) != rows || t.size(1) != width) {
    return invalid_argument(std::string(what) + ": shape " + c10::str(t.sizes()) + ", expected [" +
                            std::to_string(rows) + ", " + std::to_string(width) + "]");
  }
  return read_in_place(t) ? t : t.to(at::kFloat).contiguous();
}

template <typename T, typename A>
at::Tensor owning_tensor(std::vector<T, A>&& v, std::vector<int64_t> shape, at::ScalarType type) {
  auto* owned = new std::vector<T, A>(std::move(v));
  return at::from_blob(owned->data(), shape, [owned](void*) { delete owned; }, at::TensorOptions().dtype(type));
}

}  // namespace

bool read_in_place(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat && t.device().is_cpu() && t.is_contiguous();
}

StatusOr<at::Tensor> attend(KvCache& cache, int layer, const ForwardBatch& batch, const at::Tensor& q,
                            const at::Tensor& k, const at::Tensor& v, std::optional<at::Tensor> out) {
  const KvGeometry& g = cache.geometry();
  if (layer < 0 || layer >= g.n_layers) return out_of_range("layer " + std::to_string(layer) + " out of range");
  const int64_t rows = batch.n_rows();
  KVLAB_ASSIGN_OR_RETURN(at::Tensor qf, rows_f32(q, "q", rows, g.q_dim()));
  KVLAB_ASSIGN_OR_RETURN(at::Tensor kf, rows_f32(k, "k", rows, g.kv_dim()));
  KVLAB_ASSIGN_OR_RETURN(at::Tensor vf, rows_f32(v, "v", rows, g.kv_dim()));
  at::Tensor o = out ? *out : at::empty({rows, int64_t(g.q_dim())}, at::kFloat);
  if (!read_in_place(o) || o.dim() != 2 || o.size(0) != rows || o.size(1) != g.q_dim()) {
    return invalid_argument("out: a float32 contiguous CPU tensor [" + std::to_string(rows) + ", " +
                            std::to_string(g.q_dim()) + "] is needed, got " + c10::str(o.sizes()));
  }
  cache.attend(layer, batch, qf.const_data_ptr<float>(), kf.const_data_ptr<float>(), vf.const_data_ptr<float>(),
               o.mutable_data_ptr<float>());
  return o;
}

StatusOr<std::tuple<at::Tensor, at::Tensor, at::Tensor>> read(const KvCache& cache, int layer, int seq) {
  const KvGeometry& g = cache.geometry();
  if (layer < 0 || layer >= g.n_layers) return out_of_range("layer " + std::to_string(layer) + " out of range");
  if (seq < 0 || seq >= cache.max_seqs()) return out_of_range("slot " + std::to_string(seq) + " out of range");
  LayerContents c = cache.read(layer, seq);
  const int64_t n = int64_t(c.positions.size());
  return std::make_tuple(owning_tensor(std::move(c.positions), {n}, at::kInt),
                         owning_tensor(std::move(c.k), {n, int64_t(g.kv_dim())}, at::kFloat),
                         owning_tensor(std::move(c.v), {n, int64_t(g.kv_dim())}, at::kFloat));
}

}  // namespace kvlab::aten
