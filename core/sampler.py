"""Sampling: a scheduler turns one network output into tokens; a pipeline owns the loop.

The split is the one diffusers uses. A scheduler has two methods: ``set_scales(n)`` fixes the
steps and the guidance weight of each, ``step(predictions, k, generators)`` turns the network's
output for step k into tokens. ``TokenScheduler`` draws code indices, bits or values (temperature,
top-k, top-p); ``core.diffusion`` has DDPM and DDIM schedulers of the same shape, so a diffusion
baseline runs through the same loop. ``generate`` is that loop::

    scheduler = TokenScheduler(temperature=1.0, guidance=Guidance(2.0, "linear"))
    samples, nfe = generate(model, scheduler, cond, member_seeds(run_seed, cond),
                            extensions=[Refine(rounds=2), Redraw(5)])

Extensions are small pieces the loop calls at two points of every step: ``on_tokens`` after the
step's tokens are drawn (within-scale refinement, constrained redraws) and ``on_state`` after they
are composed into the state (noise shift). Each checks in ``start`` that the model can do what it
asks and says so clearly when it cannot.

Classifier-free guidance (``Guidance``): predictions for the condition and for the null label come
from the same network pass (the batch is doubled) and are combined as (1 + w_k) cond - w_k uncond.
w_k follows a schedule: ``constant``; ``linear``, from 0 at the first step to w at the last (VAR);
``interval``, w on the steps ``interval = (first, last)`` (inclusive, negative counts from the end)
and 0 elsewhere.

Randomness: every sample draws from its own generator, seeded by (run seed, condition, member
index), so sample i is the same whatever batch it is drawn in. Extensions that draw (redraws,
refinement rounds, noise shift) use generators of their own, seeded from the sample's seed, so a
run without them draws exactly the tokens it drew before they existed.

Compute: every network pass goes through the pipeline's ``Passes`` counter: a ``predict`` or a
``repredict`` is a backbone pass, a ``condition_logits`` that runs a head is a head pass. NFE per
sample is their sum (each pass carries the whole batch; under guidance one pass carries both
halves, and ``Passes.doubled`` says so).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch

from core.protocol import ChecksBands, ConditionsLogits, Perturbable, Refinable, RefinesView, VariableDepth
from core.quantizers import bits_to_index
from core.targets import Prediction

SCHEDULES = ("constant", "linear", "interval")
REFINE_SCHEDULES = ("cosine", "linear")


def member_seed(seed: int, cond, index) -> int:
    """A stable 63-bit seed for sample ``index`` of condition ``cond`` in a run seeded ``seed``."""
    digest = hashlib.sha256(f"{int(seed)}/{cond}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def member_seeds(seed: int, cond: torch.Tensor, start: int = 0) -> list[int]:
    """Seeds for a batch whose i-th item is member ``start + i`` (its position in the run)."""
    return [member_seed(seed, int(c), start + i) for i, c in enumerate(cond.tolist())]


def streams(seeds: list[int], purpose: str | None = None, index: int = 0) -> list[torch.Generator]:
    """One generator per sample: its main draws (no ``purpose``), or a stream of its own for a
    purpose (redraw attempt, refinement round, noise shift) seeded by (sample seed, purpose, index)."""
    if purpose is None:
        return [torch.Generator().manual_seed(s) for s in seeds]
    return [torch.Generator().manual_seed(member_seed(s, purpose, index)) for s in seeds]


def _uniforms(generators: list[torch.Generator], shape, lengths=None) -> torch.Tensor:
    """[B, *shape] uniforms, one row per sample's generator. With ``lengths`` (per sample, its real
    positions along the first dimension) a row draws only its own positions and the padding is 0,
    so what a sample draws next does not depend on how wide its batch is."""
    if lengths is None:
        return torch.stack([torch.rand(shape, generator=g) for g in generators])
    out = torch.zeros(len(generators), *shape)
    for i, (g, n) in enumerate(zip(generators, lengths.tolist())):
        out[i, :n] = torch.rand((int(n), *shape[1:]), generator=g)
    return out


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


# ---------------------------------------------------------------- guidance
@dataclass
class Guidance:
    """Classifier-free guidance weight w and its schedule over the steps."""
    weight: float = 0.0
    schedule: str = "constant"
    interval: tuple = (0, -1)

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown guidance schedule '{self.schedule}'; choose one of {', '.join(SCHEDULES)}")
        if self.weight < 0:
            raise ValueError(f"guidance weight must be >= 0, got {self.weight}")
        self.interval = tuple(int(i) for i in self.interval)
        if len(self.interval) != 2:
            raise ValueError(f"guidance interval must be (first, last) step, got {self.interval}")

    @property
    def guided(self) -> bool:
        return self.weight > 0

    def weights(self, n: int) -> list[float]:
        if self.schedule == "linear" and n > 1:
            return [self.weight * k / (n - 1) for k in range(n)]
        if self.schedule == "interval":
            first, last = (i + n if i < 0 else i for i in self.interval)
            return [self.weight if first <= k <= last else 0.0 for k in range(n)]
        return [self.weight] * n


def guide(value: torch.Tensor, w: float) -> torch.Tensor:
    """(1 + w) cond - w uncond of a doubled-batch output [cond; uncond]."""
    cond, uncond = value.chunk(2)
    return (1 + w) * cond - w * uncond


# ---------------------------------------------------------------- the token scheduler
class TokenScheduler:
    """Draws the tokens of one scale from the refiner's prediction."""

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 guidance: Guidance | None = None):
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.guidance = guidance or Guidance()
        self.timesteps: list[int] = []
        self.weights: list[float] = []

    @property
    def guided(self) -> bool:
        return self.guidance.guided

    def set_scales(self, num_scales: int):
        self.timesteps = list(range(num_scales))
        self.weights = self.guidance.weights(num_scales)

    def guided_value(self, pred: Prediction, k: int) -> torch.Tensor:
        return guide(pred.value, self.weights[k]) if self.guided else pred.value

    def step(self, predictions: dict, k: int, generators: list[torch.Generator],
             condition_fn=None) -> dict:
        """Tokens for step k (one entry per prediction; the conditional half under guidance)."""
        tokens = {}
        for name, pred in predictions.items():
            value = self.guided_value(pred, k)
            if condition_fn is not None:
                value = condition_fn(name, value, tokens)
            tokens[name] = self.draw(Prediction(pred.kind, value, lengths=pred.lengths), generators)
        return tokens

    def _logits(self, value: torch.Tensor) -> torch.Tensor:
        return filter_logits(value / self.temperature, self.top_k, self.top_p)

    def draw(self, pred: Prediction, generators: list[torch.Generator]) -> torch.Tensor:
        """Tokens of a prediction: each token is ``invert`` at uniforms from the samples' streams."""
        value = pred.value
        if pred.kind == "continuous" or self.temperature == 0:
            return self.invert(pred, None)
        shape = value.shape[1:] if pred.kind == "bits" else value.shape[1:-1]
        lengths = None if pred.lengths is None else pred.lengths[: len(generators)]  # the cond half
        return self.invert(pred, _uniforms(generators, shape, lengths).to(value.device))

    def invert(self, pred: Prediction, u: torch.Tensor | None) -> torch.Tensor:
        """The tokens at uniforms ``u`` (one per token; per bit for ``bits``): the inverse CDF of
        the tempered, filtered distribution (the argmax at temperature 0, where ``u`` is unused).
        Given its uniforms, a draw is a deterministic function (what a distilled student learns)."""
        value = pred.value
        if pred.kind == "continuous":
            return value
        if pred.kind == "bits":
            if self.temperature == 0:
                return bits_to_index(value > 0)
            return bits_to_index(u < torch.sigmoid(value / self.temperature))
        if pred.kind != "index":
            raise ValueError(f"unknown prediction kind '{pred.kind}'")
        if self.temperature == 0:
            return value.argmax(-1)
        probs = self._logits(value).softmax(-1)
        cdf = probs.cumsum(-1)
        return (cdf < u[..., None] * cdf[..., -1:]).sum(-1).clamp_max(value.shape[-1] - 1)

    def log_prob(self, pred: Prediction, tokens: torch.Tensor, k: int) -> torch.Tensor:
        """[batch, n]: log-probability of each position's tokens (summed over its groups) under
        the distribution ``step`` draws from: the confidence of within-scale refinement."""
        value = self.guided_value(pred, k)
        t = self.temperature if self.temperature > 0 else 1.0
        if pred.kind == "index":
            logp = filter_logits(value / t, self.top_k, self.top_p).log_softmax(-1)
            return logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1).flatten(2).sum(-1)
        if pred.kind == "bits":
            from core.quantizers import index_to_bits
            bits = index_to_bits(tokens, value.shape[-1])
            logp = torch.nn.functional.logsigmoid(torch.where(bits > 0, value, -value) / t)
            return logp.flatten(2).sum(-1)
        raise ValueError(f"a '{pred.kind}' prediction has no token probabilities")


