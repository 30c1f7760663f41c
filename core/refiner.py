"""The learned backward process: a transformer over the tokens of all scales.

Sequence layout: one start token carrying the condition, then the n_1 + … + n_K positions of the
scales, coarse to fine. Position k's input is the pyramid *context* at its scale (what coarser
bands explain), plus a level embedding and an encoding of the domain's coordinates for that
position. Every position of a scale is predicted in parallel.

Masks (``mask``):

* ``block_causal`` (VAR): a scale attends to itself, every coarser scale and the start token.
* ``markov`` (SRDD's Markovian VAR): a scale attends only to itself and the start token; since its
  input already is the up-sampled previous state, it sees exactly the previous state.

Local windows (``window = W > 0``): a scale with more than W positions is *local*. Its positions
are cut into consecutive windows of W (the domain's order must keep a window compact, as HEALPix's
nested order does: 4^j consecutive pixels are one pixel j levels up), and a position attends to
the start token, the *global* scales (those with at most W positions; ``markov``: none of them) and
its own window only. The coarser bands still reach it through its context, so what it loses is
attention to far positions of its own scale and to the finer local scales' tokens. Attention
then costs n * (prefix + W) at a fine scale instead of n * L, and training may show the network a
random share ``train_windows`` of each local scale's windows (``training_positions``): the
features of the windows shown are exactly those of the full pass, so the fine scales train at a
fraction of their cost.

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


def _check_windows(tokens_per_scale: list[int], window: int, share: float) -> int:
    """The number of global scales (at most ``window`` positions each); they must come first,
    and every later (local) scale must hold whole windows."""
    if window < 0:
        raise ValueError(f"refiner.window must be >= 0 (0: every scale global), got {window}")
    if not 0 < share <= 1:
        raise ValueError(f"refiner.train_windows must be in (0, 1], got {share}")
    if window == 0:
        return len(tokens_per_scale)
    num_global = sum(n <= window for n in tokens_per_scale)
    if any(n > window for n in tokens_per_scale[:num_global]):
        raise ValueError(f"refiner.window={window}: the scales with at most {window} positions must "
                         f"be the coarsest ones (positions per scale: {tokens_per_scale})")
    bad = [n for n in tokens_per_scale[num_global:] if n % window]
    if bad:
        raise ValueError(f"refiner.window={window} must divide the positions of every finer scale "
                         f"({bad} do not); positions per scale: {tokens_per_scale}")
    return num_global


def pick_positions(t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """t [B, L, ...] at positions [B, L'] -> [B, L', ...]."""
    index = positions.view(*positions.shape, *[1] * (t.ndim - 2)).expand(-1, -1, *t.shape[2:])
    return t.gather(1, index)


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

    def forward(self, x, c, mask, cache: dict | None = None, local: tuple[int, int] | None = None):
        """``mask`` governs the first ``len(mask)`` positions of ``x`` (the global ones); with
        ``local = (prefix, W)`` the rest are windows of W that attend to the first ``prefix``
        keys of the sequence (from the cache when stepping) and to their own window. Only global
        positions enter the cache: no later position attends to a local one."""
        shift1, scale1, shift2, scale2 = self.ada(c).unsqueeze(1).chunk(4, -1)
        h = self.ln1(x) * (1 + scale1) + shift1
        B, n, d = h.shape
        q, k, v = self.qkv(h).view(B, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        g = n if local is None else len(mask)
        kg, vg = k[:, :, :g], v[:, :, :g]
        if cache is not None:
            if "k" in cache:
                kg, vg = torch.cat([cache["k"], kg], 2), torch.cat([cache["v"], vg], 2)
            cache["k"], cache["v"] = kg, vg
        drop = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q[:, :, :g], kg, vg, attn_mask=mask, dropout_p=drop) if g else None
        if g < n:
            prefix, W = local
            ql, kl, vl = (t[:, :, g:].unflatten(2, (-1, W)) for t in (q, k, v))
            G = ql.shape[2]
            kp, vp = (t[:, :, :prefix].unsqueeze(2).expand(-1, -1, G, -1, -1) for t in (kg, vg))
            # windows folded into the head dimension: 4-d inputs take the fused CPU kernel
            keys, values = (torch.cat(t, 3).flatten(1, 2) for t in ((kp, kl), (vp, vl)))
            al = F.scaled_dot_product_attention(ql.flatten(1, 2), keys, values, dropout_p=drop)
            al = al.unflatten(1, (-1, G)).flatten(2, 3)
            a = al if a is None else torch.cat([a, al], 2)
        x = x + self.proj(a.transpose(1, 2).reshape(B, n, d))
        h = self.ln2(x) * (1 + scale2) + shift2
        return x + self.mlp(h)


class ScaleTransformer(nn.Module):
    def __init__(self, in_channels: int, positions: list[torch.Tensor], num_classes: int = 0,
                 d_model: int = 128, layers: int = 2, heads: int = 4, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, mask: str = "block_causal", num_freqs: int = 4,
                 own_channels: int = 0, window: int = 0, train_windows: float = 1.0):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.tokens_per_scale = [len(p) for p in positions]
        self.window, self.train_windows = int(window), float(train_windows)
        self.num_global = _check_windows(self.tokens_per_scale, self.window, self.train_windows)
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

    @property
    def global_length(self) -> int:
        """Sequence entries (the start token included) that attend through the mask."""
        return int(self.offsets[self.num_global])

    def _local(self) -> tuple[int, int] | None:
        if self.num_global == self.num_scales:
            return None
        return (self.global_length if self.mask_kind == "block_causal" else 1), self.window

    def training_positions(self, batch: int, generator: torch.Generator | None = None):
        """Positions [batch, L'] (indices into the L positions) that one training step computes:
        every global position, and per item a random share ``train_windows`` of each local
        scale's windows (at least one). None: all positions (no local scales, or a share of 1)."""
        if self.num_global == self.num_scales or self.train_windows >= 1:
            return None
        W, parts = self.window, [torch.arange(self.global_length - 1).expand(batch, -1)]
        inside = torch.arange(W)
        for k in range(self.num_global, self.num_scales):
            windows = self.tokens_per_scale[k] // W
            shown = max(1, round(self.train_windows * windows))
            pick = torch.rand(batch, windows, generator=generator).argsort(1)[:, :shown].sort(1).values
            start = int(self.offsets[k]) - 1 + pick * W
            parts.append((start[..., None] + inside).flatten(1))
        return torch.cat(parts, 1).to(self.offsets.device)

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

    def _embed(self, contexts: torch.Tensor, where, own=None, visible=None) -> torch.Tensor:
        """Token embeddings of the positions ``where`` (a slice or [B, L'] indices, excluding the
        start token) whose contexts are given."""
        x = self.inp(contexts) + self.pos(self.pos_features[where]) + self.level_emb(self.level[where])
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

    def forward(self, contexts: torch.Tensor, cond: torch.Tensor, own=None, visible=None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced pass: contexts [B, L, C] of all scales -> features [B, L, d]
        (``own``/``visible``: the scales' own tokens and where they are shown, for refinement).
        The contexts of the first scales alone (a prefix of the sequence) give exactly those
        scales' features: no scale attends to a finer one. ``positions`` ([B, L'], from
        ``training_positions``): only those positions, features [B, L', d]; ``contexts``,
        ``own`` and ``visible`` are still given for all L."""
        c = self.cond_emb(cond)
        L = contexts.shape[1]
        where = slice(0, L)
        if positions is not None:  # global positions first (training_positions), then windows
            contexts, where = pick_positions(contexts, positions), positions
            own, visible = (None if t is None else pick_positions(t, positions) for t in (own, visible))
            L = positions.shape[1]
        x = torch.cat([c.unsqueeze(1), self._embed(contexts, where, own, visible)], 1)
        local = self._local()
        g = min(L + 1, self.global_length) if local else L + 1
        if (L + 1 - g) % max(self.window, 1):
            raise ValueError(f"a prefix of {L} positions ends inside a window of {self.window}")
        mask = self.mask[:g, :g]
        for block in self.blocks:
            x = block(x, c, mask, local=local)
        return self._out(x[:, 1:], c)

    def step(self, context: torch.Tensor, k: int, cond: torch.Tensor, cache: list, own=None,
             visible=None) -> torch.Tensor:
        """Scale k only: context [B, n_k, C] -> features [B, n_k, d]. ``cache`` is a list (one dict
        per block) that the caller keeps between scales; pass ``[]`` at k = 0. Stepping a scale
        again (refinement) first drops its earlier cache entries."""
        c = self.cond_emb(cond)
        lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
        x = self._embed(context, slice(lo - 1, hi - 1), own, visible)
        if k == 0:
            cache[:] = [{} for _ in self.blocks]
            x, lo = torch.cat([c.unsqueeze(1), x], 1), 0
        for block_cache in cache:
            if "k" in block_cache and block_cache["k"].shape[2] > lo:
                block_cache["k"], block_cache["v"] = block_cache["k"][:, :, :lo], block_cache["v"][:, :, :lo]
        local = k >= self.num_global
        mask = self.mask[lo:lo, :0] if local else self.mask[lo:hi, :hi]
        for block, block_cache in zip(self.blocks, cache):
            x = block(x, c, mask, block_cache, local=self._local())
        x = self._out(x, c)
        return x[:, 1:] if k == 0 else x
