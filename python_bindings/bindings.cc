// The Python module: a conversion layer over the C++ API, no logic of its own.
//
// Arrays. Inputs are taken where they lie: a numpy array, or anything numpy views without a copy
// (a CPU torch tensor, through its __array__), of exactly the dtype asked for and C-contiguous;
// anything else is a TypeError / ValueError naming the argument. Plain Python lists are converted
// (a copy by nature). Results the C++ side returns by value (logits, read()) reach numpy without
// a copy: the vector moves into a capsule that owns the array's memory.
//
// Errors. A Status becomes ValueError (bad argument, corrupt file, out of range),
// FileNotFoundError or RuntimeError with the C++ message.
//
// Threads. Long calls (forward, eval, calibrate) release the GIL; a policy written in Python
// takes it back for each of its methods (python_policy.cc).
#include "python_bindings/bindings.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "base/progress.h"
#include "eval/calibrate.h"
#include "eval/decode_eval.h"
#include "kvcache/kv_cache.h"
#include "kvcache/registry.h"
#include "model/model.h"
#include "python_bindings/convert.h"
#include "python_bindings/python_policy.h"
#include "python_bindings/torch_tensors.h"

namespace py = pybind11;

namespace kvlab::python {
namespace {

// A cache and the model it was made for: the cache reads the model's RoPE table.
struct Cache {
  std::shared_ptr<const Model> model;
  std::unique_ptr<KvCache> cache;
};

std::shared_ptr<Model> load_model(const std::string& name_or_path, const std::string& tokenizer) {
  StatusOr<std::unique_ptr<Model>> m = [&] {
    py::gil_scoped_release release;
    return Model::load(name_or_path, tokenizer);
  }();
  return std::shared_ptr<Model>(unwrap(std::move(m)).release());
}

py::dict config_dict(const ModelConfig& c) {
  py::dict d;
  d["format"] = c.format;
  d["name"] = c.name;
  d["dim"] = c.dim;
  d["hidden_dim"] = c.hidden_dim;
  d["n_layers"] = c.n_layers;
  d["n_heads"] = c.n_heads;
  d["n_kv_heads"] = c.n_kv_heads;
  d["head_dim"] = c.head_dim;
  d["vocab_size"] = c.vocab_size;
  d["max_seq_len"] = c.max_seq_len;
  d["rope_theta"] = c.rope_theta;
  d["rope_style"] = c.rope_style == RopeStyle::kInterleaved ? "interleaved" : "half";
  d["norm_eps"] = c.norm_eps;
  d["tied_embeddings"] = c.tied_embeddings;
  return d;
}

// tokens_per_slot: a sequence whose item i holds slot i's new tokens (None or empty: none), or a
// dict {slot: tokens}. Each item: a 1-D int32 array / tensor (not copied) or a list of ints.
py::array forward(const Model& model, Cache& c, py::handle tokens_per_slot, const std::string& logits) {
  LogitsMode mode = LogitsMode::kLast;
  if (logits == "all") {
    mode = LogitsMode::kAll;
  } else if (logits == "none") {
    mode = LogitsMode::kNone;
  } else if (logits != "last") {
    throw py::value_error("logits must be 'last', 'all' or 'none' (got '" + logits + "')");
  }
  if (c.model.get() != &model) throw py::value_error("forward: the cache was made for another model");
  std::vector<std::pair<int, py::handle>> items;
  if (py::isinstance<py::dict>(tokens_per_slot)) {
    for (auto [k, v] : py::reinterpret_borrow<py::dict>(tokens_per_slot)) items.emplace_back(k.cast<int>(), v);
  } else if (py::isinstance<py::sequence>(tokens_per_slot) && !py::isinstance<py::array>(tokens_per_slot)) {
    const auto seq = py::reinterpret_borrow<py::sequence>(tokens_per_slot);
    for (size_t i = 0; i < seq.size(); ++i) items.emplace_back(int(i), seq[i]);
  } else {
    throw py::type_error("tokens_per_slot: a list with one token array per slot, or a dict {slot: tokens}");
  }
  std::vector<py::array> keep;  // holds converted lists alive during the call
  std::vector<SeqInput> inputs;
  for (auto& [slot, obj] : items) {
    if (obj.is_none()) continue;
    const std::string what = "tokens of slot " + std::to_string(slot);
    py::array a = as_array<int32_t>(obj, what.c_str(), 1);
    if (a.shape(0) == 0) continue;
    inputs.push_back({slot, std::span<const int32_t>(static_cast<const int32_t*>(a.data()), size_t(a.shape(0)))});
    keep.push_back(std::move(a));
  }
  if (inputs.empty()) throw py::value_error("forward: no tokens given");
  std::vector<float> out;
  Status s;
  {
    py::gil_scoped_release release;
    s = model.forward(*c.cache, inputs, mode, &out);
  }
  check(s);
  if (mode == LogitsMode::kNone) return py::array_t<float>(std::vector<py::ssize_t>{0, model.config().vocab_size});
  const py::ssize_t vocab = model.config().vocab_size;
  return to_numpy(std::move(out), {py::ssize_t(out.size()) / vocab, vocab});
}

py::dict memory_dict(const MemoryReport& r) {
  py::dict d;
  for (int k = 0; k < int(MemoryKind::kCount); ++k) d[memory_kind_name(MemoryKind(k))] = r.bytes[size_t(k)];
  d["kv_bytes"] = r.kv_bytes();
  d["total"] = r.total();
  d["peak_kv_bytes"] = r.peak_kv_bytes;
  return d;
}

py::object parse_json(const std::string& text) { return py::module_::import("json").attr("loads")(text); }

py::list policies() {
  py::list out;
  for (const PolicyInfo& p : registered_policies()) {
    py::list params;
    for (const ParamInfo& q : p.params) {
      py::dict d;
      d["key"] = q.key;
      d["default"] = q.default_value;
      d["values"] = param_values(q);
      d["doc"] = q.doc;
      params.append(d);
    }
    py::dict d;
    d["name"] = p.name;
    d["summary"] = p.summary;
    d["params"] = params;
    d["test_specs"] = p.test_specs;
    d["off_spec"] = p.off_spec;
    out.append(d);
  }
  return out;
}

py::list eval(const Model& model, const std::string& model_label, const std::string& text,
              const std::vector<std::string>& policies, int context, int prefill, int windows,
              const std::string& task, int passage, int distance, bool quiet) {
  if (task != "text" && task != "retrieval") throw py::value_error("task must be 'text' or 'retrieval' (got '" + task + "')");
  DecodeEvalConfig cfg;
  cfg.policies = policies;
  cfg.context = context;
  cfg.prefill = prefill;
  cfg.windows = windows;
  cfg.retrieval = task == "retrieval";
  cfg.passage = passage;
  cfg.distance = distance;
  StatusOr<DecodeEvalResult> r = [&] {
    py::gil_scoped_release release;
    Progress progress(quiet);
    return run_decode_eval(model, model_label, text, cfg, progress);
  }();
  const DecodeEvalResult& res = unwrap_ref(r);
  py::list out;
  for (const PolicyRun& run : res.runs) out.append(parse_json(res.to_json(run).dump()));
  return out;
}

py::dict calibrate(const Model& model, const std::string& text, const std::vector<std::string>& policies,
                   const std::vector<std::string>& outputs, int64_t tokens, int window, int horizon, bool quiet) {
  CalibrateConfig cfg;
  cfg.text_path = text;
  cfg.policies = policies;
  cfg.outputs = outputs;
  const bool deciders = calibrates_deciders(policies);
  cfg.tokens = tokens > 0 ? tokens : default_calibration_tokens(deciders);
  cfg.window = window;
  cfg.horizon = horizon;
  py::dict d;
  // The figures both calibrations report; the table is what `kvlab calibrate` prints.
  const auto fill = [&](const auto& res, std::string table) {
    d["tokens"] = res.tokens;
    d["valid_tokens"] = res.valid_tokens;
    d["windows"] = res.windows;
    d["capture_seconds"] = res.capture_seconds;
    d["fit_seconds"] = res.fit_seconds;
    d["table"] = table;
  };
  if (deciders) {
    StatusOr<DeciderCalibrationResult> r = [&] {
      py::gil_scoped_release release;
      Progress progress(quiet);
      return run_decider_calibration(model, cfg, progress);
    }();
    fill(unwrap_ref(r), format_decider_calibration(*r, cfg));
  } else {
    StatusOr<CalibrateResult> r = [&] {
      py::gil_scoped_release release;
      Progress progress(quiet);
      return run_calibration(model, cfg, progress);
    }();
    fill(unwrap_ref(r), format_calibration(*r, cfg));
  }
  d["outputs"] = outputs;
  return d;
}

}  // namespace

void define_module(py::module_& m) {
  m.doc() = "kvlab: KV-cache compression policies in a reference Llama decoder (C++ core)";

  py::class_<Model, std::shared_ptr<Model>>(m, "Model", py::dynamic_attr())
      .def_property_readonly("config", [](const Model& x) { return config_dict(x.config()); })
      .def_property_readonly("path", &Model::path)
      .def_property_readonly("fingerprint", &Model::fingerprint)
      .def("encode", [](const Model& x, std::string_view text) {
             return to_numpy(x.tokenizer().encode(text), {-1});
           }, py::arg("text"), "Text to token ids (int32), without BOS.")
      .def("decode", [](const Model& x, py::handle ids) {
             py::array a = as_array<int32_t>(ids, "ids", 1);
             const std::string s = x.tokenizer().decode({static_cast<const int32_t*>(a.data()), size_t(a.shape(0))});
             return py::bytes(s).attr("decode")("utf-8", "replace");
           }, py::arg("ids"), "Token ids to text (invalid UTF-8 replaced).")
      .def_property_readonly("bos_id", [](const Model& x) { return x.tokenizer().bos_id(); })
      .def_property_readonly("eos_id", [](const Model& x) { return x.tokenizer().eos_id(); })
      .def("forward", &forward, py::arg("cache"), py::arg("tokens_per_slot"), py::arg("logits") = "last",
           "Appends each slot's new tokens; returns float32 logits [inputs, vocab] ('last'), [tokens, vocab] "
           "('all', inputs stacked in order) or an empty array ('none').");

  m.def("load_model", &load_model, py::arg("name_or_path"), py::arg("tokenizer") = "",
        "Loads a GGUF or llama2.c model (or an alias: stories260k, smollm2-135m).");
  m.def("policies", &policies, "The registry: every policy, its parameters and their documentation.");

  py::class_<ForwardBatch>(m, "Batch")
      .def_property_readonly("seqs", [](const ForwardBatch& b) {
        py::list l;
        for (const SeqSpan& s : b.seqs) l.append(py::make_tuple(s.seq, s.start_pos, s.n_new, s.row, s.store));
        return l;
      }, "(slot, start_pos, n_new, row, store) per sequence, rows in this order")
      .def_property_readonly("positions", [](const ForwardBatch& b) {
        return py::array_t<int32_t>({py::ssize_t(b.positions.size())}, b.positions.data());
      }, "int32 [n_rows]: each row's position (a copy)")
      .def_property_readonly("n_rows", &ForwardBatch::n_rows);

  py::class_<Cache>(m, "Cache")
      .def(py::init([](std::shared_ptr<Model> model, const std::string& spec, int slots) {
             Cache c{model, unwrap(model->make_cache(spec, slots))};
             return c;
           }), py::arg("model"), py::arg("spec") = std::string(kDefaultPolicySpec), py::arg("slots") = 1)
      .def_static("restore", [](std::shared_ptr<Model> model, const std::string& path) {
             return Cache{model, unwrap(KvCache::restore(path, model->cache_geometry(), &model->rope()))};
           }, py::arg("model"), py::arg("path"), "Reads a file written by save() for this model.")
      .def_property_readonly("spec", [](const Cache& c) { return c.cache->spec(); })
      .def_property_readonly("slots", [](const Cache& c) { return c.cache->max_seqs(); })
      .def("seq_length", [](const Cache& c, int slot) { check_slot(*c.cache, slot); return c.cache->seq_length(slot); })
      .def("stored_tokens", [](const Cache& c, int layer, int slot) {
             check_layer_slot(*c.cache, layer, slot);
             return c.cache->stored_tokens(layer, slot);
           })
      .def("crop", [](Cache& c, int slot, int n) { check_slot(*c.cache, slot); check(c.cache->crop(slot, n)); })
      .def("reset", [](Cache& c, int slot) { check_slot(*c.cache, slot); c.cache->reset(slot); })
      .def("reset_all", [](Cache& c) { c.cache->reset_all(); })
      .def("read", [](const Cache& c, int layer, int slot) {
             check_layer_slot(*c.cache, layer, slot);
             LayerContents x = c.cache->read(layer, slot);
             const py::ssize_t n = py::ssize_t(x.positions.size()), kv = c.cache->geometry().kv_dim();
             return py::make_tuple(to_numpy(std::move(x.positions), {n}), to_numpy(std::move(x.k), {n, kv}),
                                   to_numpy(std::move(x.v), {n, kv}));
           }, py::arg("layer"), py::arg("slot"),
           "(positions int32 [n], post-RoPE keys float32 [n, kv_dim], values [n, kv_dim]) as attention sees them")
#ifdef KVLAB_WITH_TORCH
      .def("read_torch", [](const Cache& c, int layer, int slot) {
             check_layer_slot(*c.cache, layer, slot);
             return read_torch(*c.cache, layer, slot);
           }, py::arg("layer"), py::arg("slot"), "read() as torch tensors (no copy of the result)")
#endif
      .def("bytes", [](const Cache& c) { return memory_dict(c.cache->memory()); }, "The ledger: bytes by kind.")
      .def("report", [](const Cache& c) { return parse_json(c.cache->report().dump()); })
      .def("save", [](const Cache& c, const std::string& path) { check(c.cache->save(path)); }, py::arg("path"))
      // The decoder's per-layer protocol, for engines written in Python (kvlab.hf): plan, attend
      // each layer in order, commit.
      .def("plan", [](const Cache& c, std::vector<int> slots, std::vector<int> counts) {
             if (slots.size() != counts.size()) throw py::value_error("plan: slots and counts differ in length");
             return unwrap(c.cache->plan(slots, counts));
           }, py::arg("slots"), py::arg("counts"))
      .def("attend", [](Cache& c, int layer, const ForwardBatch& b, py::handle q, py::handle k, py::handle v,
                        py::handle out) -> py::object {
             const KvGeometry& g = c.cache->geometry();
             if (layer < 0 || layer >= g.n_layers) throw py::value_error("attend: layer out of range");
#ifdef KVLAB_WITH_TORCH
             if (is_torch_tensor(q)) return attend_torch(*c.cache, layer, b, q, k, v, out);
#endif
             py::array qa = as_array<float>(q, "q", 2, {b.n_rows(), g.q_dim()});
             py::array ka = as_array<float>(k, "k", 2, {b.n_rows(), g.kv_dim()});
             py::array va = as_array<float>(v, "v", 2, {b.n_rows(), g.kv_dim()});
             py::array oa = out.is_none() ? py::array_t<float>({py::ssize_t(b.n_rows()), py::ssize_t(g.q_dim())})
                                          : as_array<float>(out, "out", 2, {b.n_rows(), g.q_dim()}, true);
             {
               py::gil_scoped_release release;
               c.cache->attend(layer, b, static_cast<const float*>(qa.data()), static_cast<const float*>(ka.data()),
                               static_cast<const float*>(va.data()), static_cast<float*>(oa.mutable_data()));
             }
             return oa;
           }, py::arg("layer"), py::arg("batch"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out") = py::none(),
           "q post-RoPE float32 [rows, q_dim], k PRE-RoPE and v [rows, kv_dim]; writes and returns out [rows, q_dim]. "
           "Built with KVLAB_TORCH: torch tensors of any float dtype and strides, and a torch tensor back.")
      .def("commit", [](Cache& c, const ForwardBatch& b) {
             py::gil_scoped_release release;
             c.cache->commit(b);
           }, py::arg("batch"));

  m.def("eval", &eval, py::arg("model"), py::arg("model_label"), py::arg("text"), py::arg("policies"),
        py::arg("context") = -1, py::arg("prefill") = -1, py::arg("windows") = 8, py::arg("task") = "text",
        py::arg("passage") = 64, py::arg("distance") = -1, py::arg("quiet") = false);
  m.def("calibrate", &calibrate, py::arg("model"), py::arg("text"), py::arg("policies"), py::arg("outputs"),
        py::arg("tokens") = -1, py::arg("window") = 512, py::arg("horizon") = 32, py::arg("quiet") = false);

  // The address a conversion yields, for tests that check that nothing was copied.
  m.def("_float_address", [](py::handle x) { return reinterpret_cast<uintptr_t>(as_array<float>(x, "x", -1).data()); });
  m.def("_int32_address", [](py::handle x) { return reinterpret_cast<uintptr_t>(as_array<int32_t>(x, "x", -1).data()); });

#ifdef KVLAB_WITH_TORCH
  m.attr("WITH_TORCH") = true;
#else
  m.attr("WITH_TORCH") = false;
#endif
  define_python_policies(m);
}

}  // namespace kvlab::python

namespace kvlab::python {

bool is_torch_tensor(py::handle x) {
  const py::handle type = py::type::handle_of(x);
  return py::hasattr(type, "__module__") && py::str(type.attr("__module__")).cast<std::string>().rfind("torch", 0) == 0 &&
         py::hasattr(x, "__dlpack__");
}

}  // namespace kvlab::python
