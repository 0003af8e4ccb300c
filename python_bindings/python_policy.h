// Policies written in Python: kvlab.register_policy(name, cls, ...) adds a registry entry whose
// instances forward every Policy method (kvcache/policy.h) to an object of the Python class
// `cls` (a subclass of kvlab.Policy, python/kvlab/__init__.py). Once registered, the name is
// valid in any spec: the C++ decoder, kvlab.eval and the conformance suite run it like any other.
#pragma once

#include <pybind11/pybind11.h>

namespace kvlab::python {

// kvlab.register_policy, kvlab.PolicyContext (what a Python policy is given: geometry, its
// layers, RoPE, tracked allocation, reference attention).
void define_python_policies(pybind11::module_& m);

}  // namespace kvlab::python
