"""One process, one machine or many: the few torch.distributed calls the core needs.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group starts with
nccl when the run's device is a GPU (each rank on the GPU of its ``LOCAL_RANK``) and gloo on
CPUs; otherwise every helper is a no-op for one process.
Rank 0 alone writes files (checkpoints, logs, samples, metrics).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def _slurm_environment():
    """Under SLURM (srun, hydra's submitit launcher) without torchrun, derive the torch.distributed
    variables from the job's own (needs submitit, the ``slurm`` extra)."""
    if "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError as e:
        raise RuntimeError("a multi-task SLURM job needs submitit (pip install -e '.[slurm]') "
                           "or a torchrun launch") from e
    TorchDistributedEnvironment().export()


def init(device=None) -> tuple[int, int]:
    """Start the process group when launched by torchrun or as a multi-task SLURM job; return
    (rank, world size). ``device`` (this rank's, from ``core.device``): nccl when it is a GPU,
    gloo otherwise (a CPU run on a GPU node included)."""
    _slurm_environment()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        gpu = device is not None and torch.device(device).type == "cuda"
        if gpu:
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group(backend="nccl" if gpu else "gloo")
    return rank(), world_size()


def _collective_device():
    """nccl reduces GPU tensors only."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier():
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_scalar(value: float) -> float:
    """The mean of a float over ranks (for logging)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return float(t) / world_size()


def shard(items: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of a global batch (sizes must divide evenly)."""
    world = world_size()
    if world == 1:
        return items
    if len(items) % world:
        raise ValueError(f"global batch of {len(items)} does not split over {world} processes; "
                         "make train.batch_size a multiple of the world size")
    return items.chunk(world)[rank()]
