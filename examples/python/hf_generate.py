"""Greedy generation with a transformers Llama model whose cache is a kvlab policy.

    python examples/python/hf_generate.py --policy kivi:bits=4 --prompt "The detective looked at"

The model is SmolLM2-135M-Instruct from kvlab's GGUF file, loaded by transformers (weights
dequantized to float32) and by kvlab (the cache's geometry and RoPE), so both sides hold the same
checkpoint.
"""
import argparse
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import kvlab
import kvlab.hf


def load_hf(gguf_path):
    d, f = os.path.split(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(d, gguf_file=f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="kvlab alias or GGUF path")
    ap.add_argument("--policy", default="kivi:bits=4")
    ap.add_argument("--prompt", default="The detective looked at the letter and said")
    ap.add_argument("--tokens", type=int, default=40)
    a = ap.parse_args()

    kv_model = kvlab.load_model(a.model)
    model, tokenizer = load_hf(kv_model.path)
    ids = tokenizer(a.prompt, return_tensors="pt").input_ids
    cache = kvlab.hf.Cache(a.policy, model, kv_model)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), cache=cache, do_sample=False,
                             max_new_tokens=a.tokens)
    print(tokenizer.decode(out[0], skip_special_tokens=True))
    b = cache.kvlab.bytes()
    values = 2 * cache.kvlab.seq_length(0) * kv_model.config["n_layers"] * kv_model.config["n_kv_heads"] * \
        kv_model.config["head_dim"]
    print(f"cache {cache.kvlab.spec}: {b['kv_bytes']} bytes for {cache.kvlab.seq_length(0)} tokens "
          f"({8 * b['kv_bytes'] / values:.2f} bits per value)")


if __name__ == "__main__":
    main()
