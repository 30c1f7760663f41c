"""The scale-model protocol: every attribute and method the core reads from a model.

``core.model.ScaleModel`` implements it for tensor domains; a structural domain (graphs) returns
its own module with these members from ``c2f_model``. The trainer needs ``forward``/``loss``; the
pipeline (``core.sampler.generate``) needs the rest. Each optional capability is a protocol of its
own, and the pipeline asks ``isinstance(model, Capability)`` before it uses one.

A sampling step k, as the pipeline runs it::

    state = model.init_state(cond, generators)        # once: the empty (or noise) state
    predictions = model.predict(state, t_k, cond)     # ONE network pass, all tokens of step k
    tokens = scheduler.step(predictions, k, generators)
    state = model.add_band(state, tokens, k)
    samples = model.finish(state)                     # after the last step

``t_k`` is the scheduler's k-th timestep: the scale index k itself for coarse-to-fine models,
the diffusion timestep for a DDPM. Under classifier-free guidance ``cond`` (and so the state) is
the doubled batch: the conditions, then as many ``null_label`` entries.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class ScaleModelProtocol(Protocol):
    num_scales: int    # network steps per sample (scales; diffusion steps; tokens of an AR)
    num_classes: int   # class labels are 0..num_classes-1 (0: unconditional)
    null_label: int    # the label of the unconditional half under guidance

    def loss(self, batch, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """Training loss of a batch and flat numbers to log (``forward`` is the same)."""

    def init_state(self, cond: torch.Tensor, generators: list[torch.Generator]) -> Any:
        """The state before the first step. ``generators[i]`` is member i's own random stream
        (a diffusion model draws its starting noise from it; a state for a doubled batch gives
        both halves member i's noise)."""

    def predict(self, state, k: int, cond: torch.Tensor) -> dict:
        """One network pass: ``{name: core.targets.Prediction}`` for every token of step k. A
        model whose samples differ in size pads a group to its batch's widest sample and gives
        the real sizes in ``Prediction.lengths``: only real positions then draw from a sample's
        stream, and a sample does not depend on the batch it is drawn in."""

    def add_band(self, state, tokens: dict, k: int) -> Any:
        """Compose the drawn tokens of step k into the state."""

    def finish(self, state) -> Any:
        """The samples of the final state (decoded)."""


@runtime_checkable
class ConditionsLogits(Protocol):
    def condition_logits(self, name: str, value: torch.Tensor, drawn: dict, state) -> torch.Tensor:
        """Condition the prediction ``name`` on the tokens ``drawn`` at the same step (graphs: edge
        patterns given the node tokens). Returning a new tensor means a head pass was run, and the
        pipeline counts it; returning ``value`` itself means nothing was run."""


@runtime_checkable
class VariableDepth(Protocol):
    def is_done(self, state) -> bool:
        """Stop before ``num_scales`` steps (graphs reach their size at different depths)."""


@runtime_checkable
class ChecksBands(Protocol):
    def band_ok(self, state, tokens: dict, k: int, rows: torch.Tensor) -> torch.Tensor:
        """bool [batch]: whether each sample in the mask ``rows`` stays valid with its tokens of
        step k (the others count as passing). Used by ``core.sampler.Redraw``."""


@runtime_checkable
class Perturbable(Protocol):
    def calibrate_shift(self, batch) -> None:
        """Set the unit of the noise shift from training data."""

    def perturb(self, state, k: int, sigma: float, generators: list) -> Any:
        """Add noise of relative size sigma to the state after step k (``core.sampler.NoiseShift``)."""


@runtime_checkable
class Refinable(Protocol):
    refine_trained: bool   # trained to re-predict a scale from a partly masked copy of itself

    def repredict(self, state, k: int, cond: torch.Tensor, tokens: dict, keep: torch.Tensor) -> dict:
        """One more network pass at step k that sees the scale's own ``tokens`` where ``keep``
        [batch, n_k] is True and a mask elsewhere (``core.sampler.Refine``)."""


@runtime_checkable
class RefinesView(Protocol):
    """A refinable model whose step draws several token groups (graphs: node tokens, then edge
    patterns in rounds) refines one of them through a *view*: ``refine_view`` gives that group's
    tokens and predictions as one group [batch, n, ...] and the positions that must stay (padding,
    tokens with no choice); ``refine_apply`` writes the refined group back into the step's tokens.
    ``repredict_pass`` names the network a ``repredict`` runs, "backbone" or "head", for NFE."""
    repredict_pass: str

    def refine_view(self, state, k: int, predictions: dict, tokens: dict) -> tuple:
        """(tokens, predictions, fixed): one-entry dicts and a bool [batch, n] (or None)."""

    def refine_apply(self, state, k: int, tokens: dict, refined: dict) -> dict:
        """The step's ``tokens`` with the view's ``refined`` tokens written back."""


@runtime_checkable
class HasScheduler(Protocol):
    def scheduler(self, guidance) -> Any:
        """The scheduler this model samples with (diffusion models: DDPM or DDIM over their own
        noise schedule), given a ``core.sampler.Guidance``."""


# ---------------------------------------------------------------- the pieces a tensor domain hands in
@runtime_checkable
class ScaleOps(Protocol):
    """What ``c2f_scale_ops`` returns: the support of each scale and the operators between them
    (``core.grid.GridOps`` for 2-D grids; a 1-D example: ``docs/examples/c2f-signals``)."""

    sizes: list  # the support shape of each scale, coarse to fine: (h, w) on a grid, (n,) in 1-D

    def down(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """``z`` [B, C, *sizes[j]] of a finer scale j >= k (the pyramid passes the finest)
        restricted to scale k: [B, C, *sizes[k]] (an area mean keeps the coarse values exact)."""

    def up(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """``z`` of a coarser scale j <= k prolonged to scale k: [B, C, *sizes[k]]. Called with
        k = j + 1 (the Laplacian context) and with k = the finest scale (the ``var`` variant)."""

    def positions(self, k: int) -> torch.Tensor:
        """[n_k, P] float coordinates of scale k's cells in [0, 1], in the order of
        ``z.flatten(2)`` (n_k = prod(sizes[k])); the refiner encodes them as Fourier features."""


@runtime_checkable
class Tokenizer(Protocol):
    """What ``c2f_tokenizer`` returns: a frozen encoder/decoder to refine in its latent space.
    An optional ``quantizer`` attribute (a ``core.quantizers`` quantiser, e.g. a VQ tokenizer's
    multi-scale codebook) is used by the pyramid instead of the one ``model.quantizer`` builds."""

    channels: int  # latent channels C

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Data [B, *item] -> latent [B, C, *sizes[-1]] (the finest scale's support)."""

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent [B, C, *sizes[-1]] -> data [B, *item]."""


@runtime_checkable
class Refiner(Protocol):
    """What ``c2f_refiner`` returns instead of ``core.refiner.ScaleTransformer``: features of
    width ``refiner.d_model`` for every token (the head maps them to the target)."""

    def forward(self, contexts: torch.Tensor, cond: torch.Tensor, own=None, visible=None) -> torch.Tensor:
        """Training: all scales at once. ``contexts`` [B, L, C] (the pyramid context of every
        token, scales concatenated coarse to fine), ``cond`` [B] labels -> [B, L, d_model]."""

    def step(self, context: torch.Tensor, k: int, cond: torch.Tensor, cache: list, own=None,
             visible=None) -> torch.Tensor:
        """Sampling: scale k alone, [B, n_k, C] -> [B, n_k, d_model], attending to the coarser
        scales through ``cache`` (filled by the earlier steps). ``own``/``visible``: the scale's
        own tokens for within-scale refinement (``refinable = True`` backbones only)."""
