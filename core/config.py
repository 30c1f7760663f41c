"""The config: the schema of the core sections, their checks, and composing a config the way the
command line does (the built-in domains' yaml and the search path of installed plugins).

``compose_config(overrides)`` is what tests, notebooks and benchmarks call; ``validate_config``
type-checks the core sections and their ranges (the domain section stays free-form);
``hydra_argv`` puts a command line in the order hydra's parser reads.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from core.device import check_precision
from core.errors import ConfigError
from core.plugins import UnknownDomainError, available_domains, config_dirs
from core.provenance import flatten
from core.records import nearest
from core.distill import DistillSection
from core.train import TrainSection

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class ModelConfig:
    variant: str = "laplacian"        # laplacian | var
    target_state: str = "residual"    # residual (Laplacian bands) | full (Gaussian levels)
    target: str = "index"             # index | bits | continuous
    quantizer: str = "scalar"         # scalar | vq | identity
    num_codes: int = 32
    quant_lo: float = -1.0
    quant_hi: float = 1.0
    quant_calibrate: bool = False     # scalar quantiser: per-scale unit from the training data's bands
    label_drop: float = 0.1
    refine: bool = False              # train for within-scale refinement (sample.refine_rounds)
    refine_share: float = 0.5         # share of training scales shown a partly masked copy of themselves


@dataclass
class RefinerConfig:
    d_model: int = 128
    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    mask: str = "block_causal"        # block_causal | markov
    window: int = 0                   # > 0: finer scales attend within windows of this many
    train_windows: float = 1.0        # share of a fine scale's windows a training step computes


@dataclass
class SampleConfig:
    num_samples: int = 100
    batch_size: int = 100
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    guidance: float = 0.0
    guidance_schedule: str = "constant"  # constant | linear | interval
    guidance_interval: list = field(default_factory=lambda: [0, -1])  # interval: first, last step
    refine_rounds: int = 0               # within-scale refinement rounds per scale (model.refine)
    refine_schedule: str = "cosine"      # cosine | linear: share of a scale re-predicted per round
    refine_scales: Optional[list] = None  # scales to refine (0 = coarsest, -1 = finest); null: all
    refine_max_share: float = 1.0        # the schedule's shares times this (at most this share per round)
    shift_scale: Optional[int] = None    # noise shift after this scale (0 = coarsest); null: none
    shift_sigma: float = 0.0             # its size, relative to the clean state's per-channel std
    max_redraws: int = 0                 # constrained draws (model.band_ok): redraws per scale
    flops_samples: int = 4               # samples whose FLOPs are counted (0: none)
    use_ema: bool = True                 # sample with the EMA weights when the checkpoint has them
    precision: str = "fp32"              # fp32 | bf16 | fp16: autocast of the network passes


@dataclass
class Schema:
    domain: Any = field(default_factory=dict)
    task: str = "all"
    seed: int = 0
    progress: bool = True
    checkpoint: Any = None
    samples_path: Any = None
    deterministic: bool = True        # bit-for-bit repeatable seeded runs (core.determinism)
    device: str = "auto"              # auto | cpu | cuda | cuda:N | mps (core.device)
    overrides: list = field(default_factory=list)  # the command line that composed this config
    model: ModelConfig = field(default_factory=ModelConfig)
    refiner: RefinerConfig = field(default_factory=RefinerConfig)
    train: TrainSection = field(default_factory=TrainSection)
    sample: SampleConfig = field(default_factory=SampleConfig)
    distill: DistillSection = field(default_factory=DistillSection)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# (setting, smallest allowed value): sizes and counts a run cannot do without
POSITIVE = (("train.steps", 1), ("train.batch_size", 1), ("train.log_every", 1), ("train.ckpt_every", 1),
            ("sample.num_samples", 1), ("sample.batch_size", 1), ("refiner.d_model", 1),
            ("refiner.layers", 1), ("refiner.heads", 1), ("model.num_codes", 2),
            ("sample.refine_rounds", 0), ("sample.max_redraws", 0), ("sample.flops_samples", 0),
            ("train.max_seconds", 0), ("train.lr", 0), ("distill.calls", 1), ("distill.pairs", 1),
            ("distill.val_pairs", 0), ("distill.pair_batch", 1), ("distill.noise_freqs", 0))


def known_settings(cfg=None) -> list[str]:
    """Every dotted setting name of the core schema (and of ``cfg``'s domain section)."""
    names = [k for k in flatten(OmegaConf.to_container(OmegaConf.structured(Schema))) if k != "domain"]
    if cfg is not None and "domain" in cfg:
        names += [f"domain.{k}" for k in flatten(OmegaConf.to_container(cfg.domain, resolve=False))]
    return names


def _unknown_key_error(key: str, cfg=None) -> ConfigError:
    guess = nearest(key, known_settings(cfg))
    return ConfigError(f"unknown setting '{key}'" + (f"; did you mean '{guess}'?" if guess else
                                                     "; see configs/config.yaml for the settings"))


def validate_config(cfg: DictConfig) -> DictConfig:
    """Check the core sections' keys, types and ranges; domain sections stay free-form."""
    try:
        schema = OmegaConf.structured(Schema)
        body = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
        merged = OmegaConf.merge(schema, body)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        if type(e).__name__ == "ConfigKeyError" and key:
            raise _unknown_key_error(str(key), cfg) from None
        raise ConfigError(f"invalid config value{f' for {key}' if key else ''}: {e.msg.splitlines()[0]}") from None
    if "name" not in merged.domain:
        raise ConfigError("config has no domain.name; pick a domain with domain=<name>")
    for key, least in POSITIVE:
        value = OmegaConf.select(merged, key)
        if value is not None and value < least:
            raise ConfigError(f"{key}={value} is not allowed: it must be at least {least}")
    check_precision(merged.train.precision, "train.precision")
    check_precision(merged.sample.precision, "sample.precision")
    if merged.train.compile_mode not in COMPILE_MODES:
        raise ConfigError(f"train.compile_mode={merged.train.compile_mode} is not a torch.compile mode; "
                          f"choose {', '.join(COMPILE_MODES)}")
    return merged


def compose_config(overrides: list[str] = ()) -> DictConfig:
    """Compose and validate the config without hydra's run machinery (tests, notebooks)."""
    from hydra import compose, initialize_config_dir

    given = [str(o) for o in overrides]
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=_with_plugin_paths(given))
    except HydraException as e:
        raise _composition_error(e, given) from None
    cfg = validate_config(cfg)
    cfg.overrides = given
    return cfg


