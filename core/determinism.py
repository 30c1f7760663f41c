"""Deterministic mode: seeded runs that repeat bit for bit, and segment sums that do not depend
on the thread count or on the order of the rows.

``set_deterministic(True)`` (the ``deterministic`` config key, on by default; core.run calls it
at the start of every run) puts torch into its deterministic mode; ``is_deterministic()`` reads
it; ``deterministic(...)`` sets it for a ``with`` block and restores the previous state (tests).

What was nondeterministic (torch 2.13, CPU, 2 threads). Not ``index_add_`` / ``index_add`` /
``scatter_add_`` / ``scatter_reduce`` / PyG's ``scatter``: on the CPU they add the rows of each
segment in input order and gave the same bits on every repeat and for 1 or 2 threads, with or
without deterministic mode. The culprit is the *backward* of advanced indexing ``x[index]``: its
gradient is ``index_put_(..., accumulate=True)``, which on the CPU splits the rows between the
threads and adds them with atomic adds, so a row gathered several times, on both sides of the
split, gets its gradient terms in an order that depends on thread timing. The graph refiner
gathered node features per coarse edge (``h[pairs[:, 0]]``, ``z[tail_side]``); in a batch where a
node with >= 3 edges straddles the middle row (about one training step in five of the default
graph config, most steps on planar graphs) the gradient took one of two bit patterns (22 / 38 of
60 identical forward-backward passes), so the runs drifted apart. Tensors under torch's grain
size (32768 elements) are not split, which is why the tests' tiny configs always repeated.

Fixes (each one suffices on the CPU; both are in place):

- ``torch.use_deterministic_algorithms(True)`` (``set_deterministic``) switches that backward to
  a sorted, sequential accumulation (documented for ``__getitem__`` / ``index_put_(accumulate=
  True)`` / ``put_`` on the CPU). No op of the image (latent, conv tokenizer), weather or graph
  training raised or warned on the CPU with ``warn_only=False``, and two seeded runs of each
  matched bit for bit. On a GPU, ops without a deterministic kernel only warn (``warn_only=True``,
  the default here): a switch that is on by default must not stop a run. The first call imports
  ``torch._inductor`` (about 2 s, once per process).
- ``gather_rows(x, index)`` (the graph refiner's gathers) uses ``index_select``, whose backward is
  ``index_add_``: deterministic and thread-count independent on the CPU in either mode, and no
  slower than ``x[index]``; so the refiner needs no deterministic-only path.

``index_sum(values, index, size)`` is a segment sum that is bit-identical for any thread count
*and* any order of its rows (a canonical order: rows sorted by segment, then by an exact integer
hash of their bits; identical rows may swap harmlessly), equal to ``index_add_`` up to rounding.
Use it where a result must not depend on the row order (e.g. a permuted graph). It costs
2.5-5.5x an ``index_add_`` (0.44 vs 0.08 ms for 1227 rows x 96 into 1341 segments, 16.5 vs 6.6 ms
for 60000 x 32 into 20000; 2 threads), so the refiner does not use it: ``index_add_`` is
deterministic there already.

Measured cost (benchmarks/determinism_cost.py; seconds per training step: loss with its
pyramids, backward, clip, AdamW; median of 30 interleaved steps, 2 torch threads, torch 2.13 CPU,
a 2-core machine at low load; two runs):

| graph config                         | off            | deterministic  | before: x[index], off / on      |
|--------------------------------------|----------------|----------------|---------------------------------|
| tiny (tests; d 16, 1 layer, batch 4) | 0.0216, 0.0213 | 0.0209, 0.0193 | 0.0225 / 0.0200, 0.0198 / 0.0201 |
| test (planar, d 64, +triangle layer) | 0.0303, 0.0302 | 0.0316, 0.0314 | 0.0315 / 0.0314, 0.0300 / 0.0297 |
| default (d 96, 4 layers, batch 16)   | 0.2124, 0.2299 | 0.2126, 0.2261 | 0.2063 / 0.2071, 0.2366 / 0.2288 |

Deterministic mode costs nothing measurable here (ratios 0.91-1.04, within the noise); the
refiner's gathers with an ``index_sum`` backward instead cost 0.96-1.07x (1.13-1.17x with
``index_sum`` also for the refiner's own segment sums, an earlier version). While other jobs
load both cores, 2-thread steps get 10-100x slower for every variant (threads wait for each other)
and the ratios scatter (0.35-1.47 in single runs): compare on a quiet machine.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch

__all__ = ["set_deterministic", "is_deterministic", "deterministic", "index_sum", "gather_rows"]


def set_deterministic(enabled: bool = True, *, warn_only: bool = True) -> None:
    """Turn torch's deterministic mode on or off for this process.

    On: ``torch.use_deterministic_algorithms(True, warn_only=warn_only)`` (deterministic kernels
    where torch has them; ops without one warn, or raise with ``warn_only=False``), cuDNN in
    deterministic mode without autotuning, and ``CUBLAS_WORKSPACE_CONFIG`` set for cuBLAS (read
    when CUDA starts; set it in the environment to cover a process that started CUDA already).
    Off: torch's defaults for these flags (cuDNN autotuning stays off)."""
    enabled = bool(enabled)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only if enabled else False)
    torch.backends.cudnn.deterministic = enabled
    if enabled:
        torch.backends.cudnn.benchmark = False


