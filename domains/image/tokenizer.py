"""The image tokenizer: a small conv VQ autoencoder whose quantiser is the core's residual pyramid.

This is VAR's tokenizer (multi-scale residual VQ on a latent grid, one shared codebook) at MNIST
size, with the training code VAR does not ship:

* ``encode``: a conv net maps a [B, 1, 28, 28] image in [-1, 1] to a continuous latent
  [B, C, 7, 7] (or [B, C, 14, 14] with ``latent_size=14``).
* the forward process is ``core.pyramid.ResidualPyramid`` on that latent, with the core's grid
  operators (area down, bicubic up) and ``VectorQuantizer`` (codebook shared by all scales,
  per-scale usage statistics, dead-code restarts). The default latent scales are 1, 2, 3, 4, 5, 7
  (104 tokens per image); for 14x14 latents 1, 2, 3, 4, 6, 8, 10, 14.
* ``decode``: the mirrored conv net maps a (composed) latent back to an image in [-1, 1].

``forward`` runs the pyramid and recomposes its straight-through bands, so the reconstruction loss
reaches the encoder; the pyramid's VQ loss (codebook + commitment, averaged over scales as in VAR)
trains the codebook and keeps the latents near it. ``train_tokenizer`` also decodes each image from
a random prefix of its bands (``partial_weight``): this makes the coarse tokens carry the coarse
image and keeps the coarse scales from collapsing onto one code, which they otherwise do.

The core's ``ScaleModel`` uses a trained tokenizer frozen: ``tokenizer.encode`` then
``tokenizer.pyramid.encode`` forwards, ``tokenizer.decode`` of the finished state backwards.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.grid import GridOps
from core.io import save_atomic
from core.pyramid import ResidualPyramid, unflat
from core.quantizers import IdentityQuantizer, VectorQuantizer

DEFAULT_SCALES = {7: [1, 2, 3, 4, 5, 7], 14: [1, 2, 3, 4, 6, 8, 10, 14]}
IMAGE_SIZE = 28


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                  _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv (no checkerboard artefacts of transposed convs)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _encoder(channels: int, width: int, latent_size: int) -> nn.Sequential:
    w1, w2, w4 = width // 2, width, 2 * width
    layers = [nn.Conv2d(1, w1, 3, padding=1), _norm(w1), nn.SiLU(),
              nn.Conv2d(w1, w2, 4, stride=2, padding=1), ResBlock(w2)]           # 28 -> 14
    if latent_size == 7:
        layers += [nn.Conv2d(w2, w4, 4, stride=2, padding=1), ResBlock(w4)]      # 14 -> 7
    else:
        layers += [nn.Conv2d(w2, w4, 3, padding=1), ResBlock(w4)]
    layers += [_norm(w4), nn.SiLU(), nn.Conv2d(w4, channels, 1)]
    return nn.Sequential(*layers)


def _decoder(channels: int, width: int, latent_size: int) -> nn.Sequential:
    w1, w2, w4 = width // 2, width, 2 * width
    layers = [nn.Conv2d(channels, w4, 3, padding=1), ResBlock(w4)]
    if latent_size == 7:
        layers += [Upsample(w4, w2), ResBlock(w2)]                                 # 7 -> 14
    else:
        layers += [nn.Conv2d(w4, w2, 3, padding=1), ResBlock(w2)]
    layers += [Upsample(w2, w1), _norm(w1), nn.SiLU(), nn.Conv2d(w1, 1, 3, padding=1)]  # 14 -> 28
    return nn.Sequential(*layers)


class VQTokenizer(nn.Module):
    """Conv encoder/decoder around a multi-scale residual VQ pyramid on a 7x7 (or 14x14) latent.

    Args:
        channels: latent channels C (= the codebook's vector size).
        num_codes: codebook size V, shared by all scales.
        scales: latent grid sizes coarse to fine; the last must equal ``latent_size``.
        latent_size: 7 or 14.
        width: base conv width (the widest layers have ``2 * width`` channels).
        variant: ``"var"`` (state at the finest size, VAR) or ``"laplacian"`` (see core.pyramid).
        beta: commitment weight of the VQ loss.
        dead_after: quantiser calls (one per scale per training forward) before an unused code is
            restarted from a current band vector.
        up_mode: up-sampling of the grid operators (bicubic as VAR).
    """

    def __init__(self, channels: int = 16, num_codes: int = 64, scales=None, latent_size: int = 7,
                 width: int = 32, variant: str = "var", beta: float = 0.25, dead_after: int = 50,
                 up_mode: str = "bicubic"):
        super().__init__()
        if latent_size not in DEFAULT_SCALES:
            raise ValueError(f"latent_size must be 7 or 14, got {latent_size}")
        scales = list(DEFAULT_SCALES[latent_size] if scales is None else scales)
        scales = [int(s) if not isinstance(s, (tuple, list)) else [int(v) for v in s] for s in scales]
        last = scales[-1] if isinstance(scales[-1], list) else [scales[-1]] * 2
        if list(last) != [latent_size, latent_size]:
            raise ValueError(f"the finest scale must be the latent size {latent_size}, got {scales[-1]}")
        if width < 2 or width % 2:
            raise ValueError(f"width must be an even number >= 2, got {width}")
        self.config = {"channels": int(channels), "num_codes": int(num_codes), "scales": scales,
                       "latent_size": int(latent_size), "width": int(width), "variant": str(variant),
                       "beta": float(beta), "dead_after": int(dead_after), "up_mode": str(up_mode)}
        self.channels, self.scales, self.latent_size = int(channels), scales, int(latent_size)
        self.encoder = _encoder(channels, width, latent_size)
        self.decoder = _decoder(channels, width, latent_size)
        self.quantizer = VectorQuantizer(channels, num_codes=num_codes, num_scales=len(scales),
                                         beta=beta, dead_after=dead_after)
        self.pyramid = ResidualPyramid(GridOps(scales, up_mode=up_mode), self.quantizer, variant=variant)

    @property
    def num_scales(self) -> int:
        return self.pyramid.num_scales

    @property
    def tokens_per_scale(self) -> list[int]:
        return [h * w for h, w in self.pyramid.ops.sizes]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 1, 28, 28] in [-1, 1] -> continuous latent [B, C, h, w]."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"VQTokenizer expects images [B, 1, 28, 28], got {tuple(x.shape)}")
        return self.encoder(x)

    def decode(self, z_hat: torch.Tensor) -> torch.Tensor:
        """Latent [B, C, h, w] -> images [B, 1, 28, 28] in [-1, 1]."""
        return torch.tanh(self.decoder(z_hat))

    def quantize(self, z: torch.Tensor, keep: torch.Tensor | None = None):
        """Run the pyramid on a latent; return (composed latent with straight-through gradient, codes).

        With ``keep`` ([B] long in 1..K) sample i is composed from its first ``keep[i]`` bands only
        (a partial pyramid, as ``pyramid.decode(codes, upto=k)`` but differentiable).
        """
        enc = self.pyramid.encode(z)
        state = self.pyramid.init_state(z.shape[0], z.shape[1], z.device)
        partial = None
        for k, values in enumerate(enc.values):
            state = self.pyramid.add_band(state, unflat(values, self.pyramid.ops.sizes[k]), k)
            if keep is not None:
                done = self.pyramid.finish(state)
                pick = (keep == k + 1).view(-1, *[1] * (done.ndim - 1))
                partial = torch.where(pick, done, done if partial is None else partial)
        z_hat = self.pyramid.finish(state)
        return (z_hat, enc) if keep is None else (z_hat, enc, partial)

    def forward(self, x: torch.Tensor, l1_weight: float = 0.0, vq_weight: float = 1.0,
                partial_weight: float = 0.0, partial_bias: float = 1.0,
                generator: torch.Generator | None = None):
        """Reconstruct through the full pyramid; losses: ``loss`` = recon + vq (+ l1, + partial).

        ``partial_weight`` > 0 adds the reconstruction error of each image decoded from its first k
        bands only, k drawn per image from 1..K-1 with probability proportional to
        ``k ** -partial_bias`` (0: uniform; the default 1 favours the coarsest bands, whose few
        tokens otherwise get the weakest signal). Without it nothing asks the coarse bands to carry
        information: the VQ loss alone is smallest when the encoder makes the coarse means constant
        and leaves everything to the finest band (coarse-scale collapse: one code at scale 0).
        """
        z = self.encode(x)
        K = self.num_scales
        keep = None
        if partial_weight > 0 and K > 1:
            weights = torch.arange(1, K, dtype=torch.float).pow(-partial_bias)
            keep = torch.multinomial(weights, x.shape[0], replacement=True, generator=generator) + 1
            keep = keep.to(x.device)
            z_hat, enc, z_part = self.quantize(z, keep)
        else:
            z_hat, enc = self.quantize(z)
        x_rec = self.decode(z_hat)
        recon = F.mse_loss(x_rec, x)
        vq = enc.loss / K
        loss = recon + vq_weight * vq
        losses = {"recon": recon, "vq": vq}
        if l1_weight > 0:
            l1 = F.l1_loss(x_rec, x)
            loss = loss + l1_weight * l1
            losses["l1"] = l1
        if keep is not None:
            partial = F.mse_loss(self.decode(z_part), x)
            loss = loss + partial_weight * partial
            losses["partial"] = partial
        losses["loss"] = loss
        return x_rec, losses

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Detail tokens per scale, [B, n_k, 1] long (eval mode: no usage tracking or restarts)."""
        was = self.training
        self.eval()
        try:
            return self.pyramid.encode(self.encode(x)).codes
        finally:
            self.train(was)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """Images decoded from the first ``upto`` bands (all by default)."""
        return self.decode(self.pyramid.decode(self.codes(x), upto=upto))

    @torch.no_grad()
    def init_codebook(self, x: torch.Tensor, iters: int = 10, generator: torch.Generator | None = None,
                      balanced: bool = True):
        """k-means on the (lossless) pyramid bands of the encoder's outputs for images ``x``.

        The bands come from the same pyramid with an identity quantiser, so the codebook starts on
        the vectors every scale would have to code: coarse means and finer residuals alike. With
        ``balanced`` every scale contributes as many vectors as the coarsest (one per image), so
        the many fine-scale residuals do not claim the whole codebook.
        """
        z = self.encode(x)
        lossless = ResidualPyramid(self.pyramid.ops, IdentityQuantizer(self.channels),
                                   self.pyramid.variant, self.pyramid.target_state)
        bands = [v.reshape(-1, self.channels) for v in lossless.encode(z).values]
        if balanced:
            n = min(len(b) for b in bands)
            # CPU generator: the same subsets on every device
            bands = [b[torch.randperm(len(b), generator=generator)[:n].to(b.device)] for b in bands]
        self.quantizer.kmeans_init(torch.cat(bands), iters=iters, generator=generator)
        self.quantizer.idle.zero_()

    @torch.no_grad()
    def reconstruction_by_band(self, x: torch.Tensor, batch_size: int = 500) -> list[float]:
        """Image-space MSE when decoding the first k bands, k = 1..K."""
        sums = torch.zeros(self.num_scales, dtype=torch.float64)
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            codes = self.codes(xb)
            for k in range(1, self.num_scales + 1):
                rec = self.decode(self.pyramid.decode(codes, upto=k))
                sums[k - 1] += float((rec - xb).pow(2).sum())
        return (sums / x.numel()).tolist()

    @torch.no_grad()
    def codebook_usage(self, x: torch.Tensor | None = None, batch_size: int = 500) -> dict[str, float]:
        """Per-scale share of codes used and perplexity (``quantizer.usage_stats``).

        Without ``x``: the counts accumulated by training forwards since the last
        ``quantizer.reset_usage()``. With ``x``: the counts of the deterministic codes of ``x``
        (the accumulated counts are left untouched).
        """
        if x is None:
            return self.quantizer.usage_stats()
        saved = self.quantizer.usage.clone()
        self.quantizer.reset_usage()
        try:
            for i in range(0, len(x), batch_size):
                for k, c in enumerate(self.codes(x[i:i + batch_size])):
                    self.quantizer.usage[k] += torch.bincount(c.flatten(), minlength=self.quantizer.num_codes)
            return self.quantizer.usage_stats()
        finally:
            self.quantizer.usage.copy_(saved)


@torch.no_grad()
def evaluate_tokenizer(model: VQTokenizer, images: torch.Tensor, batch_size: int = 500) -> dict:
    """Reconstruction MSE (all bands), MSE per number of bands, codebook usage per scale."""
    band_mse = model.reconstruction_by_band(images, batch_size)
    out = {"recon_mse": band_mse[-1], "band_mse": band_mse}
    out.update(model.codebook_usage(images, batch_size))
    return out


class TokenizerObjective(nn.Module):
    """The tokenizer's training loss in the trainer's form, ``forward(batch, generator) -> (loss,
    logs)``; the codebook gets no weight decay."""

    def __init__(self, tokenizer: VQTokenizer, **loss_weights):
        super().__init__()
        self.tokenizer, self.loss_weights = tokenizer, loss_weights

    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if "codebook" in n}

    def forward(self, batch: torch.Tensor, generator: torch.Generator | None = None):
        _, losses = self.tokenizer(batch, generator=generator, **self.loss_weights)
        return losses["loss"], {k: float(v.detach()) for k, v in losses.items() if k != "loss"}


