#!/usr/bin/env bash
# Installs what kvlab builds with, from Debian packages, if it is missing (idempotent).
set -euo pipefail

packages=(cmake g++ make libeigen3-dev libgtest-dev libgmock-dev libbenchmark-dev)
# The model download needs python3 with pip, from Debian or from anywhere else on the PATH.
python3 -m pip --version >/dev/null 2>&1 || packages+=(python3 python3-pip)
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
