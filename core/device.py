"""Where the networks run, and in what precision.

``device`` (a top-level setting): ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``.
``auto`` takes a CUDA GPU when torch sees one and the CPU otherwise (never ``mps``: some ops of
the domains have no MPS kernel, so it is only used when asked for). Under torchrun every process
takes the GPU of its ``LOCAL_RANK``. ``core.run`` resolves the setting once per run
(``set_device``); code that builds a network or a tensor for one asks ``current()``.

What stays on the CPU, whatever the device: every random generator (``torch.Generator()``). Each
draw is made on the CPU and then moved, so member i's noise, a training step's batch and label
dropout are the same numbers on every device; only the network's arithmetic differs
(docs/scaling.md says what is bit-identical). Checkpoints are written with CPU tensors and read
with ``map_location="cpu"``, so a checkpoint moves freely between machines.

Precision (``train.precision``, ``sample.precision``): ``fp32`` | ``bf16`` | ``fp16``. The
lower ones run the forward pass under ``torch.autocast`` (weights and optimiser stay fp32);
``fp16`` training scales the loss (``torch.amp.GradScaler``) so small gradients do not vanish.
"""
from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from core.errors import ConfigError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"

_current = torch.device("cpu")


def resolve(setting: str = "auto") -> torch.device:
    """The torch device a ``device`` setting names on this machine; a clear ConfigError when the
    machine has no such device."""
    text = str(setting).strip().lower()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if text == "auto":
        return torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise ConfigError("device=mps, but this torch build or machine has no MPS (Apple GPU); "
                              "use device=cpu or device=auto")
        return torch.device("mps")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={setting}, but torch sees no CUDA GPU (torch.cuda.is_available() "
                              "is False: no GPU, or a CPU-only torch build); use device=cpu or device=auto")
        index = local
        if text != "cuda":
            try:
                index = int(text.split(":", 1)[1])
            except ValueError:
                raise ConfigError(f"device={setting} is not a device; choose {DEVICE_CHOICES}") from None
        count = torch.cuda.device_count()
        if not 0 <= index < count:
            raise ConfigError(f"device={setting}: GPU {index} does not exist (this machine has {count}: "
                              f"cuda:0..cuda:{count - 1})")
        return torch.device("cuda", index)
    raise ConfigError(f"device={setting} is not a device; choose {DEVICE_CHOICES}")


def set_device(device) -> torch.device:
    """Make ``device`` the one ``current()`` returns (a torch.device or a setting string)."""
    global _current
    _current = device if isinstance(device, torch.device) else resolve(device)
    if _current.type == "cuda":
        torch.cuda.set_device(_current)
    return _current


def current() -> torch.device:
    return _current


def to_device(obj, device):
    """``obj`` with every tensor in it on ``device``: tensors, tuples, lists, dicts and objects
    with a ``.to`` method (a PyG batch); anything else (a list of graphs whose model builds its own
    tensors on the device) unchanged."""
    device = torch.device(device)
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=device.type == "cuda")
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # named tuple
        return type(obj)(*(to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    if hasattr(obj, "to") and callable(obj.to) and not isinstance(obj, torch.nn.Module):
        try:
            return obj.to(device)
        except TypeError:
            return obj
    return obj


def to_cpu(obj):
    """``to_device(obj, "cpu")`` with tensors detached: what a checkpoint stores."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def check_precision(precision: str, key: str = "train.precision") -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"{key}={precision} is not a precision; choose {', '.join(PRECISIONS)}")
    return precision


def autocast(device, precision: str):
    """The context a forward pass runs in: nothing for fp32, else ``torch.autocast`` to bf16/fp16."""
    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def grad_scaler(device, precision: str):
    """A GradScaler for fp16 training (disabled, a pass-through, for fp32 and bf16)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")


def synchronize(device=None):
    """Wait for the device's queued work (timing on a GPU needs it; a no-op on the CPU)."""
    device = torch.device(device) if device is not None else _current
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def compile_module(module, mode: str = "default"):
    """``torch.compile(module)`` for training. numpy inside a forward pass (the graph domain
    builds its pyramids with numpy in the loss) is not traced: it runs eagerly between the
    compiled pieces (dynamo's ``trace_numpy`` would trace it, and fails on boolean masks)."""
    import torch._dynamo

    torch._dynamo.config.trace_numpy = False
    return torch.compile(module, mode=None if mode == "default" else mode)
