#!/usr/bin/env bash
# Installs what kvlab builds with, from Debian packages, if it is missing (idempotent).
set -euo pipefail

# pkg-config: scripts/test_install.sh builds examples/engine with it.
packages=(cmake g++ make libeigen3-dev libgtest-dev libgmock-dev libbenchmark-dev pkg-config)
# The model download needs python3 with pip, from Debian or from anywhere else on the PATH; the
# Python module's environment (.venv, below) needs venv.
python3 -m pip --version >/dev/null 2>&1 || packages+=(python3 python3-pip)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || packages+=(python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[install_deps] installing: ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The Python module and its tests (pybind11, scikit-build-core, numpy, pytest, torch,
# transformers, gguf, matplotlib) in <repo>/.venv, which sees what the system Python already has.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -x "$root/.venv/bin/python" ] || python3 -m venv --system-site-packages "$root/.venv"
"$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  pybind11 scikit-build-core numpy pytest torch transformers gguf accelerate matplotlib
