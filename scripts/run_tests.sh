#!/usr/bin/env bash
# The test command of the README: installs dependencies, fetches the model, builds, runs every
# test. Tests run one at a time: each already uses every core through OpenMP.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/install_deps.sh"
"$root/scripts/fetch_models.sh"
"$root/scripts/build.sh"
cd "$root/build"
ctest --output-on-failure --timeout 900
