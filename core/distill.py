"""Few-step distillation: a student that makes a trained coarse-to-fine teacher's samples in fewer
network calls (``task=distill distill.teacher=<checkpoint>``).

The token scheduler draws every token as the inverse CDF of the teacher's (guided, tempered)
distribution at a uniform number from the sample's own random stream. With the sampler settings
fixed, the teacher's sampler is therefore a deterministic map from those numbers, the *noise* of
all scales, to the tokens. Two students (``distill.student``):

* ``noise`` (Distilled Decoding; Liu et al. 2024, arXiv 2412.17153): reads the noise and predicts
  the teacher's tokens for it, all scales in one call, or in ``distill.calls`` calls, each of which
  also sees the tokens of the calls before it. It samples by argmax: a student sample is its guess
  of the teacher's sample for the same seed (it reads the same uniforms, from copies of the
  streams).
* ``skip``: reads no noise; each call emits a group of adjacent scales (6 scales in 3 calls), each
  position drawn from its predicted distribution given the groups before.

Both train by cross-entropy on pairs (noise, teacher tokens) that the teacher makes with the run's
``sample`` settings, so guidance and temperature are distilled into the student: it samples with
a single, unguided batch. No training data is read. The pairs are cached in the run folder, keyed
by the teacher and the settings that change its draws.

A call g sees, at every position: the pyramid context of the tokens known before it (the
composition of the earlier calls' scales, restricted to the position's scale), those tokens
themselves (as the refiner's own-token input, a mask elsewhere) and, for the noise student,
Fourier features of the position's uniform. The backbone is the teacher's ``ScaleTransformer``
(block causal: a scale sees its own and the coarser scales' noise, which is exactly what its
teacher tokens depend on) and starts from the teacher's weights (``distill.init=teacher``).

Other ways to use the noise were measured on the MNIST refiner (150 steps on 3000 pairs, val FD;
the teacher: 2.37): reading only the coarser scales' noise and drawing at the position's own
uniform (the target is then the teacher's distribution, not a step function of the uniform)
7.8; the position's own noise and a draw at that uniform 8.3, or at a fresh one 8.1; the argmax
kept here 6.7. The argmax collapses to the mode where the student is unsure (recall 0.01 at
that point), which more training removes.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from omegaconf import OmegaConf

from core.errors import ConfigError, InputError, MissingFileError
from core.model import ScaleModel, module_device
from core.pyramid import flat, unflat
from core.refiner import ScaleTransformer, fourier_features
from core.sampler import Extension, Guidance, TokenScheduler, from_config, generate, member_seed, streams
from core.targets import IndexHead, Prediction

log = logging.getLogger("c2f")
STUDENTS = ("noise", "skip")
PAIRS_FILE = "pairs.pt"


@dataclass
class DistillSection:
    """The ``distill:`` section of the config (``core.config`` checks it)."""
    teacher: Any = None        # the teacher's checkpoint; a run with it set is (or trains) a student
    student: str = "noise"     # noise (reads the teacher's noise, takes the argmax) | skip (none)
    calls: int = 1             # network calls per sample: the scales are split into this many groups
    splits: Optional[list] = None  # the first scale of every call after the first (null: even split)
    pairs: int = 20000         # teacher samples to train on (made once, cached)
    pairs_dir: Any = None      # where the pairs are kept (null: <run folder>/pairs); students of one
                               # teacher and setting can share them
    val_pairs: int = 500       # held-out pairs: the student's token agreement with its teacher
    pair_batch: int = 500      # teacher samples drawn per batch
    init: str = "teacher"      # teacher (start from the teacher's weights) | random
    noise_freqs: int = 6       # Fourier frequencies of the noise features


def split_scales(num_scales: int, calls: int, splits=None) -> list[int]:
    """The first scale of each call (``[0, …]``): ``splits`` given, or the scales split evenly."""
    if calls < 1:
        raise ConfigError(f"distill.calls={calls}: a student makes at least one call")
    if calls > num_scales:
        raise ConfigError(f"distill.calls={calls} is more than the teacher's {num_scales} scales")
    if splits is None:
        starts = [round(g * num_scales / calls) for g in range(calls)]
    else:
        starts = [0] + [int(s) for s in splits]
        if len(starts) != calls:
            raise ConfigError(f"distill.splits={list(splits)} gives {len(starts)} calls, but distill.calls="
                              f"{calls}: give calls - 1 first scales")
    if any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= num_scales:
        raise ConfigError(f"distill.splits must rise within 1..{num_scales - 1} (the first scale of each "
                          f"call after the first); got {starts[1:]}")
    return starts


class Student(nn.Module):
    """A few-call student of a coarse-to-fine teacher (the scale-model protocol, ``core.protocol``:
    ``num_scales`` is its number of calls; it brings its own scheduler)."""

    def __init__(self, base: ScaleModel, backbone: ScaleTransformer, head: IndexHead,
                 starts: list[int], kind: str = "noise", noise_freqs: int = 6):
        super().__init__()
        if kind not in STUDENTS:
            raise ConfigError(f"unknown distill.student '{kind}'; choose one of {', '.join(STUDENTS)}")
        if base.pyramid.target_state != "residual":
            raise ConfigError("distillation composes the known scales into a context, which needs "
                              "Laplacian bands (model.target_state=residual)")
        self.pyramid, self.tokenizer = base.pyramid, base.tokenizer
        for frozen in (self.pyramid, self.tokenizer):
            if frozen is not None:
                frozen.requires_grad_(False)
        self.channels, self.num_classes = base.channels, base.num_classes
        self.backbone, self.head, self.kind, self.noise_freqs = backbone, head, kind, noise_freqs
        self.starts = list(starts)
        self.tokens_per_scale = list(backbone.tokens_per_scale)
        self.register_buffer("level", backbone.level.clone(), persistent=False)

    # --- the protocol
    @property
    def num_scales(self) -> int:
        return len(self.starts)

    @property
    def null_label(self) -> int:
        return self.num_classes

    @property
    def groups(self) -> int:
        return self.head.groups

    def scheduler(self, guidance) -> TokenScheduler:
        """Guidance and temperature are distilled: the noise student takes its argmax, the skip
        student draws from its distributions as they are; neither doubles the batch."""
        if guidance.guided:
            log.info("the student samples unguided: its teacher's guidance is distilled into it")
        return TokenScheduler(temperature=0.0 if self.kind == "noise" else 1.0)

    def init_state(self, cond: torch.Tensor, generators=None) -> dict:
        """The noise student reads the uniforms the teacher would draw for the same seeds, from
        copies of the streams (they stay untouched)."""
        B, L = len(cond), sum(self.tokens_per_scale)
        device = module_device(self)
        if self.kind == "noise":
            noise = noise_of([_copy(g) for g in generators], self.tokens_per_scale, self.groups).to(device)
        else:
            noise = torch.zeros(B, L, self.groups, device=device)
        return {"noise": noise, "codes": torch.zeros(B, L, self.groups, dtype=torch.long, device=device)}

    def _call_positions(self, g: int) -> torch.Tensor:
        last = self.starts[g + 1] if g + 1 < len(self.starts) else len(self.tokens_per_scale)
        return (self.level >= self.starts[g]) & (self.level < last)

    def predict(self, state: dict, g: int, cond: torch.Tensor) -> dict:
        """Call g: the backbone runs on the scales up to the call's last one only (block causal:
        the finer scales change nothing there), so an early call costs less than a full pass."""
        last = self.starts[g + 1] if g + 1 < len(self.starts) else len(self.tokens_per_scale)
        visible = (self.level < self.starts[g]).expand(len(cond), -1)
        pred = self.forward_tokens(state["noise"], state["codes"], visible, cond.to(state["codes"].device), last)
        first = sum(self.tokens_per_scale[: self.starts[g]])
        return {"band": Prediction(pred.kind, pred.value[:, first:])}

    def add_band(self, state: dict, tokens: dict, g: int) -> dict:
        state["codes"][:, self._call_positions(g)] = tokens["band"].to(state["codes"])
        return state

    def finish(self, state: dict) -> torch.Tensor:
        return decode_codes(self.pyramid, self.tokenizer, state["codes"], self.tokens_per_scale)

    # --- the network
    def forward_tokens(self, noise, codes, visible, cond, scales: int | None = None):
        """Predictions [B, L', G, V] at the positions of the first ``scales`` scales (all by
        default), seeing the ``codes`` where ``visible``."""
        per_scale = codes.split(self.tokens_per_scale, 1)
        values = torch.cat([self.pyramid.quantizer.dequantize(c, k) for k, c in enumerate(per_scale)], 1)
        values = values * visible.unsqueeze(-1).to(values)
        ops = self.pyramid.ops
        z = self.pyramid.init_state(len(codes), self.channels, codes.device)
        for k, v in enumerate(values.split(self.tokens_per_scale, 1)):
            z = self.pyramid.add_band(z, unflat(v, ops.sizes[k]), k)
        full = self.pyramid.finish(z)
        n = len(ops.sizes) if scales is None else scales
        P = sum(self.tokens_per_scale[:n])
        inputs = torch.cat([flat(ops.down(full, k)) for k in range(n)], 1)
        if self.kind == "noise":
            inputs = torch.cat([fourier_features(noise[:, :P], self.noise_freqs), inputs], -1)
        return self.head(self.backbone(inputs, cond, own=values[:, :P], visible=visible[:, :P]))

    def loss(self, batch, generator: torch.Generator | None = None):
        """Cross-entropy of the teacher's tokens at the scales of a call drawn per item (seeing
        the teacher's tokens of the scales before it)."""
        noise, codes, cond = batch
        B = len(codes)
        g = torch.randint(len(self.starts), (B,), generator=generator).to(codes.device)
        bounds = torch.tensor(self.starts + [len(self.tokens_per_scale)], device=codes.device)
        first, last = bounds[g].unsqueeze(1), bounds[g + 1].unsqueeze(1)
        level = self.level.unsqueeze(0)
        visible = level < first
        pred = self.forward_tokens(noise, codes, visible, cond)
        predicted = ~visible & (level < last)  # the call's own scales
        logits = pred.value[predicted]
        target = codes[predicted]
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        return loss, {"token_acc": float((logits.argmax(-1) == target).float().mean())}

    def forward(self, batch, generator: torch.Generator | None = None):
        return self.loss(batch, generator)