# ---------------------------------------------------------------- the pipeline
@dataclass
class Passes:
    """Network passes of one ``generate`` call (each carries the whole batch)."""
    backbone: int = 0
    head: int = 0
    doubled: bool = False

    @property
    def total(self) -> int:
        return self.backbone + self.head


@dataclass
class Run:
    """What the loop and its extensions share during one ``generate`` call."""
    model: object
    scheduler: object
    cond: torch.Tensor          # the doubled batch under guidance
    seeds: list
    generators: list
    passes: Passes = field(default_factory=Passes)
    stats: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return len(self.seeds)

    def predict(self, state, k: int) -> dict:
        self.passes.backbone += 1
        return self.model.predict(state, self.scheduler.timesteps[k], self.cond)

    def repredict(self, state, k: int, tokens: dict, keep: torch.Tensor) -> dict:
        if isinstance(self.model, RefinesView) and self.model.repredict_pass == "head":
            self.passes.head += 1
        else:
            self.passes.backbone += 1
        return self.model.repredict(state, k, self.cond, self.doubled(tokens), self.doubled(keep))

    def condition_fn(self, state):
        if not isinstance(self.model, ConditionsLogits):
            return None

        def condition(name, value, drawn):
            out = self.model.condition_logits(name, value, drawn, state)
            if out is not value:  # a head was run
                self.passes.head += 1
            return out
        return condition

    def draw(self, predictions: dict, k: int, state, generators) -> dict:
        return self.scheduler.step(predictions, k, generators, self.condition_fn(state))

    def doubled(self, x):
        """Tokens (or a mask) of the batch for the doubled state of guidance."""
        if not self.passes.doubled:
            return x
        if isinstance(x, dict):
            return {name: torch.cat([t, t]) for name, t in x.items()}
        return torch.cat([x, x])


