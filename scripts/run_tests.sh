#!/usr/bin/env bash
# The test command of the README: installs dependencies, fetches the model, builds, runs every
# test, builds examples/engine against an install (scripts/test_install.sh), reruns the
# kernel-dependent suites under each narrower ISA, then the sanitized suite.
# Tests run one at a time: each already uses every core through OpenMP.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/install_deps.sh"
"$root/scripts/fetch_models.sh"
"$root/scripts/build.sh"
cd "$root/build"
echo "[run_tests] all tests"
ctest --output-on-failure --timeout 900
echo "[run_tests] Python module (pytest)"
PYTHONPATH="$root/build/python" KVLAB_BIN_DIR="$root/build/bin" "$root/.venv/bin/python" -m pytest -q "$root/tests/python"
echo "[run_tests] install + examples/engine"
"$root/scripts/test_install.sh" "$root/build"

# The suites labelled `isa` again under each ISA narrower than the active one, so that every
# kernel path runs on every machine: the kernel suites loop over all ISAs themselves, but the
# policies and the conformance suite use the active one.
isas="$(bin/kvlab isas)"  # one a line, narrowest first, the active one marked "(active)"
for isa in $(awk '$2 == "(active)" { exit } { print $1 }' <<<"$isas"); do
  echo "[run_tests] tests labelled isa again with KVLAB_ISA=$isa"
  # ctest hands its environment to the tests; this shows that $KVLAB_ISA gets there.
  KVLAB_ISA=$isa ctest -V -R '^CpuFeaturesTest\.ActiveIsaIsTheEnvironmentsOrTheWidest$' |
    grep "active ISA: $isa\$" || { echo "[run_tests] KVLAB_ISA=$isa did not reach the tests" >&2; exit 1; }
  KVLAB_ISA=$isa ctest -L '^isa$' --output-on-failure --timeout 900
done

"$root/scripts/run_sanitized_tests.sh"
