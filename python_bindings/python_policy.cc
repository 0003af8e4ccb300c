#include "python_bindings/python_policy.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cmath>
#include <memory>
#include <new>
#include <string>
#include <tuple>
#include <vector>

#include "kvcache/policies/batch_attention.h"
#include "kvcache/registry.h"
#include "kvcache/token_ring.h"
#include "python_bindings/convert.h"

namespace py = pybind11;

namespace kvlab::python {
namespace {

// What a Python policy instance is given. The ledger belongs to the cache: it is forgotten when
// the policy dies, so an array the Python side kept longer is freed without booking.
struct Context {
  PolicyContext ctx;
  MemoryLedger* ledger = nullptr;
};

// Bytes allocated for a Python policy: a header in front of the array's data, so that the
// capsule that frees it knows what to unbook. The header is booked too (it is allocated).
struct TrackedHeader {
  std::shared_ptr<Context> owner;
  MemoryKind kind;
  size_t bytes;  // header included
};
constexpr size_t kHeaderBytes = 64;
static_assert(sizeof(TrackedHeader) <= kHeaderBytes);

MemoryKind memory_kind(const std::string& name) {
  for (int k = 0; k < int(MemoryKind::kCount); ++k) {
    if (name == memory_kind_name(MemoryKind(k))) return MemoryKind(k);
  }
  std::string all;
  for (int k = 0; k < int(MemoryKind::kCount); ++k) all += std::string(k ? ", " : "") + memory_kind_name(MemoryKind(k));
  throw py::value_error("unknown memory kind '" + name + "' (known: " + all + ")");
}

py::array allocate(const std::shared_ptr<Context>& c, const std::string& kind_name, std::vector<py::ssize_t> shape,
                   py::object dtype_like) {
  const MemoryKind kind = memory_kind(kind_name);
  const py::dtype dtype = py::dtype::from_args(dtype_like);
  size_t count = 1;
  for (py::ssize_t n : shape) {
    if (n < 0) throw py::value_error("allocate: negative dimension");
    count *= size_t(n);
  }
  const size_t bytes = kHeaderBytes + count * size_t(dtype.itemsize());
  char* raw = static_cast<char*>(::operator new(bytes));
  new (raw) TrackedHeader{c, kind, bytes};
  if (c->ledger) c->ledger->add(kind, int64_t(bytes));
  py::capsule owner(raw, [](void* p) {
    auto* h = static_cast<TrackedHeader*>(p);
    if (h->owner->ledger) h->owner->ledger->sub(h->kind, int64_t(h->bytes));
    h->~TrackedHeader();
    ::operator delete(p);
  });
  py::array a(dtype, shape, raw + kHeaderBytes, owner);
  std::memset(a.mutable_data(), 0, count * size_t(dtype.itemsize()));
  return a;
}

// "ValueError: message" (no traceback) of the exception a Python call raised.
std::string python_error(const py::error_already_set& e) {
  return std::string(py::str(e.type().attr("__name__"))) + ": " + std::string(py::str(e.value()));
}

// A view of C++ memory for the duration of one call; read-only unless `writable`.
py::array view(const float* p, py::ssize_t rows, py::ssize_t cols, bool writable = false) {
  py::array_t<float> a({rows, cols}, const_cast<float*>(p), py::none());
  if (!writable) a.attr("setflags")(py::arg("write") = false);
  return a;
}

// A layer's (positions int32 [n], k float32 [n, kv_dim], v [n, kv_dim]) tuple from Python.
std::tuple<py::array, py::array, py::array> layer_arrays(py::handle t, const std::string& what, int kv_dim) {
  if (!py::isinstance<py::tuple>(t) || py::len(t) != 3) throw py::value_error(what + ": (positions, k, v) needed");
  const py::tuple x = py::reinterpret_borrow<py::tuple>(t);
  py::array pos = as_array<int32_t>(x[0], (what + " positions").c_str(), 1);
  py::array k = as_array<float>(x[1], (what + " k").c_str(), 2, {pos.shape(0), kv_dim});
  py::array v = as_array<float>(x[2], (what + " v").c_str(), 2, {pos.shape(0), kv_dim});
  return {pos, k, v};
}

// A Python policy's history of one sequence: post-RoPE keys and values [n, kv_dim] (f32) at
// `positions`, cut into blocks of `block` tokens.
class ArrayHistory final : public KvHistory {
 public:
  ArrayHistory(py::array pos, py::array k, py::array v, int head_dim, int block)
      : pos_(std::move(pos)), k_(std::move(k)), v_(std::move(v)), head_dim_(head_dim), block_(block) {}
  int n_blocks() const override { return int((pos_.shape(0) + block_ - 1) / block_); }
  HistoryBlock block(int b, int kv_head) const override {
    const int n = int(pos_.shape(0)), kv_dim = int(k_.shape(1));
    const int64_t first = int64_t(b) * block_;
    HistoryBlock h;
    for (auto [blk, arr] : {std::pair{&h.k, &k_}, std::pair{&h.v, &v_}}) {
      blk->format = KvFormat::kF32;
      blk->n = int(std::min<int64_t>(block_, n - first));
      blk->d = head_dim_;
      blk->data = static_cast<const uint8_t*>(arr->data()) + (first * kv_dim + int64_t(kv_head) * head_dim_) * 4;
      blk->stride = int64_t(kv_dim) * 4;
    }
    h.positions = static_cast<const int32_t*>(pos_.data()) + first;
    return h;
  }

