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
"""
from __future__ import annotations

import torch
import torch.nn as nn

from core.pyramid import ResidualPyramid, flat, unflat


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
        if cond is None:
            cond = torch.full((x.shape[0],), self.null_label, dtype=torch.long)
        enc = self.encode(x)
        if self.label_drop > 0 and self.num_classes > 0:
            drop = torch.rand(cond.shape, generator=generator) < self.label_drop
            cond = torch.where(drop, torch.full_like(cond, self.null_label), cond)
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

    def finish(self, state: dict) -> torch.Tensor:
        z = self.pyramid.finish(state["z"])
        return self.tokenizer.decode(z) if self.tokenizer is not None else z
