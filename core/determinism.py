"""Deterministic mode: seeded runs that repeat bit for bit, and segment sums that do not depend
on the thread count.

``set_deterministic(True)`` (the ``deterministic`` config key, on by default) puts torch into
its deterministic mode; ``is_deterministic()`` reads it; ``deterministic(...)`` sets it for a
``with`` block and restores the previous state (tests). Models read the flag at call time.

What was nondeterministic (torch 2.13, CPU, 2 threads). Not ``index_add_``, ``index_add`` or
``scatter_reduce``: on the CPU they loop over the index serially (each row added in input order)
and gave the same bits on every repeat and for 1 or 2 threads. The culprit is the *backward* of
advanced indexing ``x[index]`` (``Tensor.__getitem__`` with an index tensor): its gradient is
``index_put_(..., accumulate=True)``, which on the CPU splits the rows between the threads and
adds them with atomic adds, so a row that is gathered several times, on both sides of the split,
gets its gradient terms in an order that depends on thread timing. The graph refiner gathers
node features per coarse edge (``h[pairs[:, 0]]``); in a batch where a node of degree >= 3 has
edges on both sides of the middle row (about one training step in five of the default graph
config), the node's gradient took one of two bit patterns (81 / 219 of 300 repeats on one such
batch), and the runs drifted apart from there. Tensors below torch's grain size (32768 elements)
are not split, which is why small configs repeat.

Fixes, either of which suffices on the CPU:

- ``torch.use_deterministic_algorithms(True)`` (here) switches that backward to a sorted,
  sequential accumulation (documented for ``__getitem__`` / ``index_put_(accumulate=True)`` /
  ``put_`` on the CPU). No CPU op of the image, weather or graph models raises in this mode; on
  a GPU, ops without a deterministic kernel (e.g. bicubic up-sampling's backward) only warn
  (``warn_only=True``, the default here), since a default-on switch must not stop a run.
- ``gather_rows(x, index)`` (used by the graph refiner) gathers with ``index_select``, whose
  backward is ``index_add_``: serial, so the same in either mode, and faster than ``x[index]``.

``index_sum(values, index, size)`` is a segment sum that is bit-identical for every thread count
*and* every order of its rows (a fixed, canonical order: rows sorted by segment, then by an exact
integer hash of their bits; identical rows may swap harmlessly), equal to ``index_add_`` up to
rounding. The graph refiner uses it, in deterministic mode only, for its own segment sums and
for the backward of ``gather_rows``; outside deterministic mode they are plain ``index_add_``.

Measured cost, the default graph config (``domain=graph``), 2 torch threads on 2 CPU cores, median
of 12 steps, off / on / off / on: 0.222 / 0.211 / 0.227 / 0.225 s per training step, and 0.297 /
0.292 s to sample 20 graphs: no cost measurable above the noise of this machine.
``benchmarks/determinism_cost.py`` measures it for other sizes.
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


class _GatherRows(torch.autograd.Function):
    """``x.index_select(0, index)`` whose backward is ``index_sum`` (canonical order)."""

    @staticmethod
    def forward(ctx, x, index):
        ctx.save_for_backward(index)
        ctx.rows = len(x)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return index_sum(grad, index, ctx.rows), None


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` for a 1-D index tensor, without the backward of advanced indexing (atomic
    adds on the CPU: nondeterministic). In deterministic mode the gradients of repeated rows
    are summed by ``index_sum``; otherwise by ``index_select``'s backward (``index_add_``)."""
    if is_deterministic() and x.requires_grad and torch.is_grad_enabled():
        return _GatherRows.apply(x, index)
    return x.index_select(0, index)
