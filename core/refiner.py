"""The learned backward process: a transformer over the tokens of all scales.

Sequence layout: one start token carrying the condition, then the n_1 + … + n_K positions of the
scales, coarse to fine. Position k's input is the pyramid *context* at its scale (what coarser
bands explain), plus a level embedding and an encoding of the domain's coordinates for that
position. Every position of a scale is predicted in parallel.

Masks (``mask``):

* ``block_causal`` (VAR): a scale attends to itself, every coarser scale and the start token.
* ``markov`` (SRDD's Markovian VAR): a scale attends only to itself and the start token; since its
  input already is the up-sampled previous state, it sees exactly the previous state.

The condition (class label; ``num_classes`` is the null label for guidance) is the start token and
modulates every block (adaptive layer norm, as VAR). ``forward`` runs all scales at once for
training; ``step`` runs one scale with a key/value cache for sampling, giving the same features.

Within-scale refinement (``own_channels > 0``): every position also reads its scale's own tokens
(``own``, the de-quantised band values [B, n, own_channels]) where ``visible`` is True and a learned
mask embedding elsewhere, as MaskGIT and HMAR do; with ``own=None`` every position is masked, which
is the plain next-scale prediction. Running ``step`` again for a scale replaces that scale's cache
entries, so later scales attend to its last pass.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MASKS = ("block_causal", "markov")


def fourier_features(pos: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """[n, P] coordinates in [0, 1] -> [n, P * (2 * num_freqs + 1)]."""
    freqs = math.pi * 2.0 ** torch.arange(num_freqs, dtype=pos.dtype, device=pos.device)
    angles = pos[..., None] * freqs
    return torch.cat([pos[..., None], angles.sin(), angles.cos()], -1).flatten(-2)


def attention_mask(tokens_per_scale: list[int], kind: str) -> torch.Tensor:
    """Boolean [L+1, L+1] mask (True = may attend) over [start, scale 1 tokens, …, scale K]."""
    if kind not in MASKS:
        raise ValueError(f"unknown attention mask '{kind}'; choose one of {', '.join(MASKS)}")
    scale = torch.cat([torch.tensor([-1])] +
                      [torch.full((n,), k) for k, n in enumerate(tokens_per_scale)])
    q, kv = scale[:, None], scale[None, :]
    allowed = (kv <= q) if kind == "block_causal" else (kv == q)
    allowed = allowed | (kv == -1)
    allowed[0] = scale == -1  # the start token sees only itself
    return allowed


class Block(nn.Module):
    def __init__(self, d: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1 = nn.LayerNorm(d, elementwise_affine=False)
        self.ln2 = nn.LayerNorm(d, elementwise_affine=False)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        hidden = int(d * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
        self.ada = nn.Linear(d, 4 * d)  # condition -> shift/scale of both norms

    def forward(self, x, c, mask, cache: dict | None = None):
        shift1, scale1, shift2, scale2 = self.ada(c).unsqueeze(1).chunk(4, -1)
        h = self.ln1(x) * (1 + scale1) + shift1
        B, n, d = h.shape
        q, k, v = self.qkv(h).view(B, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        drop = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        x = x + self.proj(a.transpose(1, 2).reshape(B, n, d))
        h = self.ln2(x) * (1 + scale2) + shift2
        return x + self.mlp(h)


class ScaleTransformer(nn.Module):
    def __init__(self, in_channels: int, positions: list[torch.Tensor], num_classes: int = 0,
                 d_model: int = 128, layers: int = 2, heads: int = 4, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, mask: str = "block_causal", num_freqs: int = 4,
                 own_channels: int = 0):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.tokens_per_scale = [len(p) for p in positions]
        self.num_classes, self.d_model, self.mask_kind = num_classes, d_model, mask
        starts = torch.tensor([0] + self.tokens_per_scale).cumsum(0) + 1  # +1: start token
        self.register_buffer("offsets", starts, persistent=False)
        self.register_buffer("mask", attention_mask(self.tokens_per_scale, mask), persistent=False)
        pos = torch.cat([fourier_features(p.float(), num_freqs) for p in positions])
        self.register_buffer("pos_features", pos, persistent=False)
        level = torch.cat([torch.full((n,), k) for k, n in enumerate(self.tokens_per_scale)])
        self.register_buffer("level", level, persistent=False)

        self.inp = nn.Linear(in_channels, d_model)
        self.pos = nn.Linear(pos.shape[1], d_model)
        self.level_emb = nn.Embedding(len(positions), d_model)
        self.cond_emb = nn.Embedding(num_classes + 1, d_model)
        self.own = nn.Linear(own_channels, d_model) if own_channels else None
        self.mask_emb = nn.Parameter(torch.zeros(d_model)) if own_channels else None
        self.blocks = nn.ModuleList(Block(d_model, heads, mlp_ratio, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False)
        self.ada_out = nn.Linear(d_model, 2 * d_model)
        self.apply(self._init)
        for ada in [b.ada for b in self.blocks] + [self.ada_out]:  # start as plain layer norms
            nn.init.zeros_(ada.weight)
            nn.init.zeros_(ada.bias)
        if self.mask_emb is not None:
            nn.init.trunc_normal_(self.mask_emb, std=0.02)

    @property
    def refinable(self) -> bool:
        return self.own is not None

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=0.02)

    @property
    def num_scales(self) -> int:
        return len(self.tokens_per_scale)

    def _embed(self, contexts: torch.Tensor, lo: int, hi: int, own=None, visible=None) -> torch.Tensor:
        """Token embeddings of sequence positions [lo, hi) (excluding the start token)."""
        sl = slice(lo - 1, hi - 1)
        x = self.inp(contexts) + self.pos(self.pos_features[sl]) + self.level_emb(self.level[sl])
        if self.own is None:
            if own is not None:
                raise ValueError("this refiner was built without own-token inputs (own_channels=0)")
            return x
        if own is None:
            return x + self.mask_emb
        return x + torch.where(visible.unsqueeze(-1), self.own(own), self.mask_emb)

    def _out(self, x, c):
        shift, scale = self.ada_out(c).unsqueeze(1).chunk(2, -1)
        return self.norm(x) * (1 + scale) + shift

    def forward(self, contexts: torch.Tensor, cond: torch.Tensor, own=None, visible=None) -> torch.Tensor:
        """Teacher-forced pass: contexts [B, L, C] of all scales -> features [B, L, d]
        (``own``/``visible``: the scales' own tokens and where they are shown, for refinement).
        The contexts of the first scales alone (a prefix of the sequence) give exactly those
        scales' features: no scale attends to a finer one."""
        c = self.cond_emb(cond)
        L = contexts.shape[1]
        x = torch.cat([c.unsqueeze(1), self._embed(contexts, 1, L + 1, own, visible)], 1)
        mask = self.mask[: L + 1, : L + 1]
        for block in self.blocks:
            x = block(x, c, mask)
        return self._out(x[:, 1:], c)

    def step(self, context: torch.Tensor, k: int, cond: torch.Tensor, cache: list, own=None,
             visible=None) -> torch.Tensor:
        """Scale k only: context [B, n_k, C] -> features [B, n_k, d]. ``cache`` is a list (one dict
        per block) that the caller keeps between scales; pass ``[]`` at k = 0. Stepping a scale
        again (refinement) first drops its earlier cache entries."""
        c = self.cond_emb(cond)
        lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
        x = self._embed(context, lo, hi, own, visible)
        if k == 0:
            cache[:] = [{} for _ in self.blocks]
            x, lo = torch.cat([c.unsqueeze(1), x], 1), 0
        for block_cache in cache:
            if "k" in block_cache and block_cache["k"].shape[2] > lo:
                block_cache["k"], block_cache["v"] = block_cache["k"][:, :, :lo], block_cache["v"][:, :, :lo]
        mask = self.mask[lo:hi, :hi]
        for block, block_cache in zip(self.blocks, cache):
            x = block(x, c, mask, block_cache)
        x = self._out(x, c)
        return x[:, 1:] if k == 0 else x