class Extension:
    """A piece of the sampling loop. Override what you need; the defaults do nothing."""

    def start(self, run: Run):
        pass

    def on_tokens(self, run: Run, state, k: int, predictions: dict, tokens: dict) -> dict:
        return tokens

    def on_state(self, run: Run, state, k: int):
        return state


@torch.no_grad()
def generate(model, scheduler, cond: torch.Tensor, seeds: list[int], extensions=(),
             stats: dict | None = None):
    """Run the backward process for a batch of conditions; return (samples, NFE per sample).

    ``stats``, if given, receives ``nfe_backbone``, ``nfe_head``, ``guidance_doubles_batch`` and
    what the extensions count (``redraws``, ``refine_passes``)."""
    if len(seeds) != len(cond):
        raise ValueError(f"need one seed per sample: {len(seeds)} seeds for {len(cond)} conditions")
    cond_in = cond
    if scheduler.guided:
        cond_in = torch.cat([cond, torch.full_like(cond, model.null_label)])
    run = Run(model, scheduler, cond_in, list(seeds), streams(seeds))
    run.passes.doubled = scheduler.guided
    for ext in extensions:
        ext.start(run)
    scheduler.set_scales(model.num_scales)
    state = model.init_state(cond_in, run.generators)
    variable_depth = isinstance(model, VariableDepth)
    for k in range(len(scheduler.timesteps)):
        if variable_depth and model.is_done(state):
            break
        predictions = run.predict(state, k)
        tokens = run.draw(predictions, k, state, run.generators)
        for ext in extensions:
            tokens = ext.on_tokens(run, state, k, predictions, tokens)
        state = model.add_band(state, run.doubled(tokens), k)
        for ext in extensions:
            state = ext.on_state(run, state, k)
    samples = model.finish(state)
    if scheduler.guided:
        samples = samples[: len(cond)]
    if stats is not None:
        stats.update(run.stats, nfe_backbone=run.passes.backbone, nfe_head=run.passes.head,
                     guidance_doubles_batch=int(run.passes.doubled))
    return samples, run.passes.total


