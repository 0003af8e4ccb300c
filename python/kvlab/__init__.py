"""kvlab: KV-cache compression policies in a reference Llama decoder.

A thin layer over the C++ library (kvlab._kvlab); every figure comes from the C++ side.

    import kvlab
    model = kvlab.load_model("stories260k")
    cache = kvlab.Cache(model, "kivi:bits=4", slots=2)
    logits = model.forward(cache, [model.encode("Once upon a time"), None])   # [1, vocab]
    print(cache.bytes())                                                      # the ledger, by kind
    print(kvlab.eval(model, "text.txt", ["kivi:bits=4"], context=256, windows=2, quiet=True))

Which calls copy:
  * inputs never are: token ids (int32), q/k/v (float32) are read where they lie, numpy arrays
    or CPU torch tensors alike (wrong dtype, non-contiguous: an exception, not a silent copy);
    plain Python lists are converted.
  * outputs are not copied again: forward's logits and read()'s arrays are the C++ results,
    handed to numpy. read() itself assembles the layer's K/V from the policy's storage (one
    decompression pass).
  * Batch.positions is a copy (small).
"""

import os
from typing import Dict, Iterable, List, Optional, Sequence

from ._kvlab import Batch, Cache, Model, PolicyContext, load_model as _load_model, policies  # noqa: F401
from . import _kvlab
from ._kvlab import WITH_TORCH, _float_address, _int32_address  # noqa: F401 (_*: tests)

__all__ = ["Batch", "Cache", "Model", "Policy", "PolicyContext", "calibrate", "eval", "load_model",
           "policies", "register_policy"]


def load_model(name_or_path: str, tokenizer: str = "") -> Model:
    """Loads a GGUF or llama2.c checkpoint, or an alias (stories260k, smollm2-135m)."""
    model = _load_model(os.fspath(name_or_path), os.fspath(tokenizer))
    model.label = os.fspath(name_or_path)  # what `kvlab eval --model` would be given
    return model


def eval(model: Model, text: str, policies: Sequence[str], context: int = -1, prefill: int = -1,
         windows: int = 8, task: str = "text", passage: int = 64, distance: int = -1,
         quiet: bool = False) -> List[dict]:
    """The decode-mode evaluation of `kvlab eval`: one dict per policy, the keys of its --json."""
    if isinstance(policies, str):
        policies = [policies]
    return _kvlab.eval(model, getattr(model, "label", model.path), os.fspath(text), list(policies),
                       context, prefill, windows, task, passage, distance, quiet)


def calibrate(model: Model, text: str, policies: Sequence[str], outputs: Sequence[str], tokens: int = -1,
              window: int = 512, horizon: int = 32, quiet: bool = False) -> dict:
    """`kvlab calibrate`: fits AQUA-KV predictors or dynsparse deciders, one output file per policy."""
    if isinstance(policies, str):
        policies = [policies]
    if isinstance(outputs, str):
        outputs = [outputs]
    return _kvlab.calibrate(model, os.fspath(text), list(policies), [os.fspath(o) for o in outputs], tokens,
                            window, horizon, quiet)


class Policy:
    """Base class of policies written in Python (kvcache/policy.h is the contract).

    An instance owns layers ctx.first_layer .. ctx.last_layer for ctx.max_seqs slots. Per forward,
    attend() is called for each of its layers in order, then commit() once. Keys arrive PRE-RoPE
    (ctx.rotate applies RoPE); new tokens attend to themselves exactly. Allocate what you keep
    with ctx.allocate(kind, shape, dtype) so that the cache's ledger counts it; arrays passed to
    the methods are views valid during the call only.
    """

    def __init__(self, ctx: PolicyContext, params: dict):
        self.ctx = ctx
        self.params = params

    def attend(self, layer: int, batch: Batch, q, k, v, out) -> None:
        """q post-RoPE [rows, q_dim], k pre-RoPE and v [rows, kv_dim]: store the new tokens and
        write softmax(q k^T / sqrt(head_dim)) v over history + new tokens into out [rows, q_dim]."""
        raise NotImplementedError

    def commit(self, batch: Batch) -> None:
        """End of the forward: compress or evict what it wrote."""

    def stored_tokens(self, layer: int, seq: int) -> int:
        raise NotImplementedError

    def crop(self, seq: int, n_tokens: int) -> None:
        """Drop every token of `seq` at position >= n_tokens, in all layers."""
        raise NotImplementedError

    def reset(self, seq: int) -> None:
        raise NotImplementedError

    def read(self, layer: int, seq: int):
        """(positions int32 [n], post-RoPE keys float32 [n, kv_dim], values [n, kv_dim])."""
        raise NotImplementedError

    def save(self) -> bytes:
        raise NotImplementedError

    def load(self, state: bytes) -> None:
        raise NotImplementedError

    def report(self) -> Optional[dict]:
        """What the policy decided, for the evaluation's JSON (None: nothing)."""
        return None


def register_policy(name: str, cls, summary: str = "", params: Optional[Dict[str, object]] = None,
                    test_specs: Iterable[str] = (), off_spec: str = "", roundtrip_tolerance: float = 0.0,
                    crosses_layers: bool = False) -> None:
    """Makes `name` a policy valid in every spec (this process): instances are cls(ctx, params).

    params: {key: default} or {key: (default, doc)}; the default's type (bool, int, float, str)
    is the parameter's type. test_specs / off_spec / roundtrip_tolerance: what the conformance
    suite runs (off_spec: the setting that must reproduce full:dtype=f32 exactly, if any).
    """
    _kvlab._register_policy(name, cls, summary, dict(params or {}), list(test_specs), off_spec,
                            float(roundtrip_tolerance), bool(crosses_layers))
