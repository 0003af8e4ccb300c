#!/usr/bin/env bash
# The AQUA-KV protocol of docs/results.md on SmolLM2-135M: calibrate on lines 1-150 of the SOTU
# text (262,144 tokens; about 11 minutes here), then evaluate on the Sherlock Holmes text (context
# 4096, prefill 3584, 8 windows; about 25 minutes) AQUA-KV at 2/3/4 bits, plain HIGGS (predictors
# off), KIVI 2/4 and f16, and plot bits per value against rel_ppl (needs matplotlib). The file
# names match docs/results.md (b2.calib there was build/results/aquakv/smollm2_b2.calib).
# Outputs in build/results/aquakv/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/install_deps.sh"
"$root/scripts/fetch_models.sh"
"$root/scripts/build.sh"
shared="${KVLAB_SHARED:-$root/../shared}"
out="$root/build/results/aquakv"
mkdir -p "$out"
kvlab="$root/build/bin/kvlab"
"$kvlab" calibrate --model smollm2-135m --text "$shared/data/sotu_addresses.txt" --lines 1-150 \
  --tokens 262144 --window 512 \
  --policy aquakv:bits=2 --out "$out/b2.calib" \
  --policy aquakv:bits=3 --out "$out/b3.calib" \
  --policy aquakv:bits=4 --out "$out/b4.calib" | tee "$out/calibrate.txt"
# decode=cached: the same numbers as the default decode=chain (tests/aquakv_test.cc) without
# rebuilding the chain every step; bits per value count the codes only in both.
"$kvlab" eval --model smollm2-135m --text "$shared/data/sherlock_holmes_adventures.txt" \
  --context 4096 --prefill 3584 --windows 8 \
  --policy full:dtype=f16 \
  --policy kivi:bits=4 \
  --policy kivi:bits=2 \
  --policy "aquakv:bits=2,calib=$out/b2.calib,decode=cached" \
  --policy "aquakv:bits=3,calib=$out/b3.calib,decode=cached" \
  --policy "aquakv:bits=4,calib=$out/b4.calib,decode=cached" \
  --policy aquakv:bits=2,predictors=off,decode=cached \
  --policy aquakv:bits=3,predictors=off,decode=cached \
  --policy "aquakv:bits=2,calib=$out/b2.calib,buffer=64,decode=cached" \
  --json "$out/eval.json" | tee "$out/eval.txt"
python3 -c "import matplotlib" 2>/dev/null || python3 -m pip install -q matplotlib
python3 "$root/scripts/plot_aquakv.py" "$out/pareto.png" "$out/eval.json"
