#!/usr/bin/env python3
"""Markdown table of `kvlab eval --json` results, for docs/results.md.

usage: scripts/eval_table.py [--lazy] RESULT.json...

One row per policy run (the reference is the *_full columns of every row). Columns: rel_ppl,
kld_mean, top-1 agreement, retrieval top-1 (retrieval task), bits per value, kv_bytes as a
fraction of f16, peak kv bytes, decode tokens/s against the full f32 reference's. --lazy adds,
for lighttransfer runs, the layers made lazy in at least half of the sequences. --sparse adds,
for dynsparse and evict runs, the fraction of generated tokens held in layers >= K at the end,
kv_bytes against an f16 cache of every token, and the learned decider's microseconds per token.
"""
import json
import sys


def mib(n):
    return f"{n / 2**20:.1f}"


def lazy_layers(run):
    for instance in (run.get("decisions") or {}).values():
        chosen = instance.get("lazy_chosen")
        if chosen:
            return ",".join(str(l) for l, c in enumerate(chosen) if c >= 0.5)
    return ""


def sparse_columns(run):
    """Kept fraction of generated tokens, kv_bytes / f16, decider us per token."""
    kept, us = "-", "-"
    for d in (run.get("decisions") or {}).values():
        if "keep_rate" in d:
            kept = f"{d['keep_rate']:.3f}"
        if "evicted_tokens" in d and d["generated_tokens"]:
            held = d["generated_tokens"] - d["evicted_tokens"] / d["evicting_layers"]
            kept = f"{held / d['generated_tokens']:.3f}"
        if "decider_us_per_token" in d:
            us = f"{d['decider_us_per_token']:.0f}"
    return [kept, f"{run['kv_bytes'] / run['kv_bytes_f16']:.3f}", us]


def main(argv):
    lazy = "--lazy" in argv
    sparse = "--sparse" in argv
    paths = [a for a in argv if a not in ("--lazy", "--sparse")]
    if not paths:
        sys.exit(__doc__)
    head = ["policy", "task", "rel_ppl", "kld_mean", "top1 agree", "retrieval top1 (full)", "bits/value",
            "kv MiB", "peak kv MiB", "decode tok/s (f32 ref)"]
    if lazy:
        head.append("lazy layers (>= half the sequences)")
    if sparse:
        head += ["generated kept", "kv / f16", "decider us/token"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for path in paths:
        with open(path) as f:
            runs = json.load(f)
        for r in runs:
            task = r["task"] if r["task"] == "text" else f"retrieval D={r['distance']}"
            retr = f"{100 * r['retrieval_top1']:.1f}% ({100 * r['retrieval_top1_full']:.1f}%)" if "retrieval_top1" in r else "-"
            row = [f"`{r['policy']}`", task, f"{100 * r['rel_ppl']:+.2f}%", f"{r['kld_mean']:.4f}",
                   f"{100 * r['top1_agree']:.1f}%", retr, f"{r['bits_per_value']:.2f}", mib(r["kv_bytes"]),
                   mib(r["peak_kv_bytes"]),
                   f"{r['decode_tokens_per_s']:.1f} ({r['decode_tokens_per_s_full']:.1f})"]
            if lazy:
                row.append(lazy_layers(r))
            if sparse:
                row += sparse_columns(r)
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