def is_deterministic() -> bool:
    """Whether torch's deterministic mode is on (however it was set)."""
    return torch.are_deterministic_algorithms_enabled()


def _state():
    return (torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
            os.environ.get("CUBLAS_WORKSPACE_CONFIG"))


def _restore(state):
    enabled, warn_only, cudnn_det, cudnn_bench, cublas = state
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_det, cudnn_bench
    if cublas is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


@contextmanager
def deterministic(enabled: bool = True, *, warn_only: bool = True):
    """``set_deterministic(enabled)`` for a ``with`` block; the previous state comes back after."""
    saved = _state()
    try:
        set_deterministic(enabled, warn_only=warn_only)
        yield
    finally:
        _restore(saved)


# ---------------------------------------------------------------- segment sums
_COEFFICIENTS: dict = {}


def _row_hash(flat: torch.Tensor) -> torch.Tensor:
    """An exact integer hash [m] (int64) of each row's bits: sum_j bits_j * c_j over the row's
    32-bit words (wrapping integer arithmetic: the same in any order, for any thread count)."""
    if flat.is_complex():
        flat = torch.view_as_real(flat)
    flat = flat.reshape(len(flat), -1).contiguous()
    if flat.element_size() in (4, 8):
        words = flat.view(torch.int32)
    else:
        words = (flat.view(torch.int16) if flat.element_size() == 2 else flat.view(torch.int8)).to(torch.int32)
    key = (words.shape[1], words.device)
    if key not in _COEFFICIENTS:
        coef = torch.randint(-2**31, 2**31 - 1, (words.shape[1],), dtype=torch.int32,
                             generator=torch.Generator().manual_seed(0x5EED))
        _COEFFICIENTS[key] = (coef | 1).to(words.device)
    return (words * _COEFFICIENTS[key]).sum(1, dtype=torch.int64)


def _canonical_order(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Rows sorted by segment, then by a hash of their bits (one stable sort of a packed int64
    key): the same order for any permutation of the rows, except among rows whose hashes agree
    in their low 63 - log2(size) bits (identical rows: harmless; distinct rows of one segment:
    a chance of about 2**-(63 - log2(size)) per pair)."""
    with torch.no_grad():
        shift = 63 - max(int(size - 1).bit_length(), 1)
        low = _row_hash(values.detach()) & ((1 << shift) - 1)
        return ((index.to(torch.int64) << shift) | low).argsort(stable=True)


def index_sum(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """``out[i] = sum of values[j] over the rows j with index[j] == i``, [size, *values.shape[1:]].

    The result is bit-identical for any thread count and any permutation of the rows of
    ``(values, index)``: the rows are summed in a canonical order (by segment, then by an exact
    hash of their bits), sequentially per segment. Differentiable (the gradient is a gather).
    Equal to ``zeros.index_add_(0, index, values)`` up to floating-point rounding."""
    index = torch.as_tensor(index, device=values.device).reshape(-1)
    if values.dim() == 0 or len(values) != len(index):
        raise ValueError(f"index_sum: values {tuple(values.shape)} and index {tuple(index.shape)} "
                         "need one index per row")
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= size):
        raise IndexError(f"index_sum: index out of range [0, {size})")
    out = values.new_zeros((int(size), *values.shape[1:]))
    if len(index) == 0 or values[0].numel() == 0:
        return out.index_add(0, index, values)
    order = _canonical_order(values, index, int(size))
    return out.index_add(0, index.index_select(0, order), values.index_select(0, order))


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` for a 1-D index tensor (rows), through ``index_select``: its backward sums
    the gradients of repeated rows with ``index_add_`` (on the CPU serially, in row order: the
    same bits for every repeat and thread count, with or without deterministic mode; on a GPU,
    deterministic in deterministic mode), where the backward of ``x[index]`` uses CPU atomics
    whose order depends on thread timing. Also faster than ``x[index]``."""
    return x.index_select(0, index)
