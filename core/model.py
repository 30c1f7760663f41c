"""The scale model: pyramid (forward process) + refiner and head (backward process).

``ScaleModel`` implements the scale-model protocol (``core.protocol``: the members the trainer
and the pipeline read) for tensor domains, with its optional capabilities: the noise shift
(``calibrate_shift``/``perturb``) and, when built with ``refine_share > 0`` and a refiner that
reads its scale's own tokens, within-scale refinement (``repredict``).

Refinement training: each training item shows the refiner, at every scale, a partly masked copy of
that scale's own tokens. A share ``refine_share`` of the (item, scale) pairs get a random masking
ratio in (0, 1) (at least one position masked), the rest are fully masked (the plain next-scale
objective, which is what the first pass of every scale sees at sampling). The loss scores the
masked positions only.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from core.pyramid import ResidualPyramid, flat, unflat
from core.refiner import pick_positions
from core.targets import Prediction


def module_device(module) -> torch.device:
    """The device of a module's first parameter or buffer (the CPU for a module with neither,
    or for an object that is no ``nn.Module``)."""
    for tensors in ("parameters", "buffers"):
        for t in getattr(module, tensors, tuple)():
            return t.device
    return torch.device("cpu")


def drop_labels(cond: torch.Tensor | None, batch: int, num_classes: int, p: float,
                generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Training labels for classifier-free guidance: ``None`` becomes the null label
    (``num_classes``, on ``device``) and a share ``p`` of the labels is replaced by it."""
    null = torch.full((batch,), num_classes, dtype=torch.long,
                      device=cond.device if cond is not None else device)
    if cond is None:
        return null
    if p > 0 and num_classes > 0:
        # drawn on the CPU (CPU generators: the same draws on every device), then moved
        drop = torch.rand(cond.shape, generator=generator) < p
        cond = torch.where(drop.to(cond.device), null, cond)
    return cond


class ScaleModel(nn.Module):
    def __init__(self, pyramid: ResidualPyramid, refiner: nn.Module, head: nn.Module,
                 channels: int, num_classes: int = 0, tokenizer: nn.Module | None = None,
                 label_drop: float = 0.1, refine_share: float = 0.0):
        super().__init__()
        if not 0 <= refine_share <= 1:
            raise ValueError(f"model.refine_share must be in [0, 1], got {refine_share}")
        if refine_share > 0 and not getattr(refiner, "refinable", False):
            raise ValueError("within-scale refinement needs a refiner built with own-token inputs "
                             "(core.refiner.ScaleTransformer(own_channels=...)); set model.refine=true")
        self.refine_share = float(refine_share)
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

    @property
    def refine_trained(self) -> bool:
        return self.refine_share > 0

    def refine_mask(self, enc, generator: torch.Generator | None = None) -> torch.Tensor:
        """bool [B, L]: the positions shown to the refiner in a refinement-training step."""
        visible = []
        for codes in enc.codes:
            B, n = codes.shape[:2]
            u = torch.rand(B, n, generator=generator)
            ratio = torch.rand(B, 1, generator=generator)
            partial = torch.rand(B, 1, generator=generator) < self.refine_share
            masked = (u < ratio) | (u == u.min(1, keepdim=True).values)
            visible.append((~masked & partial).to(codes.device))
        return torch.cat(visible, 1)

    def training_positions(self, batch: int, generator: torch.Generator | None = None):
        """The positions one training step scores ([B, L'] indices, or None for all): a share of
        the fine scales' windows when the refiner has local windows (``core.refiner``)."""
        if not self.training or not hasattr(self.refiner, "training_positions"):
            return None
        return self.refiner.training_positions(batch, generator)

    def loss(self, batch, generator: torch.Generator | None = None):
        x, cond = batch
        enc = self.encode(x)
        cond = drop_labels(cond, x.shape[0], self.num_classes, self.label_drop, generator, x.device)
        codes, values = torch.cat(enc.codes, 1), torch.cat(enc.values, 1)
        positions = self.training_positions(x.shape[0], generator)
        shown = {} if positions is None else {"positions": positions}
        scored = (lambda t: t) if positions is None else (lambda t: pick_positions(t, positions))
        if not self.refine_trained:
            pred = self.head(self.refiner(torch.cat(enc.contexts, 1), cond, **shown))
            return self.head.loss(pred, scored(codes), scored(values))
        visible = self.refine_mask(enc, generator)
        pred = self.head(self.refiner(torch.cat(enc.contexts, 1), cond, own=values, visible=visible, **shown))
        masked = ~scored(visible)
        codes, values = scored(codes), scored(values)
        loss, logs = self.head.loss(Prediction(pred.kind, pred.value[masked]), codes[masked], values[masked])
        logs["masked_share"] = float(masked.float().mean())
        return loss, logs

    def forward(self, batch, generator: torch.Generator | None = None):
        return self.loss(batch, generator)

    def init_state(self, cond: torch.Tensor, generators=None) -> dict:
        return {"z": self.pyramid.init_state(len(cond), self.channels, module_device(self)), "cache": []}

    def _step(self, context, k, cond, cache, own=None, visible=None):
        if own is None:
            return self.refiner.step(context, k, cond, cache)
        return self.refiner.step(context, k, cond, cache, own=own, visible=visible)

    def predict(self, state: dict, k: int, cond: torch.Tensor, own=None, visible=None) -> dict:
        context = flat(self.pyramid.context(state["z"], k))
        cond = cond.to(context.device)
        return {"band": self.head(self._step(context, k, cond, state["cache"], own, visible))}

    def own_values(self, tokens: dict, k: int) -> torch.Tensor:
        """The de-quantised band [B, n_k, C] of drawn tokens: what the refiner reads of them."""
        band = tokens["band"]
        return band if self.head.kind == "continuous" else self.pyramid.quantizer.dequantize(band, k)

    def repredict(self, state: dict, k: int, cond: torch.Tensor, tokens: dict, keep: torch.Tensor) -> dict:
        """Scale k again, seeing its own ``tokens`` where ``keep`` is True (refinement)."""
        return self.predict(state, k, cond, own=self.own_values(tokens, k), visible=keep)

    def add_band(self, state: dict, tokens: dict, k: int) -> dict:
        band = self.own_values(tokens, k)
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


