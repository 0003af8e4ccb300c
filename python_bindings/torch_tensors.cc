#include "python_bindings/torch_tensors.h"

#include <ATen/DLConvertor.h>

#include "libtorch/kv_torch.h"
#include "python_bindings/convert.h"

namespace py = pybind11;

namespace kvlab::python {
namespace {

// The tensor behind `x` by DLPack: the same memory, owned through the consumed capsule.
at::Tensor from_torch(py::handle x, const char* what) {
  py::object cap = x.attr("__dlpack__")();
  auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
  if (!m) throw py::type_error(std::string(what) + ": no DLPack tensor");
  PyCapsule_SetName(cap.ptr(), "used_dltensor");  // the protocol: a consumed capsule is renamed
  return at::fromDLPack(m);
}

py::object to_torch(const at::Tensor& t) {
  py::capsule cap(at::toDLPack(t), "dltensor", [](PyObject* c) {
    // Not consumed (renamed) by the receiver: the capsule still owns the tensor.
    if (PyCapsule_IsValid(c, "dltensor")) {
      auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(c, "dltensor"));
      m->deleter(m);
    }
  });
  return py::module_::import("torch").attr("from_dlpack")(cap);
}

}  // namespace

py::object attend_torch(KvCache& cache, int layer, const ForwardBatch& batch, py::handle q, py::handle k,
                        py::handle v, py::handle out) {
  const at::Tensor qt = from_torch(q, "q"), kt = from_torch(k, "k"), vt = from_torch(v, "v");
  std::optional<at::Tensor> ot;
  if (!out.is_none()) ot = from_torch(out, "out");
  StatusOr<at::Tensor> r = [&] {
    py::gil_scoped_release release;
    return aten::attend(cache, layer, batch, qt, kt, vt, ot);
  }();
  const at::Tensor& result = unwrap_ref(r);
  return out.is_none() ? to_torch(result) : py::reinterpret_borrow<py::object>(out);
}

py::tuple read_torch(const KvCache& cache, int layer, int slot) {
  auto r = aten::read(cache, layer, slot);
  const auto& [pos, k, v] = unwrap_ref(r);
  return py::make_tuple(to_torch(pos), to_torch(k), to_torch(v));
}

}  // namespace kvlab::python
