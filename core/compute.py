"""Compute accounting beside NFE: FLOPs of a call, measured with ``torch.utils.flop_counter``.

``FlopCounterMode`` knows the matmuls and convolutions of every backbone here, but on the CPU
``scaled_dot_product_attention`` dispatches to an op it has no formula for (it would count
attention as free), so the CPU op is given the textbook count: two matmuls of
[Lq, D] x [D, Lk] and [Lq, Lk] x [Lk, Dv] per batch and head.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

_CPU_ATTENTION = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    *batch, lq, d = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    n = 1
    for b in batch:
        n *= b
    return 2 * n * lq * lk * d + 2 * n * lq * lk * dv


# FlopCounterMode keys its formulas by op packet and hands them the shapes of the arguments
CUSTOM = {_CPU_ATTENTION: _attention_flops} if _CPU_ATTENTION is not None else {}


def count_flops(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` and return (its result, the floating-point operations it did)."""
    with FlopCounterMode(display=False, custom_mapping=CUSTOM) as mode:
        out = fn(*args, **kwargs)
    return out, int(mode.get_total_flops())
