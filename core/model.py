"""The scale model: pyramid (forward process) + refiner and head (backward process).

This is the protocol the sampler, trainer and CLI drive; a domain with its own structural pyramid
(graphs) returns a module with the same methods from ``c2f_model``:

* ``num_scales``: K, the number of refiner calls per sample.
* ``loss(batch, generator) -> (loss, logs)``: teacher-forced training loss on a batch; also
  ``forward``, so that DistributedDataParallel can wrap the model.
* ``init_state(cond) -> state``: the empty state for a batch of conditions.
* ``predict(state, k, cond) -> dict[str, Prediction]``: ONE refiner call, all tokens of scale k.
* ``add_band(state, tokens, k) -> state``: compose the drawn tokens of scale k into the state.
* ``finish(state) -> samples``: decode the finest state.
* optionally ``condition_logits(name, value, tokens, state)`` to restrict or condition a
  prediction on the tokens already drawn at the same scale (graphs: edge patterns given the node
  tokens, from the same backbone features), and ``is_done(state)`` for models of variable depth (at most
  ``num_scales`` calls; sampling stops as soon as it returns True).
* optionally ``band_ok(state, tokens, k, rows) -> bool [batch]``: whether each sample selected by
  the mask ``rows`` keeps the state inside a known valid set with its tokens of scale k (samples
  outside ``rows`` are reported as passing); with ``sample.max_redraws`` the sampler draws the
  failing ones again from the same prediction (``core.sampler``, constrained draws).
* optionally ``perturb(state, k, sigma, generators) -> state`` for the sampler's noise shift: add
  Gaussian noise of relative size sigma to the state after scale k, drawing member i's noise from
  ``generators[i]`` (the state may hold the doubled batch of guidance: both halves get the same
  noise). Models without it refuse a shift with a clear error.
* optionally ``generate(sampler, cond, seeds) -> (samples, calls)`` for a model that is not
  coarse-to-fine and runs its own sampling loop (a diffusion baseline); ``core.sampler.generate``
  then hands it the batch.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from core.pyramid import ResidualPyramid, flat, unflat


def drop_labels(cond: torch.Tensor | None, batch: int, num_classes: int, p: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Training labels for classifier-free guidance: ``None`` becomes the null label
    (``num_classes``) and a share ``p`` of the labels is replaced by it."""
    null = torch.full((batch,), num_classes, dtype=torch.long)
    if cond is None:
        return null
    if p > 0 and num_classes > 0:
        drop = torch.rand(cond.shape, generator=generator) < p
        cond = torch.where(drop, null.to(cond.device), cond)
    return cond


class ScaleModel(nn.Module):
    def __init__(self, pyramid: ResidualPyramid, refiner: nn.Module, head: nn.Module,
                 channels: int, num_classes: int = 0, tokenizer: nn.Module | None = None,
                 label_drop: float = 0.1):
        super().__init__()
        self.pyramid, self.refiner, self.head = pyramid, refiner, head
        self.tokenizer = tokenizer
        self.channels, self.num_classes, self.label_drop = channels, num_classes, label_drop
        for frozen in (pyramid, tokenizer):  # the forward process is fixed while the refiner learns
            if frozen is not None:
                frozen.requires_grad_(False)

    @property
    def num_scales(self) -> int:
        return self.pyramid.num_scales

    @property
    def null_label(self) -> int:
        return self.num_classes

    @torch.no_grad()
    def encode(self, x: torch.Tensor):
        """Data -> pyramid codes (the deterministic forward process; nothing here is trained)."""
        z = self.tokenizer.encode(x) if self.tokenizer is not None else x
        was_training = self.pyramid.training
        self.pyramid.eval()
        codes = self.pyramid.encode(z)
        self.pyramid.train(was_training)
        return codes

    def loss(self, batch, generator: torch.Generator | None = None):
        x, cond = batch
        enc = self.encode(x)
        cond = drop_labels(cond, x.shape[0], self.num_classes, self.label_drop, generator)
        h = self.refiner(torch.cat(enc.contexts, 1), cond)
        pred = self.head(h)
        loss, logs = self.head.loss(pred, torch.cat(enc.codes, 1), torch.cat(enc.values, 1))
        return loss, logs

    def forward(self, batch, generator: torch.Generator | None = None):
        return self.loss(batch, generator)

    def init_state(self, cond: torch.Tensor) -> dict:
        return {"z": self.pyramid.init_state(len(cond), self.channels), "cache": []}

    def predict(self, state: dict, k: int, cond: torch.Tensor) -> dict:
        context = flat(self.pyramid.context(state["z"], k))
        return {"band": self.head(self.refiner.step(context, k, cond, state["cache"]))}

    def add_band(self, state: dict, tokens: dict, k: int) -> dict:
        band = tokens["band"]
        if self.head.kind != "continuous":
            band = self.pyramid.quantizer.dequantize(band, k)
        size = self.pyramid.ops.sizes[k]
        state["z"] = self.pyramid.add_band(state["z"], unflat(band, size), k)
        return state

    @torch.no_grad()
    def clean_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The states the sampler would reach on data ``x`` with perfect predictions: after scale
        k, the composition of the first k+1 (de-quantised) bands, one tensor per scale."""
        enc = self.encode(x)
        z = self.pyramid.init_state(len(x), self.channels, x.device)
        states = []
        for k, values in enumerate(enc.values):
            z = self.pyramid.add_band(z, unflat(values, self.pyramid.ops.sizes[k]), k)
            states.append(z)
        return states

    def calibrate_shift(self, batch):
        """Per-channel standard deviation (over items and positions) of the clean state after every
        scale, on a training batch: the unit of ``perturb``'s sigma. Kept out of the state dict,
        so checkpoints do not change."""
        x = batch[0]
        self.shift_std = [z.transpose(0, 1).flatten(1).std(1) for z in self.clean_states(x)]

    def perturb(self, state: dict, k: int, sigma: float, generators: list) -> dict:
        """Add noise to the state after scale k: i.i.d. N(0, (sigma * std_k)^2) per cell of scale
        k's grid and channel (std_k from ``calibrate_shift``), prolonged to the state's support by
        the pyramid's up operator when the state lives on a finer one (``variant=var``). So the
        shift perturbs what the first k+1 bands say, at their resolution, in every variant.
        Member i's noise comes from ``generators[i]``."""
        std = getattr(self, "shift_std", None)
        if std is None:
            raise RuntimeError("call calibrate_shift(batch) on training data before a noise shift: "
                               "sigma is relative to the clean state's standard deviation")
        z = state["z"]
        size = tuple(self.pyramid.ops.sizes[k])
        noise = torch.stack([torch.randn(z.shape[1], *size, generator=g) for g in generators]).to(z)
        if tuple(z.shape[2:]) != size:
            noise = self.pyramid.ops.up(noise, self.num_scales - 1)
        if len(z) != len(noise):  # guided sampling: the conditional and null halves share a state
            noise = noise.repeat(len(z) // len(noise), *[1] * (z.ndim - 1))
        scale = std[k].to(z).view(1, -1, *[1] * (z.ndim - 2))
        state["z"] = z + sigma * scale * noise
        return state

    def finish(self, state: dict) -> torch.Tensor:
        z = self.pyramid.finish(state["z"])
        return self.tokenizer.decode(z) if self.tokenizer is not None else z
