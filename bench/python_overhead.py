"""What the Python module costs over C++, in one run on one machine (issue: at most 5% on a decode
forward, cache.read of a 4096-token layer no more than one copy).

  forward   SmolLM2-135M, full f16 cache, batch 1, one decode step at position ctx - 1 (the cache
            cropped back before every step, outside the timing): model.forward from Python against
            build/bin/decoder_bench's decode case, the same step in C++ (run before and after the
            Python loop; the median of each).
  read      full:dtype=f32 at 4096 tokens: cache.read(layer, 0) against numpy copying the three
            arrays it returns (positions, K, V). The C++ read is itself one copy out of the cache's
            pages, so a ratio near 1 means the binding adds none.

  PYTHONPATH=build/python python3 bench/python_overhead.py [--ctx 512] [--steps 200]
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import time

import numpy as np

import kvlab

ROOT = pathlib.Path(__file__).resolve().parents[1]


def cxx_decode_seconds(ctx):
    out = subprocess.run([str(ROOT / "build" / "bin" / "decoder_bench"), f"--context={ctx}", "--batch=1",
                          f"--benchmark_filter=decode/smollm2-135m/ctx:{ctx}/b:1", "--benchmark_repetitions=5",
                          "--benchmark_format=json"], check=True, capture_output=True, text=True).stdout
    runs = [b for b in json.loads(out)["benchmarks"] if b.get("run_type") == "iteration"]
    assert runs, "decoder_bench ran no decode case"
    return statistics.median(b["real_time"] * {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b["time_unit"]] for b in runs)


def python_decode_seconds(model, ctx, steps):
    cache = kvlab.Cache(model, "full:dtype=f16")
    text = (ROOT.parent / "shared" / "data" / "sherlock_holmes_adventures.txt").read_text()
    ids = np.concatenate([[model.bos_id], model.encode(text[:20000])[:ctx - 1]]).astype(np.int32)
    model.forward(cache, [ids], logits="none")
    cache.crop(0, ctx - 1)
    step = [np.array([42], np.int32)]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.forward(cache, step)
        times.append(time.perf_counter() - t0)
        cache.crop(0, ctx - 1)
    return statistics.median(times)


def read_vs_copy(model, tokens=4096, reps=20):
    cache = kvlab.Cache(model, "full:dtype=f32")
    ids = np.full(tokens, 42, np.int32)
    model.forward(cache, [ids], logits="none")
    read_t, copy_t = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        arrays = cache.read(5, 0)
        read_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        copies = [np.copy(a) for a in arrays]
        copy_t.append(time.perf_counter() - t0)
        del arrays, copies
    return statistics.median(read_t), statistics.median(copy_t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--steps", type=int, default=200)
    a = ap.parse_args()
    model = kvlab.load_model("smollm2-135m")
    c1 = cxx_decode_seconds(a.ctx)
    py = python_decode_seconds(model, a.ctx, a.steps)
    c2 = cxx_decode_seconds(a.ctx)
    cxx = statistics.median([c1, c2])
    print(f"decode step, SmolLM2-135M, f16 cache, ctx {a.ctx}, batch 1: C++ {1e3 * c1:.3f} / {1e3 * c2:.3f} ms, "
          f"Python {1e3 * py:.3f} ms: Python / C++ = {py / cxx:.3f}")
    r, c = read_vs_copy(model)
    print(f"cache.read of a 4096-token layer (f32, kv_dim {model.config['n_kv_heads'] * model.config['head_dim']}): "
          f"{1e3 * r:.3f} ms; numpy copy of its result: {1e3 * c:.3f} ms: read / copy = {r / c:.2f}")


if __name__ == "__main__":
    main()