 private:
  py::array pos_, k_, v_;
  int head_dim_, block_;
};

class PythonPolicy final : public Policy {
 public:
  PythonPolicy(std::shared_ptr<Context> c, py::object obj) : Policy(c->ctx), c_(std::move(c)), obj_(std::move(obj)) {}
  ~PythonPolicy() override {
    py::gil_scoped_acquire gil;
    c_->ledger = nullptr;
    obj_ = py::object();
  }

  void attend(int layer, const ForwardBatch& batch, const float* q, const float* k, const float* v,
              float* out) override {
    py::gil_scoped_acquire gil;
    const KvGeometry& g = ctx_.geometry;
    const py::ssize_t n = batch.n_rows();
    obj_.attr("attend")(layer, py::cast(ForwardBatch(batch)), view(q, n, g.q_dim()), view(k, n, g.kv_dim()), view(v, n, g.kv_dim()),
                        view(out, n, g.q_dim(), true));
  }
  void commit(const ForwardBatch& batch) override {
    py::gil_scoped_acquire gil;
    obj_.attr("commit")(py::cast(ForwardBatch(batch)));
  }
  int stored_tokens(int layer, int seq) const override {
    py::gil_scoped_acquire gil;
    return obj_.attr("stored_tokens")(layer, seq).cast<int>();
  }
  Status crop(int seq, int n_tokens) override {
    py::gil_scoped_acquire gil;
    try {
      obj_.attr("crop")(seq, n_tokens);
    } catch (py::error_already_set& e) {
      return invalid_argument(python_error(e));
    }
    return Status::Ok();
  }
  void reset(int seq) override {
    py::gil_scoped_acquire gil;
    obj_.attr("reset")(seq);
  }
  LayerContents read(int layer, int seq) const override {
    py::gil_scoped_acquire gil;
    const auto [pos, k, v] = layer_arrays(obj_.attr("read")(layer, seq), "Policy.read", ctx_.geometry.kv_dim());
    LayerContents out;
    const auto* pp = static_cast<const int32_t*>(pos.data());
    out.positions.assign(pp, pp + pos.shape(0));
    out.k.assign(static_cast<const float*>(k.data()), static_cast<const float*>(k.data()) + k.size());
    out.v.assign(static_cast<const float*>(v.data()), static_cast<const float*>(v.data()) + v.size());
    return out;
  }
  void save(BinaryWriter& out) const override {
    py::gil_scoped_acquire gil;
    const std::string bytes = obj_.attr("save")().cast<py::bytes>();
    out.put<uint32_t>(kVersion);
    out.put_array(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  }
  Status load(BinaryReader& in) override {
    KVLAB_RETURN_IF_ERROR(in.expect_version(kVersion, "python policy state"));
    std::vector<uint8_t> bytes;
    KVLAB_RETURN_IF_ERROR(in.get_array(&bytes));
    py::gil_scoped_acquire gil;
    try {
      obj_.attr("load")(py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
    } catch (py::error_already_set& e) {
      return data_loss(in.what() + ": the Python policy refused its state: " + python_error(e));
    }
    return Status::Ok();
  }
  void report(JsonObject& out) const override {
    py::gil_scoped_acquire gil;
    const py::object r = obj_.attr("report")();
    if (r.is_none()) return;
    const py::dict d = r;
    const py::object dumps = py::module_::import("json").attr("dumps");
    for (auto [k, v] : d) out.add(py::str(k), JsonValue::raw(dumps(v).cast<std::string>()));
  }

 private:
  static constexpr uint32_t kVersion = 1;
  std::shared_ptr<Context> c_;
  py::object obj_;
};

ParamInfo param_info(const std::string& key, py::handle spec) {
  // spec: a default value, or (default, doc)
  py::object def = py::reinterpret_borrow<py::object>(spec);
  ParamInfo p;
  p.key = key;
  if (py::isinstance<py::tuple>(spec)) {
    const py::tuple t = py::reinterpret_borrow<py::tuple>(spec);
    if (t.size() != 2) throw py::value_error("param " + key + ": a default value or (default, doc)");
    def = t[0];
    p.doc = py::str(t[1]);
  }
  if (py::isinstance<py::bool_>(def)) {
    p.kind = ParamInfo::Kind::kChoice;
    p.choices = {"off", "on"};
    p.default_value = def.cast<bool>() ? "on" : "off";
  } else if (py::isinstance<py::int_>(def)) {
    p.kind = ParamInfo::Kind::kInt;
    p.min = -2147483648.0, p.max = 2147483647.0;
    p.default_value = std::to_string(def.cast<int64_t>());
  } else if (py::isinstance<py::float_>(def)) {
    p.kind = ParamInfo::Kind::kFloat;
    p.min = -1e300, p.max = 1e300;
    p.default_value = py::str(def);
  } else if (py::isinstance<py::str>(def)) {
    p.kind = ParamInfo::Kind::kString;
    p.default_value = def.cast<std::string>();
  } else {
    throw py::type_error("param " + key + ": the default must be a bool, int, float or str");
  }
  return p;
}

py::dict params_dict(const std::vector<ParamInfo>& infos, const PolicyParams& params) {
  py::dict d;
  for (const ParamInfo& p : infos) {
    switch (p.kind) {
      case ParamInfo::Kind::kInt: d[p.key.c_str()] = params.get_int(p.key); break;
      case ParamInfo::Kind::kFloat: d[p.key.c_str()] = params.get_float(p.key); break;
      case ParamInfo::Kind::kChoice: d[p.key.c_str()] = params.get(p.key) == "on"; break;
      default: d[p.key.c_str()] = params.get(p.key); break;
    }
  }
  return d;
}

void register_python_policy(const std::string& name, py::object cls, const std::string& summary, py::dict params,
                            std::vector<std::string> test_specs, const std::string& off_spec,
                            double roundtrip_tolerance, bool crosses_layers) {
  PolicyInfo info;
  info.name = name;
  info.summary = summary.empty() ? "a policy written in Python (" + std::string(py::str(cls)) + ")" : summary;
  for (auto [k, v] : params) info.params.push_back(param_info(py::str(k), v));
  info.test_specs = test_specs.empty() ? std::vector<std::string>{name} : std::move(test_specs);
  info.off_spec = off_spec;
  info.roundtrip_tolerance = [roundtrip_tolerance](const PolicyParams&) { return roundtrip_tolerance; };
  info.crosses_layers = [crosses_layers](const PolicyParams&) { return crosses_layers; };
  // The class lives as long as the registry: the process.
  auto* held = new py::object(std::move(cls));
  const std::vector<ParamInfo> infos = info.params;
  info.make = [held, infos](const PolicyContext& ctx, const PolicyParams& p) -> StatusOr<std::unique_ptr<Policy>> {
    py::gil_scoped_acquire gil;
    auto c = std::make_shared<Context>(Context{ctx, ctx.ledger});
    try {
      py::object obj = (*held)(c, params_dict(infos, p));
      return std::unique_ptr<Policy>(std::make_unique<PythonPolicy>(std::move(c), std::move(obj)));
    } catch (py::error_already_set& e) {
      return invalid_argument(ctx.spec_text + ": " + python_error(e));
    }
  };
  check(register_policy(std::move(info)));
}

}  // namespace

void define_python_policies(py::module_& m) {
  py::class_<Context, std::shared_ptr<Context>> ctx_class(
      m, "PolicyContext", "What a Python policy is given: the shape, its layers, RoPE, tracked allocation, attention.");
  ctx_class.def_property_readonly("n_layers", [](const Context& c) { return c.ctx.geometry.n_layers; })
      .def_property_readonly("n_heads", [](const Context& c) { return c.ctx.geometry.n_heads; })
      .def_property_readonly("n_kv_heads", [](const Context& c) { return c.ctx.geometry.n_kv_heads; })
      .def_property_readonly("head_dim", [](const Context& c) { return c.ctx.geometry.head_dim; })
      .def_property_readonly("q_dim", [](const Context& c) { return c.ctx.geometry.q_dim(); })
      .def_property_readonly("kv_dim", [](const Context& c) { return c.ctx.geometry.kv_dim(); })
      .def_property_readonly("max_seq_len", [](const Context& c) { return c.ctx.geometry.max_seq_len; })
      .def_property_readonly("first_layer", [](const Context& c) { return c.ctx.first_layer; })
      .def_property_readonly("last_layer", [](const Context& c) { return c.ctx.last_layer; })
      .def_property_readonly("max_seqs", [](const Context& c) { return c.ctx.max_seqs; })
      .def_property_readonly("spec", [](const Context& c) { return c.ctx.spec_text; })
      .def("allocate", &allocate, py::arg("kind"), py::arg("shape"), py::arg("dtype") = py::object(py::dtype::of<float>()),
           "A zeroed array booked on the cache's ledger under `kind` (payload, meta, exact, index, side, "
           "derived) until it is freed.")
      .def("rotate", [](const Context& c, py::handle x, py::handle positions) {
             const KvGeometry& g = c.ctx.geometry;
             py::array pos = as_array<int32_t>(positions, "positions", 1);
             py::array a = as_array<float>(x, "x", 2, {pos.shape(0), -1}, true);
             if (a.shape(1) % g.head_dim != 0) throw py::value_error("rotate: width is not a multiple of head_dim");
             for (py::ssize_t i = 0; i < pos.shape(0); ++i) {
               const int32_t p = static_cast<const int32_t*>(pos.data())[i];
               if (p < 0 || p >= c.ctx.rope->max_positions()) throw py::value_error("rotate: position out of range");
             }
             c.ctx.rope->rotate(static_cast<float*>(a.mutable_data()), a.shape(0), int(a.shape(1) / g.head_dim),
                                static_cast<const int32_t*>(pos.data()));
           }, py::arg("x"), py::arg("positions"), "Applies RoPE in place: x float32 [n, heads * head_dim] at positions [n].");

  // ctx.attend: the attention engine every C++ policy uses, over histories held in Python.
  ctx_class.def_property_readonly("block_tokens", [](const Context& c) { return ring_page_tokens(c.ctx.geometry.max_seq_len); },
                             "The full cache's page size: histories cut into blocks of this many tokens attend "
                             "bit-identically to full:dtype=f32.")
      .def("attend", [](const Context& c, int layer, const ForwardBatch& b, py::handle q, py::handle k, py::handle v,
                        py::handle out, py::list histories, int block_tokens) {
             const KvGeometry& g = c.ctx.geometry;
             const py::ssize_t n = b.n_rows();
             py::array qa = as_array<float>(q, "q", 2, {n, g.q_dim()});
             py::array ka = as_array<float>(k, "k", 2, {n, g.kv_dim()});
             py::array va = as_array<float>(v, "v", 2, {n, g.kv_dim()});
             py::array oa = as_array<float>(out, "out", 2, {n, g.q_dim()}, true);
             if (histories.size() != b.seqs.size()) throw py::value_error("attend: one history per sequence of the batch");
             if (block_tokens < 1) throw py::value_error("attend: block_tokens must be >= 1");
             std::vector<ArrayHistory> held;
             held.reserve(histories.size());
             std::vector<const KvHistory*> ptrs;
             for (size_t i = 0; i < histories.size(); ++i) {
               if (histories[i].is_none()) {
                 ptrs.push_back(nullptr);
                 continue;
               }
               auto [pos, hk, hv] = layer_arrays(histories[i], "attend: history", g.kv_dim());
               held.emplace_back(pos, hk, hv, g.head_dim, block_tokens);
               ptrs.push_back(&held.back());
             }
             std::vector<float> k_rot = attend_batch(c.ctx, layer, b, static_cast<const float*>(qa.data()),
                                                     static_cast<const float*>(ka.data()),
                                                     static_cast<const float*>(va.data()),
                                                     static_cast<float*>(oa.mutable_data()), ptrs);
             return to_numpy(std::move(k_rot), {n, py::ssize_t(g.kv_dim())});
           }, py::arg("layer"), py::arg("batch"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
           py::arg("histories"), py::arg("block_tokens"),
           "The attention engine of the C++ policies: the batch's new tokens attend over histories[i] "
           "(None or (positions int32 [n], post-RoPE keys float32 [n, kv_dim], values [n, kv_dim]), one per "
           "batch.seqs entry) and themselves; writes out and returns the new keys rotated [rows, kv_dim].");

  m.def("_register_policy", &register_python_policy, py::arg("name"), py::arg("cls"), py::arg("summary"),
        py::arg("params"), py::arg("test_specs"), py::arg("off_spec"), py::arg("roundtrip_tolerance"),
        py::arg("crosses_layers"));
}

}  // namespace kvlab::python