# ---------------------------------------------------------------- extensions
class NoiseShift(Extension):
    """A robustness probe: Gaussian noise of ``sigma`` times the per-channel standard deviation of
    clean states (``model.calibrate_shift``) added to the state after step ``scale`` (0 = the
    coarsest); sampling goes on from the shifted state. The noise has generators of its own, so
    ``sigma=0`` gives exactly the unshifted samples and a sigma grid compares like with like."""

    def __init__(self, scale: int, sigma: float):
        if scale < 0:
            raise ValueError(f"shift_scale must be >= 0 (0 = the coarsest scale), got {scale}")
        if sigma < 0:
            raise ValueError(f"shift_sigma must be >= 0, got {sigma}")
        self.scale, self.sigma = int(scale), float(sigma)

    def start(self, run):
        if not isinstance(run.model, Perturbable):
            raise ValueError(f"{type(run.model).__name__} has no perturb(state, k, sigma, generators): "
                             "the noise shift (sample.shift_scale) is not available for this model")
        if self.scale >= run.model.num_scales:
            raise ValueError(f"shift_scale {self.scale} is out of range for a model with "
                             f"{run.model.num_scales} scales (0 = the coarsest)")
        self.generators = streams(run.seeds, "shift", self.scale)

    def on_state(self, run, state, k):
        if k == self.scale:
            state = run.model.perturb(state, k, self.sigma, self.generators)
        return state


class Redraw(Extension):
    """Constrained draws: a model with ``band_ok`` says which samples keep the state inside a known
    valid set with their tokens of step k (graphs: every level of a planar graph's pyramid is
    planar). A failing sample's tokens are drawn again from the same prediction, up to
    ``max_redraws`` times (the last draw is kept if none passes). Redraws use generators seeded by
    (sample seed, step, attempt), so a sample does not depend on the others in its batch. A model
    whose tokens are conditioned by a head (``condition_logits``) re-runs it: counted in NFE."""

    def __init__(self, max_redraws: int):
        if max_redraws < 0:
            raise ValueError(f"max_redraws must be >= 0, got {max_redraws}")
        self.max_redraws = int(max_redraws)

    def start(self, run):
        self.active = self.max_redraws > 0 and isinstance(run.model, ChecksBands)
        run.stats.setdefault("redraws", 0)

    def on_tokens(self, run, state, k, predictions, tokens):
        if not self.active:
            return tokens
        B = run.batch

        def passing(tok, rows):  # only the rows still failing are checked again
            if run.passes.doubled:  # the null half is never checked
                rows = torch.cat([rows, torch.zeros_like(rows)])
            # the checks and their masks stay on the CPU, whatever device the tokens are on
            return torch.as_tensor(run.model.band_ok(state, run.doubled(tok), k, rows), dtype=torch.bool).cpu()[:B]

        ok, count = passing(tokens, torch.ones(B, dtype=torch.bool)), 0
        for attempt in range(self.max_redraws):
            if bool(ok.all()):
                break
            count += int((~ok).sum())
            again = run.draw(predictions, k, state, streams(run.seeds, f"redraw/{k}", attempt))
            tokens = {name: torch.where(ok.to(t.device).view(-1, *[1] * (t.dim() - 1)), t, again[name])
                      for name, t in tokens.items()}
            ok = ok | passing(tokens, ~ok)
        run.stats["redraws"] += count
        return tokens