def _composition_error(e: Exception, overrides: list[str]) -> ConfigError:
    """hydra's composition failure as one line: a misspelled setting gets the nearest name."""
    text = str(e)
    for o in overrides:
        key = o.lstrip("+~").split("=", 1)[0]
        if f"'{key}'" in text or f"Key '{key.rsplit('.', 1)[-1]}'" in text:
            if "not in struct" in text or "Could not override" in text or "Could not append" in text:
                try:  # the settings of the config without the misspelled one, domain's included
                    rest = compose_config([x for x in overrides if x != o])
                except (ConfigError, UnknownDomainError):
                    rest = None
                return _unknown_key_error(key, rest)
            if "Could not find" in text:
                break
    return ConfigError(text.splitlines()[0] if text else type(e).__name__)


def _domain_names(value: str) -> list[str]:
    """The domains a ``domain=`` value names: one, or a multirun sweep (``a,b``, ``choice(a,b)``)."""
    if "," not in value and "(" not in value:
        return [value]
    return [n for n in re.findall(r"[A-Za-z_][\w.-]*", value) if n not in ("choice", "glob", "range")]


def _with_plugin_paths(overrides: list[str]) -> list[str]:
    """``overrides`` and, last, hydra's search path to the config folders of installed plugins."""
    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("domain=")]
    for name in _domain_names(chosen[-1]) if chosen else []:
        if name not in available_domains():
            raise UnknownDomainError(
                f"unknown domain '{name}'; available domains: {', '.join(available_domains())}")
    extra = config_dirs()
    if extra:
        overrides = overrides + ["hydra.searchpath=[" + ",".join(f"file://{d}" for d in extra) + "]"]
    return overrides


# hydra's command-line flags that take a value (hydra._internal.utils.get_args_parser)
_VALUE_FLAGS = ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--experimental-rerun")
_INFO_TOPICS = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def hydra_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(hydra's flags, the settings) of a command line, in any order. hydra's parser reads the
    settings as one positional list, so the flags go first and the settings (with the plugins'
    search path) after them: ``domain=x --cfg job`` and ``--cfg job domain=x`` both work."""
    flags, settings, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in _VALUE_FLAGS and i + 1 < len(argv):
            flags += argv[i: i + 2]
            i += 2
        elif arg in ("--info", "-i") and i + 1 < len(argv) and argv[i + 1] in _INFO_TOPICS:
            flags += argv[i: i + 2]
            i += 2
        else:
            (flags if arg.startswith("-") else settings).append(arg)
            i += 1
    return flags, settings


def _settings_of(argv: list[str]) -> list[str]:
    """The setting overrides of a command line (no hydra flags or hydra.* settings)."""
    return [a for a in argv if "=" in a and not a.startswith("-")
            and not a.lstrip("+~").startswith("hydra.")]


def _is_sweep(setting: str) -> bool:
    """A multirun sweep (``key=a,b``, ``key=range(3)``, ``choice``/``glob``), not a list value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(setting).is_sweep_override()
    except HydraException:
        return False
