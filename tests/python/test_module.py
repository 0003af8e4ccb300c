# The Python module against independent figures: the golden greedy generation of
# ../shared/models/SOURCES.md, the kvlab command's JSON, and the C++ decoder itself.
import json
import subprocess

import numpy as np
import pytest
import torch

import kvlab

GOLDEN_IDS = [int(x) for x in """432 383 286 261 376 298 315 421 395 317 426 338 401 396 267 337 410 408 419 292 411
    322 265 282 295 433 426 385 328 432 358 394 261 370 432 352 266 268 388 426 338 391 266 267 337 335 312 432
    398 312 286 267 414 270 333 415 426 13 438 310""".split()]


def prompt(model):
    return np.concatenate([[model.bos_id], model.encode("Once upon a time")]).astype(np.int32)


def test_tokenizer_and_greedy_decode_match_the_golden_output(stories):
    ids = prompt(stories)
    assert ids.tolist() == [1, 403, 407, 261, 378]
    cache = kvlab.Cache(stories, "full:dtype=f32")
    logits = stories.forward(cache, [ids])
    out = []
    for _ in range(60):
        out.append(int(logits[0].argmax()))
        logits = stories.forward(cache, [np.array(out[-1:], np.int32)])
    assert out == GOLDEN_IDS
    assert stories.decode(np.array(out, np.int32)).startswith(", there was a little girl named Lily.")


def test_inputs_are_not_copied(stories):
    ids = prompt(stories)
    assert kvlab._int32_address(ids) == ids.ctypes.data
    t = torch.from_numpy(ids.copy())
    assert kvlab._int32_address(t) == t.data_ptr()
    x = torch.zeros(3, 8)
    assert kvlab._float_address(x) == x.data_ptr()
    # out= is written where it lies: a torch tensor receives the attention output.
    g = stories.config
    cache = kvlab.Cache(stories, "full:dtype=f32", slots=1)
    batch = cache.plan([0], [2])
    q = torch.randn(2, g["n_heads"] * g["head_dim"])
    k = torch.randn(2, g["n_kv_heads"] * g["head_dim"])
    v = torch.randn(2, g["n_kv_heads"] * g["head_dim"])
    out = torch.zeros_like(q)
    for layer in range(g["n_layers"]):
        assert cache.attend(layer, batch, q, k, v, out=out) is not None
    cache.commit(batch)
    assert out.abs().sum() > 0
    # Token 0 attends only to itself: its output is its value, head by head (GQA group 2).
    hd = g["head_dim"]
    for h in range(g["n_heads"]):
        kvh = h // (g["n_heads"] // g["n_kv_heads"])
        assert torch.allclose(out[0, h * hd:(h + 1) * hd], v[0, kvh * hd:(kvh + 1) * hd], atol=1e-6)
    assert cache.seq_length(0) == 2


def test_outputs_are_not_copied(stories):
    cache = kvlab.Cache(stories, "full:dtype=f32")
    logits = stories.forward(cache, [prompt(stories)], logits="all")
    assert logits.shape == (5, stories.config["vocab_size"]) and type(logits.base).__name__ == "PyCapsule"
    pos, k, v = cache.read(0, 0)
    assert pos.tolist() == [0, 1, 2, 3, 4] and k.shape == v.shape == (5, 32)
    assert all(type(a.base).__name__ == "PyCapsule" for a in (pos, k, v))