def _copy(generator: torch.Generator) -> torch.Generator:
    twin = torch.Generator(device=generator.device)
    twin.set_state(generator.get_state())
    return twin


def noise_of(generators, tokens_per_scale: list[int], groups: int) -> torch.Tensor:
    """[B, L, G]: the uniforms the token scheduler draws from each sample's main stream, scale by
    scale (``TokenScheduler.draw``), for a fresh copy of the streams."""
    return torch.stack([torch.cat([torch.rand((n, groups), generator=g) for n in tokens_per_scale])
                        for g in generators])


def decode_codes(pyramid, tokenizer, codes: torch.Tensor, tokens_per_scale: list[int]) -> torch.Tensor:
    z = pyramid.decode(list(codes.split(tokens_per_scale, 1)))
    return tokenizer.decode(z) if tokenizer is not None else z


# ---------------------------------------------------------------- the teacher's pairs
class Record(Extension):
    """Keeps the tokens of every step (the conditional half), after the other extensions."""

    def start(self, run):
        self.tokens = []

    def on_tokens(self, run, state, k, predictions, tokens):
        self.tokens.append(tokens["band"])
        return tokens


class Replay(TokenScheduler):
    """The token scheduler drawing from given uniforms [B, L, G] instead of the streams: the
    teacher's map from noise to tokens, to check that pairs are what their noise makes."""

    def __init__(self, base: TokenScheduler, noise: torch.Tensor, tokens_per_scale: list[int]):
        super().__init__(base.temperature, base.top_k, base.top_p, base.guidance)
        self.noise = noise.split(tokens_per_scale, 1)

    def step(self, predictions, k, generators, condition_fn=None):
        self._k = k
        return super().step(predictions, k, generators, condition_fn)

    def draw(self, pred, generators):
        return self.invert(pred, self.noise[self._k].to(pred.value.device))


