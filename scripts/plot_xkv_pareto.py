#!/usr/bin/env python3
"""xKV rank sweep from `kvlab eval --json` files: a markdown table and a Pareto plot of the prompt's
compression against rel_ppl and kld_mean (docs/results.md, issue 9).

usage: scripts/plot_xkv_pareto.py OUT.png EVAL.json [EVAL.json ...]

Prompt compression = the prompt's K/V in f16 (prompt_kv_bytes_f16) over the bytes of the factors
(payload_bytes + meta_bytes: A and B, which is all xkv keeps of a prompt); total compression =
compression_vs_f16 (the whole cache at the end: factors plus the dense decode tokens). Other
policies of the files are drawn at their total compression. Needs matplotlib.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(paths):
    rows = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        rows += data if isinstance(data, list) else [data]
    return rows


def params(spec):
    name, _, rest = spec.partition(":")
    return name, dict(p.split("=", 1) for p in rest.split(",") if "=" in p)


def main(out_png, paths):
    rows = load(paths)
    points = []
    print("| policy | G | rank K / V (per group) | prompt compression | total compression | rel_ppl | kld_mean | top1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        name, kv = params(r["policy"])
        if name == "xkv":
            prompt = r["prompt_kv_bytes_f16"] / (r["payload_bytes"] + r["meta_bytes"])
            label = f"G={kv['group']} ({kv['rank_k']}, {kv['rank_v']})"
            group = int(kv["group"])
        else:
            prompt = r["compression_vs_f16"]
            label = r["policy"].split(",")[0]
            group = 0
        points.append((group, prompt, r["rel_ppl"], r["kld_mean"], label))
        if name != "xkv":
            kv = {}
        print(f"| `{r['policy']}` | {kv.get('group', '-')} | {kv.get('rank_k', '-')} / {kv.get('rank_v', '-')} | "
              f"{prompt:.2f}x | {r['compression_vs_f16']:.2f}x | {100 * r['rel_ppl']:+.2f}% | "
              f"{r['kld_mean']:.4f} | {100 * r['top1_agree']:.1f}% |")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, idx, ylabel in ((axes[0], 2, "rel_ppl"), (axes[1], 3, "kld_mean (nats)")):
        for group in sorted(set(p[0] for p in points)):
            sel = sorted((p for p in points if p[0] == group), key=lambda p: p[1])
            tag = f"xKV G={group}" if group else "other policies (total compression)"
            style = "-o" if group else "s"
            ax.plot([p[1] for p in sel], [p[idx] for p in sel], style, label=tag)
            for p in sel:
                ax.annotate(p[4], (p[1], p[idx]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("prompt KV compression vs f16 (B counted)")
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
