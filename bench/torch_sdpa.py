"""PyTorch's own decode attention on the shapes of decode_attention_cuda, for the ratio in one run.

torch.nn.functional.scaled_dot_product_attention in f16 (GQA through enable_gqa, no copies of
the kv heads), one query token per sequence over N cached tokens, the L2 flushed before every
timed call, CUDA events, the median of --repeats calls. Prints one JSON object per shape with the
microseconds, the bytes of K and V (f16) and the GB/s they imply.

    python bench/torch_sdpa.py [--repeats 50] > torch_sdpa.json
"""

import argparse
import json
import statistics

import torch
import torch.nn.functional as F

SHAPES = [  # (ctx, q heads, kv heads, head size, batch), as decode_attention_cuda registers them
    (ctx, q, kv, d, b)
    for ctx in (4096, 32768)
    for (q, kv, d) in ((32, 8, 128), (9, 3, 64))
    for b in (1, 8)
]


def time_sdpa(ctx, hq, hkv, d, batch, repeats, flush):
    q = torch.randn(batch, hq, 1, d, device="cuda", dtype=torch.float16)
    k = torch.randn(batch, hkv, ctx, d, device="cuda", dtype=torch.float16)
    v = torch.randn(batch, hkv, ctx, d, device="cuda", dtype=torch.float16)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(repeats + 1):
        flush.fill_(1)
        start.record()
        F.scaled_dot_product_attention(q, k, v, enable_gqa=hq != hkv)
        stop.record()
        torch.cuda.synchronize()
        if i > 0:  # the first call picks kernels
            times.append(start.elapsed_time(stop) * 1e3)
    us = statistics.median(times)
    kv_bytes = 2 * batch * hkv * ctx * d * 2
    return {"name": f"torch_sdpa_f16/ctx:{ctx}/q:{hq}/kv:{hkv}/d:{d}/b:{batch}", "us": us, "bytes_read": kv_bytes,
            "GBps": kv_bytes / us / 1e3, "device": torch.cuda.get_device_name(), "torch": torch.__version__}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("torch_sdpa.py: no CUDA device visible to torch")
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    flush = torch.empty(2 * l2 // 4, device="cuda", dtype=torch.float32)
    for shape in SHAPES:
        print(json.dumps(time_sdpa(*shape, args.repeats, flush)), flush=True)


if __name__ == "__main__":
    main()
