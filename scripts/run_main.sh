#!/usr/bin/env bash
# The main job of the README: an evaluation table of a few cache policies on SmolLM2-135M over
# the Sherlock Holmes text, in decode mode against the full f32 cache.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/install_deps.sh"
"$root/scripts/fetch_models.sh"
"$root/scripts/build.sh"
shared="${KVLAB_SHARED:-$root/../shared}"
mkdir -p "$root/build/results"
"$root/build/bin/kvlab" eval --model smollm2-135m \
  --text "$shared/data/sherlock_holmes_adventures.txt" \
  --context 1024 --windows 8 \
  --policy full:dtype=f16 \
  --policy full:dtype=bf16 \
  --policy "L0-14=full:dtype=f16;L15-29=full:dtype=bf16" \
  --json "$root/build/results/main.json" "$@"
