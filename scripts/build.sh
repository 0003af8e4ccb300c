#!/usr/bin/env bash
# Configures and builds kvlab into <repo>/build (Release), the Python module included
# (build/python: PYTHONPATH=build/python).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The Python module is built too, with the environment scripts/install_deps.sh made (.venv).
py="$root/.venv/bin/python"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release -DKVLAB_PYTHON=ON -DPython_EXECUTABLE="$py" \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" >/dev/null
cmake --build "$root/build" -j"$(nproc)"