class FieldScaleModel(ScaleModel):
    """The scale model with a field-valued condition ``cond`` [B, C_cond, *support] (the state
    now, forcings) instead of a class label: its restriction to scale k (``ops.down``) rides
    along with every token of scale k, next to the usual context of the coarser bands. With
    ``stencil`` (scale ops with ``neighbours(k)``, [n_k, 8] indices) each token also reads the
    condition's differences to its 8 neighbours: gradients and curvature, which say where patterns
    move, without the attention having to find the neighbours first. Built by the core when
    ``c2f_condition`` returns ``{"field_channels": C_cond}``."""

    def __init__(self, pyramid, refiner, head, channels: int, cond_channels: int,
                 stencil: bool = False, tokenizer=None):
        super().__init__(pyramid, refiner, head, channels, num_classes=0, tokenizer=tokenizer,
                         label_drop=0.0)
        self.cond_channels, self.stencil = cond_channels, stencil
        ops = pyramid.ops
        if stencil and not hasattr(ops, "neighbours"):
            raise ValueError(f"a stencil condition needs scale ops with neighbours(k); "
                             f"{type(ops).__name__} has none")
        for k in range(len(ops.sizes)):
            self.register_buffer(f"neighbours{k}", ops.neighbours(k) if stencil else None,
                                 persistent=False)

    @staticmethod
    def input_channels(channels: int, cond_channels: int, stencil: bool) -> int:
        """The refiner's input width: the context plus the condition (and its 8 differences)."""
        return channels + cond_channels * (9 if stencil else 1)

    def _inputs(self, context: torch.Tensor, cond: torch.Tensor, k: int) -> torch.Tensor:
        c = flat(self.pyramid.ops.down(cond, k))
        if not self.stencil:
            return torch.cat([context, c], -1)
        nb = getattr(self, f"neighbours{k}")
        around = (c[:, nb] - c[:, :, None]).flatten(2)
        return torch.cat([context, c, around], -1)

    @staticmethod
    def _no_label(cond: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(cond), dtype=torch.long, device=cond.device)

    def loss(self, batch, generator: torch.Generator | None = None):
        target, cond = batch
        enc = self.encode(target)
        inputs = torch.cat([self._inputs(c, cond, k) for k, c in enumerate(enc.contexts)], 1)
        codes, values = torch.cat(enc.codes, 1), torch.cat(enc.values, 1)
        positions = self.training_positions(len(target), generator)
        if positions is None:
            pred = self.head(self.refiner(inputs, self._no_label(cond)))
            return self.head.loss(pred, codes, values)
        pred = self.head(self.refiner(inputs, self._no_label(cond), positions=positions))
        return self.head.loss(pred, pick_positions(codes, positions), pick_positions(values, positions))

    def predict(self, state: dict, k: int, cond: torch.Tensor, own=None, visible=None) -> dict:
        cond = cond.to(state["z"].device)
        context = self._inputs(flat(self.pyramid.context(state["z"], k)), cond, k)
        h = self._step(context, k, self._no_label(cond), state["cache"], own, visible)
        return {"band": self.head(h)}
