# The examples as their users run them, and the Python policy through the decoder.
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import kvlab

from conftest import ROOT

EXAMPLES = ROOT / "examples" / "python"


def run_example(name, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)], check=True, capture_output=True,
                          text=True, env=env)


def test_sweep_writes_a_png_of_the_policies(tiny_text, tmp_path):
    out, js = tmp_path / "sweep.png", tmp_path / "sweep.json"
    r = run_example("sweep.py", "--model", "stories260k", "--text", tiny_text, "--context", 128, "--prefill", 64,
                    "--windows", 2, "--out", out, "--json", js, "--quiet",
                    "--policy", "full:dtype=f16", "--policy", "kivi:bits=2,residual=32")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10000
    runs = json.loads(js.read_text())
    assert [x["policy"].split(",")[0] for x in runs] == ["full:dtype=f16", "kivi:bits=2"]
    assert runs[1]["bits_per_value"] < runs[0]["bits_per_value"] and runs[1]["rel_ppl"] > runs[0]["rel_ppl"]
    assert "kivi:bits=2" in r.stdout


def test_python_policy_runs_in_the_decoder(stories, tiny_text):
    import knorm_policy  # noqa: F401 (registers knorm)
    assert "knorm" in {p["name"] for p in kvlab.policies()}
    ids = np.concatenate([[1], stories.encode("Once upon a time there was a girl. " * 6)]).astype(np.int32)
    full, off, small = (kvlab.Cache(stories, s) for s in ("full:dtype=f32", "knorm", "knorm:budget=16,window=4"))
    a, b, c = (stories.forward(x, [ids], logits="all") for x in (full, off, small))
    assert np.array_equal(a, b)  # the off setting: full f32's logits bit for bit
    assert small.stored_tokens(0, 0) == 16 and small.report()["L0-4"]["evicted_tokens"] == 5 * (len(ids) - 16)
    assert 0 < small.bytes()["payload"] < off.bytes()["payload"] / 2  # evicted memory is given back
    with pytest.raises(ValueError, match="window < budget"):
        kvlab.Cache(stories, "knorm:budget=4,window=8")
    runs = kvlab.eval(stories, tiny_text, ["knorm:budget=64,window=8", "streaming:sink=4,window=60"], context=256,
                      prefill=128, windows=2, quiet=True)
    assert all(r["tokens_scored"] == 2 * 127 for r in runs)
    assert runs[0]["decisions"]["L0-4"]["evicted_tokens"] > 0
