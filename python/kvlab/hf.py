"""A transformers Cache backed by a kvlab cache: a transformers Llama model decodes with any kvlab
policy, and kvlab's own attention (over the policy's compressed storage) computes each layer.

    import kvlab.hf
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    cache = kvlab.hf.Cache("kivi:bits=4", model, "smollm2-135m")   # the same checkpoint in kvlab
    out = model.generate(ids, attention_mask=torch.ones_like(ids), cache=cache, max_new_tokens=50)

(`past_key_values=` works too; transformers 5 names it `cache`.)

How: making the Cache switches the model to the attention implementation "kvlab" (registered
here). Cache.update(k, v, layer) receives HF's post-RoPE keys; it un-rotates them with the
forward's own cos/sin, maps the channels to kvlab's layout and hands the rows to the attention
function, which calls kvlab.Cache.attend(layer, batch, q, k_pre, v) and returns its output; after
the last layer the forward is committed (the policy compresses / evicts). The attention mask is
not used: kvlab attends causally by position.

Layouts: GGUF checkpoints (llama.cpp's converter) permute the rows of W_q and W_k so that RoPE
turns the pairs (2i, 2i+1) of a head, which kvlab does; transformers un-permutes them and turns
(i, i + d/2). Within a head, kvlab channel 2i + j is HF channel j * d/2 + i. Values (and so the
attention output) are in the same order in both.

Limits (each refused with an exception, never silently wrong): full-attention Llama-style
decoders with plain RoPE; batches of unpadded sequences of equal length (batch row i is kvlab slot
i); no beam search, no cache cropping from transformers; inference only. Every call converts the
rows to float32 contiguous tensors (one copy each of q, k and v per layer, as any cache would).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.cache_utils import Cache as _HfCache
from transformers.cache_utils import CacheLayerMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from . import Cache as _KvlabCache
from . import Model, load_model

ATTENTION = "kvlab"  # the attention implementation registered with transformers


def hf_to_kvlab_channels(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[..., head_dim] in HF order -> kvlab order: out[..., 2i + j] = x[..., j * d/2 + i]."""
    return x.unflatten(-1, (2, head_dim // 2)).transpose(-1, -2).flatten(-2)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _unrotate(k_post: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Undoes HF's k*cos + rotate_half(k)*sin. k_post [B, H, T, d]; cos, sin [B or 1, T, d]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return k_post * cos - _rotate_half(k_post) * sin


def _rows(x: torch.Tensor) -> torch.Tensor:
    """What kvlab reads: float32, contiguous, CPU."""
    return x.to(device="cpu", dtype=torch.float32).contiguous()


class _Pending:
    """What Cache.update returns in place of K and V: the attention function finds here the cache
    and the layer's new rows (its kwargs do not carry the cache in transformers 5)."""

    __slots__ = ("cache", "layer", "k", "v")

    def __init__(self, cache, layer, k, v):
        self.cache, self.layer, self.k, self.v = cache, layer, k, v


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    if isinstance(key, _Pending):
        return key.cache._attend(module, query, key, scaling), None
    # Another cache (or none) on a model switched to "kvlab": plain sdpa.
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


def _mask(*, attention_mask=None, **kwargs):
    if attention_mask is not None and attention_mask.ndim == 2 and not bool(attention_mask.all()):
        raise ValueError("kvlab.hf.Cache: padded batches are not supported (attention_mask has zeros); "
                         "batch sequences of equal length or run them one by one")
    return sdpa_mask(attention_mask=attention_mask, **kwargs)


def use_kvlab_attention(model) -> None:
    """Registers the "kvlab" attention (once per process) and switches `model` to it."""
    AttentionInterface.register(ATTENTION, _attention)
    AttentionMaskInterface.register(ATTENTION, _mask)  # without one a padded mask would pass unseen
    if model.config._attn_implementation != ATTENTION:
        model.set_attn_implementation(ATTENTION)


class _Layer(CacheLayerMixin):
    """The per-layer view transformers iterates over; the storage is kvlab's."""

    is_compileable = False
    is_sliding = False

    def __init__(self, cache):
        super().__init__()
        self._cache = cache
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:
        pass

    def update(self, *args, **kwargs):
        raise RuntimeError("kvlab.hf.Cache.update handles every layer")

    def get_seq_length(self) -> int:
        return self._cache.get_seq_length()

    def get_mask_sizes(self, query_length: int):
        return self._cache.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        pass


class Cache(_HfCache):
    """A transformers Cache whose storage and attention are a kvlab cache with policy `spec`.

    model: the transformers model (switched to the "kvlab" attention); kvlab_model: the same
    checkpoint as a kvlab.Model or a name / path for kvlab.load_model; batch: sequences (slots).
    """

    def __init__(self, spec: str, model, kvlab_model, batch: int = 1):
        if not isinstance(kvlab_model, Model):
            kvlab_model = load_model(kvlab_model)
        cfg = model.config.get_text_config(decoder=True)
        kc = kvlab_model.config
        self.n_layers, self.n_heads, self.n_kv_heads = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        if (self.n_layers, self.n_heads, self.n_kv_heads, self.head_dim) != (
                kc["n_layers"], kc["n_heads"], kc["n_kv_heads"], kc["head_dim"]):
            raise ValueError("kvlab.hf.Cache: the kvlab model's shape differs from the transformers model's")
        if kc["rope_style"] != "interleaved":
            raise ValueError("kvlab.hf.Cache: the channel map assumes a GGUF llama checkpoint (interleaved RoPE)")
        theta = cfg.rope_parameters["rope_theta"]
        if abs(kc["rope_theta"] - theta) > 1e-6 * theta:
            raise ValueError(f"kvlab.hf.Cache: RoPE theta {kc['rope_theta']} (kvlab) != {theta} (transformers)")
        if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
            raise ValueError("kvlab.hf.Cache: full-attention decoders only")
        rotary = getattr(getattr(model, "model", model), "rotary_emb", None)
        if rotary is None or getattr(rotary, "rope_type", "default") != "default" or \
                getattr(rotary, "attention_scaling", 1.0) != 1.0:
            raise ValueError("kvlab.hf.Cache: a Llama-style decoder with plain RoPE is needed")
        super().__init__(layers=[_Layer(self) for _ in range(self.n_layers)])
        self.kvlab = _KvlabCache(kvlab_model, spec, batch)  # the storage; read(), bytes() etc. from here
        self.batch = batch
        self._model, self._rotary = model, rotary
        self._plan = None      # the kvlab batch of the forward in flight
        self._next_layer = 0
        self._cos = self._sin = None
        use_kvlab_attention(model)

    # --- what transformers asks ---
    def get_seq_length(self, layer_idx: int = 0) -> int:
        lengths = {self.kvlab.seq_length(s) for s in range(self.batch)}
        if len(lengths) != 1:
            raise RuntimeError(f"kvlab.hf.Cache: sequences of different lengths {sorted(lengths)}")
        return lengths.pop()

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0):
        return self.get_seq_length() + query_length, 0

    def get_max_length(self, layer_idx=None) -> int:
        return -1

    @property
    def is_compileable(self) -> bool:
        return False

    def reset(self) -> None:
        self.kvlab.reset_all()
        self._plan = None

    def _unsupported(self, what, *args, **kwargs):
        raise NotImplementedError(f"kvlab.hf.Cache does not support {what}")

    def reorder_cache(self, beam_idx):
        self._unsupported("beam search")

    def batch_repeat_interleave(self, repeats):
        self._unsupported("num_return_sequences > 1")

    def batch_select_indices(self, indices):
        self._unsupported("selecting batch rows")

    def crop(self, max_length):
        self._unsupported("cropping (assisted decoding)")

    # --- one forward ---
    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """key_states: HF post-RoPE keys [B, n_kv_heads, T, d]; value_states alike. Returns a
        _Pending (twice: for K and V) that the "kvlab" attention function resolves."""
        if self._model.config._attn_implementation != ATTENTION:
            raise RuntimeError("kvlab.hf.Cache: the model's attention is not 'kvlab' (use_kvlab_attention)")
        fwd = kwargs.get("kwargs", kwargs) or {}
        legacy = args[0] if args and isinstance(args[0], dict) else {}  # transformers 4: cache_kwargs
        if layer_idx == 0:
            self._begin(key_states, fwd.get("position_ids"), legacy)
        elif self._plan is None or layer_idx != self._next_layer:
            raise RuntimeError(f"kvlab.hf.Cache: layer {layer_idx} out of order")
        B, _, T, d = key_states.shape
        k = hf_to_kvlab_channels(_unrotate(key_states, self._cos, self._sin).transpose(1, 2), d).reshape(B * T, -1)
        v = value_states.transpose(1, 2).reshape(B * T, -1)
        pending = _Pending(self, layer_idx, _rows(k), _rows(v))
        return pending, pending

    def _begin(self, key_states, position_ids, legacy):
        B, _, T, _ = key_states.shape
        if B != self.batch:
            raise ValueError(f"kvlab.hf.Cache: batch of {B} sequences, the cache was made for {self.batch}")
        if self._plan is not None:  # a forward stopped half way: its tokens are in some layers
            for s in range(B):
                self.kvlab.crop(s, self.kvlab.seq_length(s))
            self._plan = None
        past = self.get_seq_length()
        expected = torch.arange(past, past + T, device=key_states.device)
        if position_ids is None:
            position_ids = expected[None]
        elif not bool((position_ids == expected).all()):
            raise ValueError("kvlab.hf.Cache: positions are not the sequences' next ones (padding or custom "
                             "positions are not supported)")
        if "cos" in legacy and "sin" in legacy:
            self._cos, self._sin = legacy["cos"], legacy["sin"]
        else:  # the model's own module and inputs: bitwise its cos/sin
            self._cos, self._sin = self._rotary(key_states, position_ids)
        self._plan = self.kvlab.plan(list(range(B)), [T] * B)
        self._next_layer = 0

    def _attend(self, module, query, pending, scaling):
        """query: HF post-RoPE [B, n_heads, T, d] -> [B, T, n_heads, d], HF's attention output."""
        layer = module.layer_idx
        if pending.cache is not self or layer != pending.layer or layer != self._next_layer:
            raise RuntimeError(f"kvlab.hf.Cache: attention of layer {layer} out of order")
        if module.training:
            raise RuntimeError("kvlab.hf.Cache is for inference")
        if scaling is not None and abs(scaling - self.head_dim ** -0.5) > 1e-12:
            raise ValueError(f"kvlab.hf.Cache: attention scale {scaling} is not 1/sqrt(head_dim)")
        B, H, T, d = query.shape
        q = _rows(hf_to_kvlab_channels(query.transpose(1, 2), d).reshape(B * T, H * d))
        out = torch.empty(B * T, H * d)
        self.kvlab.attend(layer, self._plan, q, pending.k, pending.v, out=out)
        self._next_layer += 1
        if self._next_layer == self.n_layers:
            self.kvlab.commit(self._plan)
            self._plan, self._cos, self._sin = None, None, None
        return out.view(B, T, H, d).to(device=query.device, dtype=query.dtype)
