#!/usr/bin/env bash
# The main job of the README: an evaluation table of the cache policies on SmolLM2-135M over
# the Sherlock Holmes text, in decode mode against the full f32 cache (8 windows of 1024 tokens,
# half prefilled, the rest decoded one token per step).
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
  --policy full:dtype=fp8 \
  --policy kivi:bits=4 \
  --policy kivi:bits=2 \
  --policy quant:kbits=4,vbits=4 \
  --policy streaming:sink=4,window=256 \
  --policy "L0-14=kivi:bits=4;L15-29=full:dtype=f16" \
  --json "$root/build/results/main.json" "$@"
