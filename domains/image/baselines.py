"""Baselines for the MNIST benchmark, trained and scored in the same harness as the refiner.

``domain.baseline=ddpm``: a class-conditional DDPM on 28x28 pixels in [-1, 1] (Ho et al. 2020):
a small UNet predicts the noise epsilon, linear betas from 1e-4 to 0.02 over 1000 steps, 10% of
the labels replaced by the null label so that one network gives classifier-free guidance.
Samplers (``domain.ddpm.sampler``, ``domain.ddpm.steps``): ancestral DDPM (posterior variance
beta-tilde; with fewer steps than the training schedule it runs on the respaced schedule) and
deterministic DDIM (eta = 0). The predicted clean image is clipped to [-1, 1] at every step.

``domain.baseline=ar``: a next-token transformer over exactly the codes the latent refiner
predicts -- the tokenizer's multi-scale codes, flattened coarse to fine and in raster order inside
each scale (1 + 4 + 9 + 16 + 25 + 49 = 104 tokens for scales 1-2-3-4-5-7) -- with the refiner's
blocks and sizes (``refiner.*``), the class as start token and adaLN condition, a key/value cache,
and the same tokenizer to decode.

How the core drives them (nothing in the core knows about them):

* both come from the image plugin's ``c2f_model`` hook and train with the core trainer
  (``loss(batch, generator)``: seeded, checkpointed, resumable) under ``train.*``;
* the AR follows the scale-model protocol with one "scale" per token: ``num_scales`` = number of
  tokens, so the core sampler draws every token (temperature, top-k/p, guidance and its schedule)
  and counts one call per token;
* the DDPM follows it too, with the noisy image as its state and one "scale" per sampling step;
  its scheduler (``DDPM.scheduler``: ``core.diffusion``'s DDPM or DDIM over the model's noise
  schedule) takes the guidance weight and schedule of the sample settings.

NFE counts network calls per sample. Guidance doubles the batch of one call (conditional and null
label together), exactly as in the refiner and the AR, so a guided call counts once everywhere:
DDPM-1000 = 1000, DDIM-50 = 50, AR = 104, refiner = number of scales.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.model import drop_labels
from core.refiner import Block
from core.diffusion import DDIMScheduler, DDPMScheduler, respaced_timesteps
from core.sampler import Guidance
from core.targets import Prediction

SAMPLERS = ("ddpm", "ddim")


# ---------------------------------------------------------------- UNet
def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of integer timesteps [B] (as the Transformer's positions)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], -1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """Two 3x3 convs; the time + class embedding scales and shifts the second norm."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # every block starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, 1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.dropout(F.silu(h)))


