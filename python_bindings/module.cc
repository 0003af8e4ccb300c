// The extension module kvlab._kvlab; the Python package python/kvlab wraps it.
#include "python_bindings/bindings.h"

PYBIND11_MODULE(_kvlab, m) { kvlab::python::define_module(m); }
