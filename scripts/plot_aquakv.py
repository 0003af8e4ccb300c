#!/usr/bin/env python3
"""Bits per value against rel_ppl from `kvlab eval --json` files (docs/results.md, issue 4).

usage: scripts/plot_aquakv.py OUT.png EVAL.json [EVAL.json ...]

Each point is one policy of the eval JSON (an object or an array of them); the label is the
policy family and its bits. Needs matplotlib (pip install matplotlib).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def label(spec):
    name, _, params = spec.partition(":")
    kv = dict(p.split("=", 1) for p in params.split(",") if "=" in p)
    if name == "aquakv":
        tag = "HIGGS (predictors off)" if kv.get("predictors") == "off" else "AQUA-KV"
        if kv.get("rotation") == "hadamard":
            tag += ", Hadamard"
        buffer = kv.get("buffer", "128")
        return tag, f"{kv.get('bits')} b" + ("" if buffer == "128" else f", buffer {buffer}")
    if name == "kivi":
        return "KIVI", f"{kv.get('bits')} b g{kv.get('group')}"
    return name, kv.get("dtype", "")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    runs = []
    for path in sys.argv[2:]:
        data = json.load(open(path))
        runs += data if isinstance(data, list) else [data]
    groups = {}
    for r in runs:
        family, point = label(r["policy"])
        groups.setdefault(family, []).append((r["bits_per_value"], 100.0 * r["rel_ppl"], point))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for family, pts in sorted(groups.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [max(p[1], 1e-3) for p in pts], marker="o", label=family)
        for x, y, text in pts:
            ax.annotate(text, (x, max(y, 1e-3)), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("bits per value (measured: all bytes held / values)")
    ax.set_ylabel("rel_ppl vs full f32 cache (%; below 0.001 drawn at 0.001)")
    ax.axhline(1.0, color="gray", linestyle=":", linewidth=1)
    ax.set_title(runs[0].get("model", "") + ": " + runs[0].get("text", "").split("/")[-1])
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(sys.argv[1], dpi=120)


if __name__ == "__main__":
    main()