class Refine(Extension):
    """Within-scale refinement: after a scale's tokens are drawn, its least confident share is
    masked and re-predicted, ``rounds`` times, each a network pass that sees the scale's other
    tokens (MaskGIT, HMAR). The share of round r of R follows ``schedule``: cosine,
    cos(pi/2 * r / (R + 1)), or linear, 1 - r / (R + 1), times ``max_share``. Confidence is the
    log-probability of a position's tokens under the distribution they were drawn from. ``scales``
    limits it to some scales (None: all). Rounds draw from generators seeded by (sample seed,
    scale, round). A model with several token groups per step refines one through its view
    (``core.protocol.RefinesView``); positions the view fixes are never re-predicted, and the share
    is of each sample's free positions."""

    def __init__(self, rounds: int, schedule: str = "cosine", scales=None, max_share: float = 1.0):
        if rounds < 0:
            raise ValueError(f"refine_rounds must be >= 0, got {rounds}")
        if schedule not in REFINE_SCHEDULES:
            raise ValueError(f"unknown refine schedule '{schedule}'; choose one of {', '.join(REFINE_SCHEDULES)}")
        if not 0 < max_share <= 1:
            raise ValueError(f"refine_max_share must be in (0, 1], got {max_share}")
        self.rounds, self.schedule, self.max_share = int(rounds), schedule, float(max_share)
        self.scales = None if scales is None else [int(s) for s in scales]

    def share(self, r: int) -> float:
        x = r / (self.rounds + 1)
        return self.max_share * (math.cos(math.pi / 2 * x) if self.schedule == "cosine" else 1 - x)

    def start(self, run):
        run.stats.setdefault("refine_passes", 0)
        if not self.rounds:
            return
        model = run.model
        if not isinstance(model, Refinable) or not model.refine_trained:
            raise ValueError(f"sample.refine_rounds={self.rounds}, but this {type(model).__name__} was "
                             "not trained for within-scale refinement: train it with model.refine=true "
                             "(or sample with refine_rounds=0)")
        if self.scales is not None:
            n = model.num_scales
            if not all(-n <= s < n for s in self.scales):
                raise ValueError(f"sample.refine_scales {self.scales} out of range for a model with "
                                 f"{n} scales (0 = the coarsest, -1 = the finest)")
            self.scales = [s % n for s in self.scales]

    def on_tokens(self, run, state, k, predictions, tokens):
        if not self.rounds or (self.scales is not None and k not in self.scales):
            return tokens
        view = isinstance(run.model, RefinesView)
        fixed = None
        own, preds = tokens, predictions
        if view:
            own, preds, fixed = run.model.refine_view(state, k, predictions, tokens)
        scheduler, name = run.scheduler, _single_token_name(own)
        current = own[name]
        conf = scheduler.log_prob(preds[name], current, k)
        free = torch.ones_like(conf, dtype=torch.bool) if fixed is None else ~fixed.to(conf.device)
        conf = conf.masked_fill(~free, float("inf"))  # fixed positions rank last
        n_free = free.sum(1)
        for r in range(1, self.rounds + 1):
            redo = torch.minimum((self.share(r) * n_free.double()).round().clamp_min(1).long(), n_free)
            rank = conf.argsort(dim=1, stable=True).argsort(dim=1)
            masked = rank < redo[:, None]  # the least confident positions
            if not bool(masked.any()):
                break
            preds = run.repredict(state, k, {name: current}, ~masked)
            new = scheduler.step(preds, k, streams(run.seeds, f"refine/{k}", r))[name]
            where = masked.view(*masked.shape, *[1] * (new.dim() - 2))
            current = torch.where(where, new, current)
            conf = torch.where(masked, scheduler.log_prob(preds[name], current, k), conf)
            run.stats["refine_passes"] += 1
        if view:
            return run.model.refine_apply(state, k, tokens, {name: current})
        return {name: current}


def _single_token_name(tokens: dict) -> str:
    if len(tokens) != 1:
        raise ValueError(f"within-scale refinement needs one token group per scale, got {list(tokens)}")
    return next(iter(tokens))


# ---------------------------------------------------------------- from the config
def from_config(s, model=None):
    """(scheduler, extensions) for a ``sample`` config section (``core.run.SampleConfig``).
    A model with its own scheduler (``core.protocol.HasScheduler``: DDPM, DDIM) gets that one with
    the section's guidance; every other model gets a ``TokenScheduler``."""
    from core.protocol import HasScheduler

    guidance = Guidance(float(s.guidance), s.guidance_schedule, tuple(s.get("guidance_interval", (0, -1))))
    if model is not None and isinstance(model, HasScheduler):
        scheduler = model.scheduler(guidance)
    else:
        scheduler = TokenScheduler(s.temperature, s.top_k, s.top_p, guidance)
    extensions = []
    if s.get("refine_rounds", 0):
        extensions.append(Refine(s.refine_rounds, s.get("refine_schedule", "cosine"), s.get("refine_scales"),
                                 s.get("refine_max_share", 1.0)))
    if s.get("max_redraws", 0):
        extensions.append(Redraw(s.max_redraws))
    if s.get("shift_sigma", 0) or s.get("shift_scale") is not None:
        if s.get("shift_scale") is None:
            raise ValueError("shift_sigma > 0 needs shift_scale: the scale after which to add the noise")
        extensions.append(NoiseShift(s.shift_scale, s.get("shift_sigma", 0.0)))
    return scheduler, extensions
