# Torch tensors through the libtorch adapter (a module built with KVLAB_TORCH=ON, as
# scripts/build.sh does): any float dtype and strides in, torch tensors out, equal to the float32
# numpy path bit for bit. A module built without it refuses them with a clear TypeError.
import numpy as np
import pytest
import torch

import kvlab


def test_torch_tensors_of_any_float_dtype_and_strides(stories):
    g = stories.config
    q_dim, kv_dim = g["n_heads"] * g["head_dim"], g["n_kv_heads"] * g["head_dim"]
    a, b = (kvlab.Cache(stories, "kivi:bits=4,residual=2") for _ in range(2))
    ba, bb = a.plan([0], [3]), b.plan([0], [3])
    torch.manual_seed(0)
    for layer in range(g["n_layers"]):
        q = torch.randn(3, q_dim).half()
        k = torch.randn(3, 2 * kv_dim)[:, ::2]  # strided
        v = torch.randn(3, kv_dim).bfloat16()
        if not kvlab.WITH_TORCH:
            with pytest.raises(TypeError, match="expected dtype float32, got float16"):
                a.attend(layer, ba, q, k, v)
            return
        out = a.attend(layer, ba, q, k, v)
        ref = b.attend(layer, bb, q.float().numpy(), k.contiguous().numpy(), v.float().numpy())
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
        assert np.array_equal(out.numpy(), ref)
    a.commit(ba), b.commit(bb)
    pos, k, v = a.read_torch(2, 0)
    ref = b.read(2, 0)
    assert isinstance(k, torch.Tensor) and pos.tolist() == [0, 1, 2]
    assert np.array_equal(k.numpy(), ref[1]) and np.array_equal(v.numpy(), ref[2])
    out = torch.zeros(1, q_dim)
    batch = a.plan([0], [1])
    assert a.attend(0, batch, torch.randn(1, q_dim), torch.randn(1, kv_dim), torch.randn(1, kv_dim), out=out) is out
    assert out.abs().sum() > 0
    with pytest.raises(ValueError, match="q: dtype Double"):
        a.attend(1, batch, torch.randn(1, q_dim).double(), torch.randn(1, kv_dim), torch.randn(1, kv_dim))
