// main() of python_conformance_test: the conformance suite (conformance_test.cc, unchanged) run
// over a policy written in Python. Python runs embedded; the kvlab module is defined in this
// process (one policy registry for both sides) and examples/python/knorm_policy.py registers
// `knorm` before the suite lists its cases. Without --gtest_filter only the knorm cases and
// the registry checks run (the C++ policies have their own conformance_test).
#include <gtest/gtest.h>
#include <pybind11/embed.h>

#include <cstdio>
#include <cstring>

#include "python_bindings/bindings.h"

namespace py = pybind11;

PYBIND11_EMBEDDED_MODULE(_kvlab_in_process, m) { kvlab::python::define_module(m); }

int main(int argc, char** argv) {
  // As the configured Python: a virtual environment's pyvenv.cfg beside that path puts its
  // site-packages on sys.path, which a plain embedded interpreter (prefix /usr) would not see.
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, KVLAB_PYTHON_EXECUTABLE);
  if (PyStatus_Exception(status)) {
    std::fprintf(stderr, "python_conformance_test: cannot set the program name %s\n", KVLAB_PYTHON_EXECUTABLE);
    return 2;
  }
  py::scoped_interpreter python(&config);
  try {
    py::module_ sys = py::module_::import("sys");
    sys.attr("modules")["kvlab._kvlab"] = py::module_::import("_kvlab_in_process");
    py::list path = sys.attr("path");
    path.insert(0, KVLAB_SOURCE_DIR "/python");
    path.insert(0, KVLAB_SOURCE_DIR "/examples/python");
    py::module_::import("knorm_policy");
  } catch (const py::error_already_set& e) {
    std::fprintf(stderr, "python_conformance_test: %s\n", e.what());
    return 2;
  }
  bool filtered = false;
  for (int i = 1; i < argc; ++i) filtered |= std::strncmp(argv[i], "--gtest_filter", 14) == 0;
  ::testing::InitGoogleTest(&argc, argv);
  if (!filtered) GTEST_FLAG_SET(filter, "*knorm*:RegistryTest.*");
  return RUN_ALL_TESTS();
}