class SelfAttention(nn.Module):
    """Multi-head self-attention over the positions of a feature map (residual)."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, emb=None) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).view(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(a.transpose(-1, -2).reshape(B, C, H, W))


class UNet(nn.Module):
    """The DDPM noise predictor for [B, 1, 28, 28] images: 28 -> 14 -> 7 and back, ``blocks``
    residual blocks per level (``blocks + 1`` on the way up, fed by the skips), self-attention at
    7x7 and in the middle. Conditioned on the timestep and the class (``num_classes`` = null)."""

    def __init__(self, num_classes: int = 10, width: int = 32, mults=(1, 2, 3), blocks: int = 2,
                 dropout: float = 0.0, heads: int = 4):
        super().__init__()
        chans = [width * m for m in mults]
        emb_dim = 4 * width
        self.width = width
        self.time_mlp = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim)
        self.inp = nn.Conv2d(1, chans[0], 3, padding=1)
        last = len(chans) - 1

        self.down = nn.ModuleList()
        skips, c = [chans[0]], chans[0]
        for level, ch in enumerate(chans):
            for _ in range(blocks):
                self.down.append(ResBlock(c, ch, emb_dim, dropout))
                c = ch
                if level == last:
                    self.down.append(SelfAttention(c, heads))
                skips.append(c)
            if level != last:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # 28 -> 14 -> 7
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, dropout), SelfAttention(c, heads),
                                  ResBlock(c, c, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, ch in reversed(list(enumerate(chans))):
            for _ in range(blocks + 1):
                self.up.append(ResBlock(c + skips.pop(), ch, emb_dim, dropout))
                c = ch
                if level == last:
                    self.up.append(SelfAttention(c, heads))
            if level != 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(c, c, 3, padding=1)))
        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, 1, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        emb = F.silu(self.time_mlp(timestep_embedding(t, self.width)) + self.class_emb(cond))
        h = self.inp(x)
        skips = [h]
        for layer in self.down:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
                skips.append(h)
            elif isinstance(layer, SelfAttention):
                h = skips[-1] = layer(h)
            else:
                h = layer(h)
                skips.append(h)
        for layer in self.mid:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, skips.pop()], 1), emb)
            else:
                h = layer(h)
        return self.out(h)


# ---------------------------------------------------------------- DDPM
class DDPM(nn.Module):
    """Epsilon-prediction diffusion on pixels with a linear beta schedule (training and sampling).

    Sampling settings (``sampler``, ``steps``) are plain attributes, so one trained network can be
    sampled every way: set them before ``generate``.
    """

    def __init__(self, unet: nn.Module, num_classes: int = 10, timesteps: int = 1000,
                 beta_start: float = 1e-4, beta_end: float = 0.02, label_drop: float = 0.1,
                 sampler: str = "ddpm", steps: int | None = None):
        super().__init__()
        self.unet, self.num_classes, self.label_drop = unet, num_classes, label_drop
        self.timesteps = int(timesteps)
        betas = torch.linspace(beta_start, beta_end, self.timesteps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, 0)
        # derived from the settings, not learned: kept out of checkpoints
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.set_sampler(sampler, steps)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def set_sampler(self, sampler: str, steps: int | None = None):
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown diffusion sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}")
        steps = self.timesteps if steps is None else int(steps)
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"sampling steps must be in 1..{self.timesteps}, got {steps}")
        self.sampler, self.steps = sampler, steps

    @property
    def num_scales(self) -> int:
        """Network calls per sample (the core's name for it)."""
        return self.steps

    def sampling_timesteps(self) -> list[int]:
        """The ``steps`` timesteps visited, from T-1 down to 0, evenly spaced."""
        return respaced_timesteps(self.timesteps, self.steps)

    def scheduler(self, guidance: Guidance | None = None):
        """The scheduler of ``sampler`` over this model's noise schedule (``core.diffusion``)."""
        kind = DDIMScheduler if self.sampler == "ddim" else DDPMScheduler
        return kind(self.alphas_cumprod, self.steps, guidance)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) epsilon (the forward noising)."""
        abar = self.alphas_cumprod[t].view(-1, *[1] * (x0.ndim - 1))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def loss(self, batch, generator: torch.Generator | None = None):
        x, cond = batch
        cond = drop_labels(cond, x.shape[0], self.num_classes, self.label_drop, generator, x.device)
        t = torch.randint(0, self.timesteps, (x.shape[0],), generator=generator).to(x.device)
        noise = torch.randn(x.shape, generator=generator).to(x)
        loss = F.mse_loss(self.unet(self.q_sample(x, t, noise), t, cond.to(x.device)), noise)
        return loss, {"mse": float(loss.detach())}

    def forward(self, batch, generator: torch.Generator | None = None):
        return self.loss(batch, generator)

    # the scale-model protocol (``core.protocol``): the state is the noisy image x_t
    def init_state(self, cond: torch.Tensor, generators: list[torch.Generator]) -> dict:
        """x_T: member i's starting noise from its own generator (both halves of a guided batch)."""
        x = torch.stack([torch.randn(1, 28, 28, generator=g) for g in generators])
        x = x.to(self.alphas_cumprod.device)
        return {"x": x.repeat(len(cond) // len(x), 1, 1, 1)}

    def predict(self, state: dict, t: int, cond: torch.Tensor) -> dict:
        x = state["x"]
        eps = self.unet(x, torch.full((len(x),), t, device=x.device), cond.to(x.device))
        return {"x": Prediction("epsilon", eps, sample=x)}

    def add_band(self, state: dict, tokens: dict, k: int) -> dict:
        state["x"] = tokens["x"]
        return state

    def finish(self, state: dict) -> torch.Tensor:
        return state["x"]


# ---------------------------------------------------------------- next-token AR over the codes
class CodeAR(nn.Module):
    """GPT-style transformer over a frozen tokenizer's multi-scale codes, one token per call.

    Sequence: [class start token, c_0, ..., c_{L-2}] -> predicts [c_0, ..., c_{L-1}], where c is
    the codes of all scales flattened coarse to fine (raster order within a scale). The blocks are
    the refiner's (``core.refiner.Block``: adaLN on the class, key/value cache).
    """

    def __init__(self, tokenizer: nn.Module, num_classes: int = 10, d_model: int = 192,
                 layers: int = 4, heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 label_drop: float = 0.1):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.tokenizer = tokenizer.requires_grad_(False)  # the forward process is fixed
        self.num_classes, self.label_drop = num_classes, label_drop
        self.tokens_per_scale = list(tokenizer.tokens_per_scale)
        self.length = sum(self.tokens_per_scale)
        self.num_codes = tokenizer.quantizer.num_codes
        self.tok_emb = nn.Embedding(self.num_codes, d_model)
        self.pos_emb = nn.Parameter(torch.zeros(self.length, d_model))
        self.cond_emb = nn.Embedding(num_classes + 1, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, mlp_ratio, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False)
        self.ada_out = nn.Linear(d_model, 2 * d_model)
        self.head = nn.Linear(d_model, self.num_codes)
        causal = torch.ones(self.length, self.length, dtype=torch.bool).tril()
        self.register_buffer("causal", causal, persistent=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.trunc_normal_(self.pos_emb, std=0.02)
        for ada in [b.ada for b in self.blocks] + [self.ada_out]:  # start as plain layer norms
            nn.init.zeros_(ada.weight)
            nn.init.zeros_(ada.bias)

    @property
    def num_scales(self) -> int:
        """Network calls per sample: one per token."""
        return self.length

    @property
    def null_label(self) -> int:
        return self.num_classes

    def train(self, mode: bool = True):
        super().train(mode)
        self.tokenizer.eval()  # frozen: no codebook usage tracking or dead-code restarts
        return self

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the flat code sequence [B, L] (coarse to fine, raster order per scale)."""
        return torch.cat([c[..., 0] for c in self.tokenizer.codes(x)], 1)

    def _out(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada_out(c).unsqueeze(1).chunk(2, -1)
        return self.head(self.norm(h) * (1 + scale) + shift)

    def logits(self, codes: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Teacher-forced pass: codes [B, L] -> next-token logits [B, L, V]."""
        c = self.cond_emb(cond)
        x = torch.cat([c.unsqueeze(1), self.tok_emb(codes[:, :-1])], 1) + self.pos_emb
        for block in self.blocks:
            x = block(x, c, self.causal)
        return self._out(x, c)

    def loss(self, batch, generator: torch.Generator | None = None):
        x, cond = batch
        cond = drop_labels(cond, x.shape[0], self.num_classes, self.label_drop, generator, x.device)
        codes = self.codes(x)
        logits = self.logits(codes, cond)
        loss = F.cross_entropy(logits.reshape(-1, self.num_codes), codes.reshape(-1))
        return loss, {"token_acc": float((logits.argmax(-1) == codes).float().mean())}

    def forward(self, batch, generator: torch.Generator | None = None):
        return self.loss(batch, generator)

    # the scale-model protocol, one token per "scale"
    def init_state(self, cond: torch.Tensor, generators=None) -> dict:
        return {"codes": [], "cache": []}

    def predict(self, state: dict, k: int, cond: torch.Tensor) -> dict:
        c = self.cond_emb(cond.to(self.pos_emb.device))
        if k == 0:
            state["cache"] = [{} for _ in self.blocks]
            x = c.unsqueeze(1)
        else:
            x = self.tok_emb(state["codes"][-1]).unsqueeze(1)
        x = x + self.pos_emb[k]
        for block, cache in zip(self.blocks, state["cache"]):
            x = block(x, c, None, cache)  # the one new query sees every cached position
        return {"token": Prediction("index", self._out(x, c).unsqueeze(2))}  # [B, 1, 1, V]

    def add_band(self, state: dict, tokens: dict, k: int) -> dict:
        state["codes"].append(tokens["token"].reshape(-1))
        return state

    def finish(self, state: dict) -> torch.Tensor:
        flat = torch.stack(state["codes"], 1)
        codes = [part.unsqueeze(-1) for part in flat.split(self.tokens_per_scale, 1)]
        z = self.tokenizer.pyramid.decode(codes)
        return self.tokenizer.decode(z)


# ---------------------------------------------------------------- from the config
def build_ddpm(cfg) -> DDPM:
    d = cfg.domain.ddpm
    unet = UNet(num_classes=10, width=d.width, mults=tuple(d.mults), blocks=d.blocks,
                dropout=d.get("dropout", 0.0))
    return DDPM(unet, num_classes=10, timesteps=d.timesteps, beta_start=d.beta_start,
                beta_end=d.beta_end, label_drop=cfg.model.label_drop, sampler=d.sampler, steps=d.steps)


def build_ar(cfg, tokenizer) -> CodeAR:
    r = cfg.refiner
    return CodeAR(tokenizer, num_classes=10, d_model=r.d_model, layers=r.layers, heads=r.heads,
                  mlp_ratio=r.mlp_ratio, dropout=r.dropout, label_drop=cfg.model.label_drop)
