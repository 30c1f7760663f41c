"""Coarse-to-fine sampling: one refiner call per scale.

The scheduler-like part is ``CoarseToFineSampler``: ``set_scales(K)`` fixes the scales to run
and the guidance weight of each, ``step(predictions, k, generators)`` turns one refiner output
into tokens (guidance, temperature, top-k, top-p). ``generate`` is the loop that drives a scale
model with it::

    sampler = CoarseToFineSampler(temperature=1.0, top_k=0, guidance=2.0, schedule="linear")
    samples, nfe = generate(model, sampler, cond, seeds=member_seeds(run_seed, cond))

Classifier-free guidance: predictions for the condition and for the null label come from the
same refiner call (the batch is doubled), and are combined as (1 + w_k) cond - w_k uncond, where
w_k is constant or ramps linearly from 0 at the coarsest scale to w at the finest (VAR).

Every sample draws its randomness from its own generator, seeded by (run seed, condition, member
index): sample i is the same whatever the batch it is drawn in, so one member can be regenerated
alone.

Noise shift (a robustness probe): with ``shift_scale=k`` the state after scale k (counted from 0,
the coarsest) gets Gaussian noise of ``shift_sigma`` times the per-channel standard deviation of
clean states at that scale (``model.perturb``; ``ScaleModel`` draws it on scale k's grid and takes
the standard deviation from teacher-forced training data, ``calibrate_shift``), and sampling goes
on from the shifted state.
Relative noise makes a latent and a data-space pyramid comparable. The shift noise comes from
generators of its own, so the token draws are those of the unshifted run: ``shift_sigma=0`` gives
exactly the unshifted samples, and a sigma grid compares like with like.

Constrained draws: a model with ``band_ok(state, tokens, k, rows) -> bool [batch]`` says which of
the samples in ``rows`` (a mask; the others count as passing) keep the state inside a known valid
set with their tokens of scale k (graphs: every level of a planar graph's
pyramid is planar). With ``max_redraws=R`` the tokens of a failing sample are drawn again from the
same refiner output, up to R times (no extra refiner call; the last draw is kept if none passes).
Redraws use generators of their own, seeded by (sample seed, scale, attempt), so a sample does not
depend on the others in its batch. ``generate`` counts the redraws in ``stats``.

A model that is not coarse-to-fine (a diffusion baseline) may run its own loop: if it has a
``generate(sampler, cond, seeds)`` method, ``generate`` hands the batch to it, and the sampler
supplies only its settings (guidance weight and schedule).
"""
from __future__ import annotations

import hashlib

import torch

from core.quantizers import bits_to_index
from core.targets import Prediction

SCHEDULES = ("constant", "linear")


def member_seed(seed: int, cond, index: int) -> int:
    """A stable 63-bit seed for sample ``index`` of condition ``cond`` in a run seeded ``seed``."""
    digest = hashlib.sha256(f"{int(seed)}/{cond}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def member_seeds(seed: int, cond: torch.Tensor, start: int = 0) -> list[int]:
    """Seeds for a batch whose i-th item is member ``start + i`` (its position in the run)."""
    return [member_seed(seed, int(c), start + i) for i, c in enumerate(cond.tolist())]


def _uniforms(generators: list[torch.Generator], shape) -> torch.Tensor:
    return torch.stack([torch.rand(shape, generator=g) for g in generators])


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / the top-p nucleus to -inf (last dimension)."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, -1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        outside = probs.cumsum(-1) - probs > top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


class CoarseToFineSampler:
    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 guidance: float = 0.0, schedule: str = "constant", shift_scale: int | None = None,
                 shift_sigma: float = 0.0, max_redraws: int = 0):
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown guidance schedule '{schedule}'; choose one of {SCHEDULES}")
        if shift_sigma < 0:
            raise ValueError(f"shift_sigma must be >= 0, got {shift_sigma}")
        if shift_sigma > 0 and shift_scale is None:
            raise ValueError("shift_sigma > 0 needs shift_scale: the scale after which to add the noise")
        if shift_scale is not None and shift_scale < 0:
            raise ValueError(f"shift_scale must be >= 0 (0 = the coarsest scale), got {shift_scale}")
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.shift_scale, self.shift_sigma = shift_scale, float(shift_sigma)
        if max_redraws < 0:
            raise ValueError(f"max_redraws must be >= 0, got {max_redraws}")
        self.guidance, self.schedule = guidance, schedule
        self.max_redraws = int(max_redraws)
        self.scales: list[int] = []
        self.weights: list[float] = []

    @property
    def guided(self) -> bool:
        return self.guidance > 0

    @property
    def shifted(self) -> bool:
        return self.shift_scale is not None

    def set_scales(self, num_scales: int):
        self.scales = list(range(num_scales))
        if self.schedule == "linear" and num_scales > 1:
            self.weights = [self.guidance * k / (num_scales - 1) for k in self.scales]
        else:
            self.weights = [self.guidance] * num_scales

    def step(self, predictions: dict, k: int, generators: list[torch.Generator],
             condition_fn=None) -> dict:
        """Tokens for scale k from one refiner output (doubled batch when guided)."""
        tokens = {}
        for name, pred in predictions.items():
            value = pred.value
            if self.guided:
                cond, uncond = value.chunk(2)
                w = self.weights[k]
                value = (1 + w) * cond - w * uncond
            if condition_fn is not None:
                value = condition_fn(name, value, tokens)
            tokens[name] = self.draw(Prediction(pred.kind, value), generators)
        return tokens

    def draw(self, pred: Prediction, generators: list[torch.Generator]) -> torch.Tensor:
        value = pred.value
        if pred.kind == "continuous":
            return value
        if pred.kind == "bits":
            if self.temperature == 0:
                return bits_to_index(value > 0)
            u = _uniforms(generators, value.shape[1:]).to(value.device)
            return bits_to_index(u < torch.sigmoid(value / self.temperature))
        if pred.kind != "index":
            raise ValueError(f"unknown prediction kind '{pred.kind}'")
        if self.temperature == 0:
            return value.argmax(-1)
        u = _uniforms(generators, value.shape[1:-1]).to(value.device)
        probs = filter_logits(value / self.temperature, self.top_k, self.top_p).softmax(-1)
        cdf = probs.cumsum(-1)
        return (cdf < u[..., None] * cdf[..., -1:]).sum(-1).clamp_max(value.shape[-1] - 1)


