"""Building a run's model and its batches from the domain's hooks: the one model builder.

``build_model`` takes the domain's own model (``c2f_model``) or builds the core's scale model from
the domain's scale ops, tokenizer, refiner and condition (class labels, or a field on the support),
calibrating the scalar quantiser on training data when ``model.quant_calibrate`` is set, and
refusing a tokenizer whose pyramid disagrees with the model's. ``seconds_per_step`` times one
training step of that model on the run's device, precision and compile setting.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from omegaconf import DictConfig

from core.config import validate_config
from core.data import TensorData
from core.device import autocast, compile_module, grad_scaler, set_device, synchronize, to_device
from core.errors import ConfigError
from core.model import FieldScaleModel, ScaleModel
from core.plugins import get_domain
from core.pyramid import ResidualPyramid
from core.quantizers import IdentityQuantizer, make_quantizer
from core.refiner import ScaleTransformer
from core.targets import make_head


def build_model(cfg: DictConfig, domain, data) -> torch.nn.Module:
    """The model of a run: the domain's own (``c2f_model``), or the core's scale model from the
    domain's scale ops, tokenizer, refiner and condition (class labels, or a field on the
    support: ``c2f_condition``), with the scalar quantiser's per-scale unit calibrated on training
    data when ``model.quant_calibrate`` is set. With ``distill.teacher`` set, the student of such a
    model (``core.distill``)."""
    model = _build_model(cfg, domain, data)
    if cfg.distill.teacher:  # a student: the teacher's model shape around a few-call backbone
        from core.distill import make_student
        return make_student(cfg, model)
    return model


def _build_model(cfg: DictConfig, domain, data) -> torch.nn.Module:
    model = domain.c2f_model(cfg=cfg, data=data)
    if model is not None:
        return model
    ops = domain.c2f_scale_ops(cfg=cfg, data=data)
    if ops is None:
        raise NotImplementedError(f"domain '{domain.name}' implements neither c2f_model nor c2f_scale_ops")
    tokenizer = domain.c2f_tokenizer(cfg=cfg)
    channels = tokenizer.channels if tokenizer is not None else _data_channels(cfg, domain, data)
    m = cfg.model
    if tokenizer is not None:
        check_tokenizer(tokenizer, ops, m)
    quantizer = getattr(tokenizer, "quantizer", None)
    if quantizer is None:
        quantizer = make_quantizer(m.quantizer, channels, m.num_codes, len(ops.sizes),
                                   lo=m.quant_lo, hi=m.quant_hi)
        if m.quant_calibrate:
            calibrate_quantizer(quantizer, ops, channels, m, _calibration_batch(cfg, domain, data, tokenizer))
    pyramid = ResidualPyramid(ops, quantizer, m.variant, m.target_state)
    condition = domain.c2f_condition(cfg=cfg) or {}
    num_classes = int(condition.get("num_classes", 0))
    field_channels = int(condition.get("field_channels", 0))
    stencil = bool(condition.get("stencil", False))
    refiner = domain.c2f_refiner(cfg=cfg, in_channels=channels, num_scales=len(ops.sizes),
                                 num_classes=num_classes)
    if refiner is None:
        positions = [ops.positions(k) for k in range(len(ops.sizes))]
        width = FieldScaleModel.input_channels(channels, field_channels, stencil) if field_channels else channels
        refiner = ScaleTransformer(width, positions, num_classes, **cfg.refiner,
                                   own_channels=channels if m.refine else 0)
    head = make_head(m.target, cfg.refiner.d_model, quantizer)
    if field_channels:
        if m.refine:
            raise ConfigError("model.refine=true is not available for a field-conditioned model "
                              f"(domain '{domain.name}'); leave it out")
        return FieldScaleModel(pyramid, refiner, head, channels, field_channels, stencil, tokenizer)
    return ScaleModel(pyramid, refiner, head, channels, num_classes, tokenizer, m.label_drop,
                      refine_share=m.refine_share if m.refine else 0.0)


CALIBRATION_ITEMS = 256


def _data_channels(cfg, domain, data) -> int:
    if isinstance(data, TensorData):
        return data.x.shape[1]
    return make_batch(cfg, domain, data, torch.zeros(1, dtype=torch.long))[0].shape[1]


def _calibration_batch(cfg, domain, data, tokenizer=None) -> torch.Tensor:
    """The targets of ``CALIBRATION_ITEMS`` training items spread evenly over the split (in the
    tokenizer's latent space, when there is one)."""
    n = len(data)
    index = torch.as_tensor(np.linspace(0, n - 1, min(n, CALIBRATION_ITEMS)).astype(int))
    x = make_batch(cfg, domain, data, index)[0]
    if tokenizer is not None:
        with torch.no_grad():
            x = tokenizer.encode(x.to(next(tokenizer.parameters()).device)).cpu()
    return x


def calibrate_quantizer(quantizer, ops, channels: int, m, batch: torch.Tensor):
    """Set a scalar quantiser's per-scale, per-channel unit from the lossless bands of ``batch``:
    fine bands, often much smaller than coarse ones, are then coded as finely."""
    if not hasattr(quantizer, "calibrate"):
        raise ConfigError(f"model.quant_calibrate=true needs the scalar quantiser; model.quantizer="
                          f"{m.quantizer} has no per-scale unit")
    lossless = ResidualPyramid(ops, IdentityQuantizer(channels), m.variant, m.target_state)
    quantizer.calibrate(lossless.encode(batch).values)


def check_tokenizer(tokenizer, ops, m):
    """A tokenizer with a pyramid of its own (its codebook was trained on that pyramid's bands)
    must agree with the model's: the same variant, scales and up-sampling. (``model.target_state``
    is free: full Gaussian levels coded with the tokenizer's codebook are one of the levers.)"""
    own = getattr(tokenizer, "pyramid", None)
    if own is None:
        return
    pairs = [("model.variant", m.variant, "variant", own.variant),
             ("the scales of c2f_scale_ops", [tuple(s) for s in ops.sizes], "scales",
              [tuple(s) for s in own.ops.sizes]),
             ("the scale ops' up_mode", getattr(ops, "up_mode", None), "up_mode", getattr(own.ops, "up_mode", None))]
    for model_key, value, tokenizer_key, recorded in pairs:
        if value is not None and recorded is not None and value != recorded:
            raise ConfigError(f"{model_key} is {value!r} but the tokenizer's pyramid has {tokenizer_key} "
                              f"{recorded!r}: the model must code the latent with the pyramid the tokenizer "
                              f"was trained on. Set {model_key} to {recorded!r} (or use a tokenizer trained "
                              "with these settings)")


def load_data(cfg, domain, split: str):
    data = domain.c2f_load_data(cfg=cfg, split=split)
    if data is None:
        raise NotImplementedError(f"domain '{domain.name}' does not implement c2f_load_data")
    return data


def make_batch(cfg, domain, data, indices):
    """The batch of items ``indices``: the domain's ``c2f_collate``, or ``(x, cond)`` rows of a
    ``TensorData``."""
    batch = domain.c2f_collate(cfg=cfg, data=data, indices=indices)
    if batch is not None:
        return batch
    if not isinstance(data, TensorData):
        raise NotImplementedError(f"domain '{domain.name}' must implement c2f_collate for its data")
    return data.x[indices], (data.cond[indices] if data.cond is not None else None)


def seconds_per_step(cfg, probe_steps: int = 3, warmup_steps: int = 1, timings: dict | None = None) -> float:
    """Wall time of one training step of the model ``cfg`` builds, on its device, precision and
    compile setting (after ``warmup_steps``, which also absorb compilation): plans a step count
    for a wall-clock budget (``train.max_seconds`` has the last word) and measures devices.
    ``timings``, if given, receives ``warmup_seconds`` (the warm-up steps' time) and
    ``step_seconds`` (each probe step's time)."""
    cfg = validate_config(cfg)
    domain = get_domain(cfg.domain.name)
    device = set_device(cfg.device)
    data = load_data(cfg, domain, "train")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, domain, data).train().to(device)
    net = compile_module(model, cfg.train.compile_mode) if cfg.train.compile else model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = grad_scaler(device, cfg.train.precision)
    batch = to_device(make_batch(cfg, domain, data, torch.arange(cfg.train.batch_size) % len(data)), device)
    times = []
    for _ in range(probe_steps + warmup_steps):
        t0 = time.perf_counter()
        with autocast(device, cfg.train.precision):
            loss, _ = net(batch, torch.Generator().manual_seed(0))
        opt.zero_grad()
        scaler.scale(loss.float()).backward()
        scaler.step(opt)
        scaler.update()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    if timings is not None:
        timings["warmup_seconds"] = sum(times[:warmup_steps])
        timings["step_seconds"] = times[warmup_steps:]
    return sum(times[warmup_steps:]) / probe_steps
