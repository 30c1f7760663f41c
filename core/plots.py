"""Helpers the domains' pictures share (``c2f_visualize``): headless matplotlib, class columns."""
from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: pictures are written without a display.
    (Imported on first use: the core itself does not need matplotlib.)"""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def class_columns(cond, most: int = 8) -> tuple[list[int], int]:
    """The classes present in ``cond`` (sorted), one column each, and how many samples every
    column shows: the fewest any class has, at most ``most``."""
    classes = sorted(set(cond.tolist()))
    return classes, min(most, min(int((cond == c).sum()) for c in classes))