def pair_seeds(seed: int, cond: torch.Tensor, start: int) -> list[int]:
    """Seeds of the pairs: a stream of their own, so no pair shares noise with ``task=sample``."""
    return [member_seed(seed, f"distill/{int(c)}", start + i) for i, c in enumerate(cond.tolist())]


@torch.no_grad()
def make_pairs(teacher, scheduler, extensions, cond: torch.Tensor, seeds: list[int]):
    """(noise [B, L, G], teacher tokens [B, L, G], NFE per sample) for the samples ``seeds``."""
    record = Record()
    _, nfe = generate(teacher, scheduler, cond, seeds, list(extensions) + [record])
    codes = torch.cat(record.tokens, 1).cpu()
    noise = noise_of(streams(seeds), [t.shape[1] for t in record.tokens], codes.shape[-1])
    return noise, codes, nfe


@torch.no_grad()
def replay_tokens(teacher, scheduler, extensions, cond: torch.Tensor, seeds: list[int], noise: torch.Tensor):
    """The teacher's tokens for ``noise``, drawn by ``Replay`` instead of the streams."""
    record = Record()
    replay = Replay(scheduler, noise, teacher.refiner.tokens_per_scale)
    generate(teacher, replay, cond, seeds, list(extensions) + [record])
    return torch.cat(record.tokens, 1).cpu()


