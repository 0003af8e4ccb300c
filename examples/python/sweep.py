"""A small sweep of kvlab policies on one model: bits per value against rel_ppl, as a PNG.

    python examples/python/sweep.py --out sweep.png                       # SmolLM2-135M, 4 policies
    python examples/python/sweep.py --model stories260k --text ../shared/data/tinystories_valid_subset.txt \
        --context 256 --windows 2 --out sweep.png
"""
import argparse
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import kvlab  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
POLICIES = ["full:dtype=f16", "kivi:bits=4", "kivi:bits=2", "streaming:sink=4,window=128"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--text", default=str(ROOT.parent / "shared" / "data" / "sherlock_holmes_adventures.txt"))
    ap.add_argument("--policy", action="append", help="policy spec (repeatable); default: %s" % ", ".join(POLICIES))
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--prefill", type=int, default=-1)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--out", default="sweep.png")
    ap.add_argument("--json", help="also write the evaluation's records here")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()

    model = kvlab.load_model(a.model)
    runs = kvlab.eval(model, a.text, a.policy or POLICIES, context=a.context, prefill=a.prefill, windows=a.windows,
                      quiet=a.quiet)
    print(f"{'policy':48} {'bits/value':>10} {'rel_ppl':>9} {'kld_mean':>9}")
    for r in runs:
        print(f"{r['policy']:48} {r['bits_per_value']:10.2f} {100 * r['rel_ppl']:+8.2f}% {r['kld_mean']:9.4f}")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(runs, indent=1) + "\n")

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in runs:
        ax.scatter(r["bits_per_value"], 100 * r["rel_ppl"])
        ax.annotate(r["policy"].split(",")[0] if len(r["policy"]) > 28 else r["policy"],
                    (r["bits_per_value"], 100 * r["rel_ppl"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("bits per value (measured bytes)")
    ax.set_ylabel("rel_ppl vs full f32 cache (%)")
    ax.set_title(f"{a.model}: context {runs[0]['context']}, {runs[0]['tokens_scored']} tokens scored")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
