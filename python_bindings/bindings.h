// The Python module's contents, defined once and used twice: by the extension module `_kvlab`
// (module.cc) and by tests that embed Python in a C++ test binary (tests/python_policy_test.cc),
// where the module is defined in-process so that both sides share one policy registry.
#pragma once

#include <pybind11/pybind11.h>

namespace kvlab::python {

void define_module(pybind11::module_& m);

}  // namespace kvlab::python