# ---------------------------------------------------------------- building
def check_teacher(cfg, domain):
    """The teacher checkpoint's recorded config; refuses what cannot be distilled."""
    from core.records import recorded_config
    from core.train import load_checkpoint

    path = Path(str(cfg.distill.teacher))
    if not path.is_file():
        raise MissingFileError(f"distill.teacher: no checkpoint at {path} (give the teacher run's "
                               "checkpoints/last.pt)")
    state = load_checkpoint(path)
    recorded = recorded_config(state)
    if recorded is None:
        raise InputError(f"distill.teacher {path} records no settings (an older checkpoint): retrain it")
    name = recorded.get("domain", {}).get("name")
    if name != cfg.domain.name:
        raise ConfigError(f"distill.teacher was trained on domain '{name}', but this run is domain "
                          f"'{cfg.domain.name}': pass domain={name}")
    if (recorded.get("distill") or {}).get("teacher"):
        raise ConfigError(f"distill.teacher {path} is itself a student: distil its teacher instead")
    return recorded


def student_config(cfg, recorded: dict):
    """The student's config: the teacher's model, tokenizer and domain settings, this run's
    distill, train and sample settings (and where its data are)."""
    from core.config import validate_config

    own = OmegaConf.to_container(cfg, resolve=True)
    merged = dict(recorded)
    for key in ("task", "seed", "progress", "checkpoint", "samples_path", "deterministic", "device",
                "overrides", "train", "sample", "distill"):
        if key in own:
            merged[key] = own[key]
    merged["domain"] = {**recorded["domain"], "data_dir": own["domain"].get("data_dir",
                                                                            recorded["domain"].get("data_dir"))}
    return validate_config(OmegaConf.create(merged))


def make_student(cfg, base) -> Student:
    """The student of ``cfg.distill`` around a freshly built teacher-shaped model ``base``."""
    if type(base) is not ScaleModel:
        raise ConfigError(f"distillation needs a coarse-to-fine scale model with token heads (the core's "
                          f"ScaleModel); this teacher is a {type(base).__name__}")
    if not isinstance(base.head, IndexHead):
        raise ConfigError(f"distillation needs index targets (model.target=index); the teacher has "
                          f"model.target={base.head.kind}")
    d = cfg.distill
    starts = split_scales(base.num_scales, int(d.calls), d.splits)
    old = base.refiner
    noise_in = base.head.groups * (2 * int(d.noise_freqs) + 1) if d.student == "noise" else 0
    positions = [base.pyramid.ops.positions(k) for k in range(base.num_scales)]
    # block causal whatever the teacher's mask: a scale's teacher tokens depend on the noise of
    # every coarser scale (the masks are buffers: the teacher's weights still fit)
    sizes = {**cfg.refiner, "mask": "block_causal"}
    backbone = ScaleTransformer(noise_in + base.channels, positions, base.num_classes, **sizes,
                                own_channels=base.channels)
    if not isinstance(old, ScaleTransformer):
        raise ConfigError(f"distillation needs the core's ScaleTransformer refiner; the teacher has "
                          f"{type(old).__name__}")
    head = IndexHead(cfg.refiner.d_model, base.head.groups, base.head.num_codes)
    return Student(base, backbone, head, starts, d.student, int(d.noise_freqs))


def init_from_teacher(student: Student, teacher: ScaleModel):
    """Copy the teacher's backbone and head into the student; the noise part of the input layer
    starts small, so the first student is the teacher reading its contexts."""
    mine = student.backbone.state_dict()
    for key, value in teacher.refiner.state_dict().items():
        if key == "inp.weight":
            w = mine[key].clone()
            w[:, w.shape[1] - value.shape[1]:] = value
            mine[key] = w
        elif key in mine and mine[key].shape == value.shape:
            mine[key] = value
    student.backbone.load_state_dict(mine)
    student.head.load_state_dict(teacher.head.state_dict())
    student.pyramid.load_state_dict(teacher.pyramid.state_dict())