def train_tokenizer(model: VQTokenizer, images: torch.Tensor, run_dir, steps: int = 2000,
                    batch_size: int = 64, lr: float = 2e-3, seed: int = 0, progress: bool = True,
                    log_every: int = 50, ckpt_every: int = 200, eval_images: torch.Tensor | None = None,
                    eval_size: int = 1000, l1_weight: float = 0.0, vq_weight: float = 1.0,
                    partial_weight: float = 0.5, partial_bias: float = 1.0, weight_decay: float = 1e-4,
                    warmup: int = 50, init_batch: int = 256, device="cpu", on_step=None) -> dict:
    """Train the tokenizer on images [N, 1, 28, 28] in [-1, 1] with ``core.train.train`` in
    ``run_dir``; return its final metrics.

    The trainer's seed discipline, checkpoints, log (``run_dir/train_log.jsonl``) and progress
    bar apply: a run killed after a checkpoint resumes from it on the next call with the same
    arguments and ends with the parameters of an uninterrupted run (a checkpoint made with other
    arguments is refused). The codebook starts from k-means on ``init_batch`` images drawn with
    ``seed``; the global RNG is forked, so the caller's random state is untouched. AdamW (torch's
    betas) with linear warm-up and cosine decay to a tenth of ``lr``; no weight decay on the
    codebook, biases and norms; no gradient clipping. The loss is image MSE + ``vq_weight`` x VQ
    loss + ``partial_weight`` x MSE of images decoded from their first k < K bands (see
    ``VQTokenizer.forward``) + optionally ``l1_weight`` x L1. Metrics are measured on
    ``eval_images`` (default: the first ``eval_size`` training images): ``recon_mse``,
    ``band_mse`` (list over k bands), ``codes_used/scale{k}``, ``perplexity/scale{k}``, plus
    ``initial_recon_mse`` (after the codebook initialisation, before any step), ``final_loss``,
    ``steps`` and ``train_seconds`` (summed over resumes).
    """
    from core.train import TrainConfig, resume_same_run, train

    if images.ndim != 4 or tuple(images.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"train_tokenizer expects images [N, 1, 28, 28], got {tuple(images.shape)}")
    if steps < 0 or batch_size < 1:
        raise ValueError(f"need steps >= 0 and batch_size >= 1, got {steps}, {batch_size}")
    images = images.float()
    weights = {"l1_weight": l1_weight, "vq_weight": vq_weight, "partial_weight": partial_weight,
               "partial_bias": partial_bias}
    # what the run is: a checkpoint of another run in the same folder is refused, not continued
    identity = {"tokenizer": dict(model.config), "images": len(images), "init_batch": init_batch,
                "loss": weights}
    cfg = TrainConfig(steps=max(steps, 1), batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      betas=(0.9, 0.999), warmup=warmup, min_lr_ratio=0.1, grad_clip=0.0,
                      log_every=log_every, ckpt_every=ckpt_every, seed=seed, progress=progress,
                      device=str(device), desc="tokenizer")
    identity["train"] = _plain(cfg)
    cfg.resume = resume_same_run(run_dir, identity, "tokenizer")
    eval_x = (images[:eval_size] if eval_images is None else eval_images.float()).to(device)
    model.to(device)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.init_codebook(images[torch.randperm(len(images), generator=gen)[:init_batch]].to(device),
                            generator=gen)
        model.eval()
        initial = model.reconstruction_by_band(eval_x)[-1]
        model.quantizer.reset_usage()
        stats = {"train_seconds": 0.0, "final_loss": float("nan")}
        if steps > 0:
            stats = train(TokenizerObjective(model, **weights), len(images), lambda idx: images[idx],
                          cfg, run_dir, on_step=on_step,
                          record={"run": identity})
        model.eval()
        metrics = evaluate_tokenizer(model, eval_x)
    metrics.update({"initial_recon_mse": initial, "final_loss": stats["final_loss"],
                    "steps": int(steps), "train_seconds": stats["train_seconds"]})
    return metrics


def _plain(cfg) -> dict:
    """The settings of a training run that shape its trajectory (not where or how chatty)."""
    keep = ("steps", "batch_size", "lr", "weight_decay", "betas", "warmup", "min_lr_ratio",
            "grad_clip", "seed")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(cfg).items() if k in keep}


def save_tokenizer(model: VQTokenizer, path) -> Path:
    """Write constructor kwargs + state dict atomically (temporary file in the folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"config": dict(model.config),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    save_atomic(payload, path)
    return path


def load_tokenizer(path, map_location="cpu") -> VQTokenizer:
    """Rebuild a tokenizer written by ``save_tokenizer`` (weights-only load), in eval mode."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    model = VQTokenizer(**payload["config"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()