def test_bad_inputs_raise_clear_exceptions(stories, tmp_path):
    with pytest.raises(FileNotFoundError):
        kvlab.load_model(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x01" * 9)
    with pytest.raises(ValueError, match="bad.gguf"):
        kvlab.load_model(bad)
    with pytest.raises(ValueError, match="unknown policy"):
        kvlab.Cache(stories, "nosuch:bits=4")
    with pytest.raises(ValueError, match="bits"):
        kvlab.Cache(stories, "kivi:bits=5")
    cache = kvlab.Cache(stories, "full:dtype=f32")
    with pytest.raises(TypeError, match="expected dtype int32, got int64"):
        stories.forward(cache, [np.array([1, 2], np.int64)])
    with pytest.raises(ValueError, match="C-contiguous"):
        stories.forward(cache, [np.arange(8, dtype=np.int32)[::2]])
    with pytest.raises(ValueError, match="vocab"):
        stories.forward(cache, [[1, 100000]])
    with pytest.raises(ValueError):
        stories.forward(cache, [np.ones(600, np.int32)])  # passes the 512-token context
    with pytest.raises(ValueError, match=r"slot 3 is outside \[0, 1\)"):
        stories.forward(cache, {3: [1]})
    assert cache.seq_length(0) == 0  # nothing was written by the refused calls
    with pytest.raises(ValueError, match="logits"):
        stories.forward(cache, [[1]], logits="some")
    q = np.zeros((1, 64), np.float32)
    with pytest.raises(ValueError, match="dimension 1 is 64, expected 32"):
        cache.attend(0, cache.plan([0], [1]), q, q, q)


def test_bytes_save_restore_crop_reset(stories, tmp_path):
    cache = kvlab.Cache(stories, "kivi:bits=4,residual=32", slots=2)
    text = np.concatenate([[1], stories.encode("Once upon a time there was a cat. " * 8)]).astype(np.int32)
    stories.forward(cache, [text, text[:40]])
    b = cache.bytes()
    assert b["kv_bytes"] == b["total"] - b["side"] - b["derived"] > 0 and b["payload"] > 0 and b["meta"] > 0
    path = tmp_path / "c.kvlab"
    cache.save(str(path))
    restored = kvlab.Cache.restore(stories, str(path))
    assert restored.spec == cache.spec and restored.seq_length(0) == len(text)
    nxt = [np.array([10, 11], np.int32)] * 2
    assert np.array_equal(stories.forward(cache, nxt), stories.forward(restored, nxt))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError):
        kvlab.Cache.restore(stories, str(path))
    cache.crop(0, 10)
    assert cache.seq_length(0) == 10 and cache.read(0, 0)[0].tolist() == list(range(10))
    cache.reset(1)
    assert cache.seq_length(1) == 0 and cache.stored_tokens(0, 1) == 0


def test_policies_lists_the_registry():
    names = {p["name"]: p for p in kvlab.policies()}
    assert {"full", "kivi", "aquakv", "xkv", "lighttransfer", "dynsparse"} <= set(names)
    kivi = {p["key"]: p for p in names["kivi"]["params"]}
    assert kivi["bits"]["values"] and kivi["bits"]["doc"]


EVAL_ARGS = dict(context=128, prefill=64, windows=2)
TIMING = {"decode_tokens_per_s", "decode_tokens_per_s_full", "prefill_seconds"}


def test_eval_equals_the_command(stories, tiny_text, kvlab_bin, tmp_path, capfd):
    specs = ["full:dtype=f16", "kivi:bits=4,residual=32"]
    py = kvlab.eval(stories, tiny_text, specs, quiet=True, **EVAL_ARGS)
    assert capfd.readouterr().err == ""  # quiet
    out = tmp_path / "eval.json"
    cmd = [str(kvlab_bin), "eval", "--model", "stories260k", "--text", str(tiny_text), "--json", str(out), "--quiet"]
    for s in specs:
        cmd += ["--policy", s]
    for key, value in EVAL_ARGS.items():
        cmd += [f"--{key}", str(value)]
    subprocess.run(cmd, check=True, capture_output=True)
    cli = json.loads(out.read_text())
    assert len(py) == len(cli) == 2
    for a, b in zip(py, cli):
        assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}
    assert py[1]["rel_ppl"] != 0 and py[1]["bits_per_value"] < py[0]["bits_per_value"]


def test_calibrate_writes_a_predictor_file_the_cache_accepts(stories, tiny_text, tmp_path):
    path = tmp_path / "aqua.bin"
    r = kvlab.calibrate(stories, tiny_text, ["aquakv:bits=2"], [path], tokens=2048, window=128, quiet=True)
    assert r["tokens"] >= 2048 and r["windows"] > 0 and path.stat().st_size > 0
    assert r["table"].startswith("calibration: ") and str(path) in r["table"]
    cache = kvlab.Cache(stories, f"aquakv:bits=2,calib={path}")
    assert stories.forward(cache, [prompt(stories)]).shape == (1, 512)