@torch.no_grad()
def agreement(student: Student, noise, codes, cond, batch: int = 250) -> dict:
    """How much of the teacher's sampler a noise student reproduces on held-out pairs: the share
    of tokens, per call (the calls after the first see the student's own earlier tokens) and in
    all, and of samples whose tokens all agree."""
    student.eval()
    sched = student.scheduler(Guidance())
    hits, counts, exact = [0.0] * student.num_scales, [0] * student.num_scales, 0
    for i in range(0, len(codes), batch):
        c, y = codes[i:i + batch], cond[i:i + batch]
        state = {"noise": noise[i:i + batch], "codes": torch.zeros_like(c)}
        for g in range(student.num_scales):
            where = student._call_positions(g)
            state = student.add_band(state, {"band": sched.invert(student.predict(state, g, y)["band"], None)}, g)
            hits[g] += float((state["codes"][:, where] == c[:, where]).sum())
            counts[g] += c[:, where].numel()
        exact += int((state["codes"] == c).flatten(1).all(1).sum())
    out = {f"agreement/call{g}": hits[g] / counts[g] for g in range(student.num_scales)}
    out.update({"agreement": sum(hits) / sum(counts), "agreement/exact_samples": exact / len(codes)})
    return out


@torch.no_grad()
def held_out_loss(student: Student, pairs: tuple, batch: int = 250) -> float:
    """The student's training loss on held-out pairs (each call's share drawn by a fixed seed)."""
    student.eval()
    gen, total = torch.Generator().manual_seed(0), 0.0
    n = len(pairs[0])
    for i in range(0, n, batch):
        loss, _ = student.loss(tuple(t[i:i + batch] for t in pairs), gen)
        total += float(loss) * len(pairs[0][i:i + batch])
    return total / n


# ---------------------------------------------------------------- the task
# the sample settings that change the teacher's draws: they key the pairs and may not change on resume
PAIR_SETTINGS = ("temperature", "top_k", "top_p", "guidance", "guidance_schedule", "guidance_interval",
                 "refine_rounds", "refine_schedule", "refine_scales", "use_ema", "precision")


def pair_settings(cfg) -> dict:
    return {k: OmegaConf.to_container(cfg.sample, resolve=True)[k] for k in PAIR_SETTINGS}


def check_distill_settings(cfg):
    """Refuse sample settings a student cannot learn from, before any work."""
    d, s = cfg.distill, cfg.sample
    if d.student not in STUDENTS:
        raise ConfigError(f"unknown distill.student '{d.student}'; choose one of {', '.join(STUDENTS)}")
    if d.init not in ("teacher", "random"):
        raise ConfigError(f"distill.init={d.init}: choose teacher or random")
    if d.student == "noise" and s.refine_rounds:
        raise ConfigError("a noise student reads the teacher's main draws only; refinement rounds draw "
                          "from streams of their own: distil with sample.refine_rounds=0, or use "
                          "distill.student=skip")
    if s.shift_scale is not None or s.shift_sigma or s.max_redraws:
        raise ConfigError("distillation learns the teacher's own sampler: leave out sample.shift_scale, "
                          "shift_sigma and max_redraws")


