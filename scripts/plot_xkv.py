#!/usr/bin/env python3
"""Per-layer low-rank error and adjacent-layer subspace overlap from `kvlab xkv-analyze --json`
(docs/results.md, issue 9).

usage: scripts/plot_xkv.py OUT.png ANALYSIS.json

Left: the relative Frobenius error of pre-RoPE K (solid) and V (dashed) per layer for each group
size G, at equal per-layer rank. Right: the overlap of layer l's and layer l+1's top-r singular
subspaces on the token side (left vectors: what a shared basis A needs) and on the channel side
(right vectors), with the channel-side level of unrelated subspaces (r / kv_dim; on the token side
it is r / tokens, near 0). Needs matplotlib.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(out_png, path):
    with open(path) as f:
        a = json.load(f)
    layers = [row["layer"] for row in a["layers"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, g in enumerate(a["groups"]):
        color = f"C{i}"
        left.plot(layers, [row["k_error"][i] for row in a["layers"]], "-o", ms=3, color=color,
                  label=f"K, G={int(g)}")
        left.plot(layers, [row["v_error"][i] for row in a["layers"]], "--s", ms=3, color=color,
                  label=f"V, G={int(g)}")
    left.set_xlabel("layer")
    left.set_ylabel("relative Frobenius error")
    left.set_title(f"{a['tokens']} tokens, per-layer rank K {a['rank_k']} / V {a['rank_v']}")
    left.legend(fontsize=8, ncol=2)
    left.grid(alpha=0.3)
    pairs = [row for row in a["layers"] if row["k_overlap_next"] is not None]
    x = [r["layer"] for r in pairs]
    right.plot(x, [r["k_overlap_next"] for r in pairs], "-o", ms=3, color="C0", label="K, token side")
    right.plot(x, [r["v_overlap_next"] for r in pairs], "-s", ms=3, color="C1", label="V, token side")
    right.plot(x, [r["k_channel_overlap_next"] for r in pairs], "--o", ms=3, color="C0", alpha=0.5,
               label="K, channel side")
    right.plot(x, [r["v_channel_overlap_next"] for r in pairs], "--s", ms=3, color="C1", alpha=0.5,
               label="V, channel side")
    right.axhline(a["rank_k"] / a["kv_dim"], color="C0", ls=":", label="unrelated channels, K rank")
    right.axhline(a["rank_v"] / a["kv_dim"], color="C1", ls=":", label="unrelated channels, V rank")
    right.set_ylim(0, 1)
    right.set_xlabel("layer l (overlap with l+1)")
    right.set_ylabel("subspace overlap")
    right.set_title("top-r right singular subspaces of adjacent layers")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
