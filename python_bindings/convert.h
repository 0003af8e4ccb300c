// Conversions between the C++ API and Python: Status to exceptions, arrays in (no copy) and out
// (no copy).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <initializer_list>
#include <string>
#include <vector>

#include "base/status.h"
#include "kvcache/kv_cache.h"

namespace kvlab::python {

namespace py = pybind11;

[[noreturn]] inline void raise(const Status& s) {
  switch (s.code()) {
    case ErrorCode::kNotFound:
      PyErr_SetString(PyExc_FileNotFoundError, s.message().c_str());
      throw py::error_already_set();
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kDataLoss:
    case ErrorCode::kOutOfRange:
      throw py::value_error(s.message());
    default:
      throw std::runtime_error(s.to_string());
  }
}

inline void check(const Status& s) {
  if (!s.ok()) raise(s);
}

template <typename T>
T unwrap(StatusOr<T>&& r) {
  if (!r.ok()) raise(r.status());
  return std::move(r).value();
}

template <typename T>
const T& unwrap_ref(const StatusOr<T>& r) {
  if (!r.ok()) raise(r.status());
  return *r;
}

// `obj` as an array of T without a copy: a numpy array, or an object numpy views in place (a CPU
// torch tensor). Plain lists and tuples are converted. ndim < 0: any. shape: -1 entries match
// anything. writable: the caller writes into it.
template <typename T>
py::array as_array(py::handle obj, const char* what, int ndim, std::initializer_list<py::ssize_t> shape = {},
                   bool writable = false) {
  const py::dtype want = py::dtype::of<T>();
  py::array a;
  if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj)) {
    if (writable) throw py::type_error(std::string(what) + ": needs an array to write into, not a list");
    a = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(obj);
    if (!a) throw py::type_error(std::string(what) + ": a list that is not a rectangular array of numbers");
  } else {
    a = py::array::ensure(obj);
    if (!a) {
      PyErr_Clear();
      throw py::type_error(std::string(what) + ": expected a numpy array or a CPU tensor, got " +
                           std::string(py::str(py::type::of(obj).attr("__name__"))));
    }
    if (!a.dtype().is(want)) {
      throw py::type_error(std::string(what) + ": expected dtype " + std::string(py::str(want)) + ", got " +
                           std::string(py::str(a.dtype())) + " (convert it explicitly; kvlab does not copy)");
    }
    if (!(a.flags() & py::array::c_style)) {
      throw py::value_error(std::string(what) + ": must be C-contiguous (np.ascontiguousarray / tensor.contiguous())");
    }
  }
  if (ndim >= 0 && a.ndim() != ndim) {
    throw py::value_error(std::string(what) + ": expected " + std::to_string(ndim) + " dimensions, got " +
                          std::to_string(a.ndim()));
  }
  int i = 0;
  for (py::ssize_t want_n : shape) {
    if (want_n >= 0 && a.shape(i) != want_n) {
      throw py::value_error(std::string(what) + ": dimension " + std::to_string(i) + " is " +
                            std::to_string(a.shape(i)) + ", expected " + std::to_string(want_n));
    }
    ++i;
  }
  if (writable && !a.writeable()) throw py::value_error(std::string(what) + ": is read-only");
  return a;
}

// A vector's memory handed to numpy: no copy; the array owns it through a capsule.
// shape: -1 in the first entry means the vector's length.
template <typename T, typename A>
py::array_t<T> to_numpy(std::vector<T, A>&& v, std::vector<py::ssize_t> shape) {
  if (shape.size() == 1 && shape[0] < 0) shape[0] = py::ssize_t(v.size());
  auto* owned = new std::vector<T, A>(std::move(v));
  py::capsule owner(owned, [](void* p) { delete static_cast<std::vector<T, A>*>(p); });
  return py::array_t<T>(shape, owned->data(), owner);
}

inline void check_slot(const KvCache& c, int slot) {
  if (slot < 0 || slot >= c.max_seqs()) {
    throw py::value_error("slot " + std::to_string(slot) + " out of range (the cache has " +
                          std::to_string(c.max_seqs()) + " slots)");
  }
}

inline void check_layer_slot(const KvCache& c, int layer, int slot) {
  check_slot(c, slot);
  if (layer < 0 || layer >= c.geometry().n_layers) {
    throw py::value_error("layer " + std::to_string(layer) + " out of range (the model has " +
                          std::to_string(c.geometry().n_layers) + " layers)");
  }
}

}  // namespace kvlab::python