def task_distill(cfg, domain, run_dir: Path) -> dict:
    """Make (or reuse) the teacher's pairs, then train the student with the core trainer."""
    from core import distributed
    from core.build import build_model, load_data
    from core.device import current as current_device
    from core.io import save_atomic
    from core.parts import keyed_folder
    from core.records import stamp
    from core.train import TrainConfig, load_checkpoint, load_weights, train

    if not cfg.distill.teacher:
        raise ConfigError("task=distill needs the teacher: distill.teacher=<run folder>/checkpoints/last.pt")
    check_distill_settings(cfg)
    recorded = check_teacher(cfg, domain)
    scfg = student_config(cfg, recorded)
    teacher_cfg = scfg.copy()
    teacher_cfg.distill.teacher = None
    data = load_data(teacher_cfg, domain, "train")
    device = current_device()
    torch.manual_seed(cfg.seed)
    teacher = build_model(teacher_cfg, domain, data)
    student = make_student(scfg, teacher)  # refuses a teacher it cannot distil, before any work
    try:
        load_weights(teacher, cfg.distill.teacher, use_ema=cfg.sample.use_ema)
    except RuntimeError as e:
        raise ConfigError(f"distill.teacher's weights do not fit the model its own settings build "
                          f"({str(e).splitlines()[0][:200]}): is it a checkpoint of this version?") from None
    teacher = teacher.to(device).eval()
    try:
        scheduler, extensions = from_config(cfg.sample, teacher)
    except ValueError as e:
        raise ConfigError(f"sample settings: {e}") from None

    # the pairs: made once, kept for the teacher and the settings that made them
    n_train, n_val = int(cfg.distill.pairs), int(cfg.distill.val_pairs)
    ckpt = Path(str(cfg.distill.teacher)).resolve()
    key = {"teacher": str(ckpt), "teacher_mtime": ckpt.stat().st_mtime_ns, "seed": int(cfg.seed),
           "sample": pair_settings(cfg), "pairs": n_train + n_val}
    folder, _ = keyed_folder(Path(str(cfg.distill.pairs_dir)) if cfg.distill.pairs_dir else run_dir / "pairs", key)
    path = folder / PAIRS_FILE
    if not path.is_file():
        pairs = _teacher_pairs(cfg, teacher, scheduler, extensions, n_train + n_val, device)
        if distributed.is_main():
            save_atomic(pairs, path)
        distributed.barrier()
    pairs = torch.load(path, weights_only=True)
    noise, codes, cond = pairs["noise"], pairs["codes"], pairs["cond"]

    own_ckpt = run_dir / "checkpoints" / "last.pt"
    if cfg.distill.init == "teacher" and not own_ckpt.is_file():
        init_from_teacher(student, teacher)
    del teacher
    tcfg = TrainConfig(**OmegaConf.to_container(scfg.train), seed=cfg.seed, progress=cfg.progress,
                       device=str(device), desc="distill")
    tr = (noise[:n_train], codes[:n_train], cond[:n_train])
    stats = train(student, n_train, lambda idx: tuple(t[idx] for t in tr), tcfg, run_dir, record=stamp(scfg))
    if n_val:  # held out: the raw weights, and the EMA's when there is one (what sampling may use)
        held = tuple(t[n_train:].to(device) for t in (noise, codes, cond))
        state = load_checkpoint(own_ckpt)
        for weights, suffix in (("model", ""), ("ema", "_ema")):
            if state.get(weights) is None:
                continue
            student.load_state_dict(state[weights])
            student = student.to(device)
            stats[f"val_loss{suffix}"] = held_out_loss(student, held)
            if student.kind == "noise":
                stats.update({f"{k.replace('agreement', 'agreement' + suffix)}": v
                              for k, v in agreement(student, *held).items()})
    stats.update({"pairs": n_train, "pair_seconds": pairs["seconds"], "teacher_nfe": pairs["nfe"],
                  "seconds_total": pairs["seconds"] + stats.get("train_seconds", 0.0),
                  "student_calls": len(student.starts),
                  "parameters": sum(p.numel() for p in student.parameters() if p.requires_grad)})
    return stats


def _teacher_pairs(cfg, teacher, scheduler, extensions, n: int, device) -> dict:
    """``n`` pairs of the teacher, classes cycling, in batches of ``distill.pair_batch``."""
    from tqdm.auto import tqdm

    from core.device import autocast

    classes = teacher.num_classes
    cond = torch.arange(n) % classes if classes else torch.full((n,), teacher.null_label)
    batch = int(cfg.distill.pair_batch)
    noise, codes, seconds, nfe = [], [], 0.0, 0
    for start in tqdm(range(0, n, batch), desc="teacher pairs", disable=not cfg.progress, dynamic_ncols=True):
        c = cond[start:start + batch].to(device)
        seeds = pair_seeds(cfg.seed, c, start)
        tick = time.perf_counter()
        with autocast(device, cfg.sample.precision):  # as task=sample draws them
            nz, cd, nfe = make_pairs(teacher, scheduler, extensions, c, seeds)
        seconds += time.perf_counter() - tick
        if start == 0 and cfg.distill.student == "noise" and not _replays(teacher, scheduler, extensions,
                                                                          c, seeds, nz, cd, cfg.sample.precision, device):
            raise ConfigError("the teacher's tokens are not a function of its main draws with these sample "
                              "settings (an extension draws from the main streams): use distill.student=skip")
        noise.append(nz)
        codes.append(cd)
    return {"noise": torch.cat(noise), "codes": torch.cat(codes), "cond": cond, "seconds": seconds, "nfe": nfe}


def _replays(teacher, scheduler, extensions, cond, seeds, noise, codes, precision, device) -> bool:
    """Whether the teacher's tokens are a function of the noise alone: replayed under other seeds
    (so no stream of an extension is reproduced), the noise gives the same tokens."""
    from core.device import autocast

    others = [member_seed(s, "replay", 0) for s in seeds]
    with autocast(device, precision):
        return torch.equal(replay_tokens(teacher, scheduler, extensions, cond, others, noise), codes)