@torch.no_grad()
def generate(model, sampler: CoarseToFineSampler, cond: torch.Tensor, seeds: list[int],
             stats: dict | None = None):
    """Run the backward process for a batch of conditions; return (samples, refiner calls).
    ``stats``, if given, receives ``redraws``: constrained redraws summed over the batch."""
    if len(seeds) != len(cond):
        raise ValueError(f"need one seed per sample: {len(seeds)} seeds for {len(cond)} conditions")
    if sampler.shifted:
        if getattr(model, "perturb", None) is None:
            raise ValueError(f"{type(model).__name__} has no perturb(state, k, sigma, generators): "
                             "the noise shift (sample.shift_scale) is not available for this model")
        if sampler.shift_scale >= model.num_scales:
            raise ValueError(f"shift_scale {sampler.shift_scale} is out of range for a model with "
                             f"{model.num_scales} scales (0 = the coarsest)")
    own_loop = getattr(model, "generate", None)
    if own_loop is not None:
        return own_loop(sampler, cond, seeds)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    if sampler.shifted:  # separate streams: the token draws stay those of the unshifted run
        shift_generators = [torch.Generator().manual_seed(member_seed(s, "shift", sampler.shift_scale))
                            for s in seeds]
    sampler.set_scales(model.num_scales)
    cond_in = cond
    if sampler.guided:
        cond_in = torch.cat([cond, torch.full_like(cond, model.null_label)])
    state = model.init_state(cond_in)
    condition_logits = getattr(model, "condition_logits", None)
    is_done = getattr(model, "is_done", None)  # models of variable depth (graphs) stop early
    band_ok = getattr(model, "band_ok", None) if sampler.max_redraws else None
    calls, redraws = 0, 0
    for k in sampler.scales:
        if is_done is not None and is_done(state):
            break
        predictions = model.predict(state, k, cond_in)
        calls += 1
        condition_fn = None if condition_logits is None else (
            lambda name, value, drawn: condition_logits(name, value, drawn, state))
        tokens = sampler.step(predictions, k, generators, condition_fn)
        if sampler.guided:
            tokens = {name: torch.cat([t, t]) for name, t in tokens.items()}
        if band_ok is not None:
            tokens, n = _redraw(model, sampler, band_ok, state, tokens, predictions, k, seeds, condition_fn)
            redraws += n
        state = model.add_band(state, tokens, k)
        if sampler.shifted and k == sampler.shift_scale:
            state = model.perturb(state, k, sampler.shift_sigma, shift_generators)
    samples = model.finish(state)
    if sampler.guided:
        samples = samples[: len(cond)]
    if stats is not None:
        stats["redraws"] = redraws
    return samples, calls


def _redraw(model, sampler, band_ok, state, tokens, predictions, k, seeds, condition_fn):
    """Draw the tokens of failing samples again (see "Constrained draws" above)."""
    B = len(seeds)

    def passing(tok, rows):  # only the rows still failing are checked again
        if sampler.guided:
            rows = torch.cat([rows, torch.zeros_like(rows)])
        return torch.as_tensor(band_ok(state, tok, k, rows), dtype=torch.bool)[:B]

    ok, count = passing(tokens, torch.ones(B, dtype=torch.bool)), 0
    for attempt in range(sampler.max_redraws):
        if bool(ok.all()):
            break
        count += int((~ok).sum())
        gens = [torch.Generator().manual_seed(member_seed(s, f"redraw/{k}", attempt)) for s in seeds]
        again = sampler.step(predictions, k, gens, condition_fn)
        if sampler.guided:
            again = {name: torch.cat([t, t]) for name, t in again.items()}
        keep = torch.cat([ok, ok]) if sampler.guided else ok
        candidate = {name: torch.where(keep.view(-1, *[1] * (t.dim() - 1)), t, again[name])
                     for name, t in tokens.items()}
        tokens, ok = candidate, ok | passing(candidate, ~ok)
    return tokens, count
