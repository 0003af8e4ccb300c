#!/usr/bin/env bash
# Configures and builds kvlab into <repo>/build (Release), the Python module (build/python:
# PYTHONPATH=build/python) and the libtorch adapter included.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The Python module is built too, with the environment scripts/install_deps.sh made (.venv).
py="$root/.venv/bin/python"
# The libtorch adapter (KVLAB_TORCH) is built against the torch package in the same environment.
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release -DKVLAB_PYTHON=ON -DPython_EXECUTABLE="$py" \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" -DKVLAB_TORCH=ON \
  -DCMAKE_PREFIX_PATH="$("$py" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" >/dev/null
cmake --build "$root/build" -j"$(nproc)"
