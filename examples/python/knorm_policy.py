"""Key-norm eviction, a kvlab policy written in Python: `knorm:budget=B,window=W`.

Each layer keeps at most B tokens of each sequence. When a forward leaves more, the older tokens
with the largest key L2 norm go first (keys of low norm draw the most attention: Devoto et al.,
2024, kvpress's KnormPress); the newest W tokens always stay. budget=0 keeps everything: the off
setting, which reproduces full:dtype=f32's logits bit for bit (same attention engine, same blocks).
Importing this module registers the policy.
"""
import io

import numpy as np

import kvlab


class KnormPolicy(kvlab.Policy):
    def __init__(self, ctx, params):
        super().__init__(ctx, params)
        self.budget, self.window = params["budget"], params["window"]
        if self.budget < 0 or self.window < 0 or (self.budget and self.window >= self.budget):
            raise ValueError(f"need budget >= 0 and 0 <= window < budget (got {self.budget}, {self.window})")
        self.seqs = {}  # (layer, slot) -> [positions, post-RoPE keys, values, n]: ledger-booked arrays
        self.evicted = 0

    def _history(self, layer, slot):
        s = self.seqs.get((layer, slot))
        return None if s is None else (s[0][:s[3]], s[1][:s[3]], s[2][:s[3]])

    def _alloc(self, cap):  # [positions, keys, values] for cap tokens, booked on the ledger
        return [self.ctx.allocate("index", (cap,), np.int32), self.ctx.allocate("payload", (cap, self.ctx.kv_dim)),
                self.ctx.allocate("payload", (cap, self.ctx.kv_dim))]

    def _blocks(self, n):  # n tokens rounded up to whole blocks
        return -(-n // self.ctx.block_tokens) * self.ctx.block_tokens

    def _store(self, layer, slot, pos, k, v, spare=True):
        s = self.seqs.get((layer, slot))
        n = 0 if s is None else s[3]
        if s is None or n + len(pos) > len(s[0]):  # grow by doubling
            g = self._alloc(self._blocks((2 if spare else 1) * (n + len(pos)))) + [n]
            if s is not None:
                for a, b in zip(g[:3], s[:3]):
                    a[:n] = b[:n]
            s = self.seqs[(layer, slot)] = g
        s[0][n:n + len(pos)], s[1][n:n + len(pos)], s[2][n:n + len(pos)] = pos, k, v
        s[3] = n + len(pos)

    def _keep(self, layer, slot, keep):  # keep: sorted indices of the tokens that stay
        s = self.seqs[(layer, slot)]
        cap = self._blocks(len(keep) + self.ctx.block_tokens)  # a block of room for the next tokens
        g = self._alloc(cap) if cap < len(s[0]) else s[:3]  # evicted memory is given back
        for a, b in zip(g, s[:3]):
            a[:len(keep)] = b[keep]
        self.seqs[(layer, slot)] = g + [len(keep)]

    def attend(self, layer, batch, q, k, v, out):
        hist = [self._history(layer, slot) for slot, *_ in batch.seqs]
        k_rot = self.ctx.attend(layer, batch, q, k, v, out, hist, self.ctx.block_tokens)
        pos = batch.positions
        for slot, _, n_new, row, _ in batch.seqs:
            self._store(layer, slot, pos[row:row + n_new], k_rot[row:row + n_new], v[row:row + n_new])

    def commit(self, batch):
        for layer in range(self.ctx.first_layer, self.ctx.last_layer + 1):
            for slot, *_ in batch.seqs:
                n = self.seqs[(layer, slot)][3]
                if self.budget == 0 or n <= self.budget:
                    continue
                norms = np.linalg.norm(self.seqs[(layer, slot)][1][:n - self.window], axis=1)
                older = np.sort(np.argsort(norms, kind="stable")[:self.budget - self.window])
                self._keep(layer, slot, np.concatenate([older, np.arange(n - self.window, n)]))
                self.evicted += n - self.budget

    def stored_tokens(self, layer, slot):
        s = self.seqs.get((layer, slot))
        return 0 if s is None else s[3]

    def crop(self, slot, n_tokens):
        for (layer, s), st in self.seqs.items():
            if s == slot:
                self._keep(layer, slot, np.flatnonzero(st[0][:st[3]] < n_tokens))

    def reset(self, slot):
        for key in [key for key in self.seqs if key[1] == slot]:
            del self.seqs[key]

    def read(self, layer, slot):
        h = self._history(layer, slot)
        return h if h is not None else (np.zeros(0, np.int32), *[np.zeros((0, self.ctx.kv_dim), np.float32)] * 2)

    def save(self):
        f = io.BytesIO()
        np.save(f, np.array([[layer, slot, s[3]] for (layer, slot), s in self.seqs.items()], np.int64).reshape(-1, 3))
        for key in self.seqs:
            for a in self._history(*key):
                np.save(f, a)
        return f.getvalue()

    def load(self, state):
        f = io.BytesIO(state)
        self.seqs = {}
        for layer, slot, n in np.load(f, allow_pickle=False):
            pos, k, v = (np.load(f, allow_pickle=False) for _ in range(3))
            if not (self.ctx.first_layer <= layer <= self.ctx.last_layer and 0 <= slot < self.ctx.max_seqs
                    and len(pos) == len(k) == len(v) == n and k.shape[1:] == v.shape[1:] == (self.ctx.kv_dim,)):
                raise ValueError(f"knorm state: bad entry for layer {layer}, slot {slot}")
            self._store(int(layer), int(slot), pos.astype(np.int32), k, v, spare=False)

    def report(self):
        return {"evicted_tokens": self.evicted}


kvlab.register_policy(
    "knorm", KnormPolicy, summary="key-norm eviction (Python): the largest-norm keys go beyond a budget",
    params={"budget": (0, "tokens kept per layer and sequence; 0: all"),
            "window": (8, "newest tokens never evicted")},
    test_specs=["knorm", "knorm:budget=48,window=8"], off_spec="knorm:budget=0")
