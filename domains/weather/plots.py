"""Maps of one forecast: truth, ensemble mean, a few members and the ensemble spread."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.plots import pyplot


def forecast_maps(truth: np.ndarray, members: np.ndarray, latitude, longitude, title: str,
                  path: Path, shown_members: int = 3) -> Path:
    """``truth`` [lat, lon] and ``members`` [M, lat, lon] of one channel, lead and init time."""
    plt = pyplot()
    mean, spread = members.mean(0), members.std(0, ddof=1) if len(members) > 1 else 0 * members[0]
    panels = [("truth", truth), ("ensemble mean", mean)]
    panels += [(f"member {m}", members[m]) for m in range(min(shown_members, len(members)))]
    lo, hi = np.percentile(np.stack([p for _, p in panels]), [1, 99])
    extent = [float(longitude[0]), float(longitude[-1]), float(latitude[0]), float(latitude[-1])]
    fig, axes = plt.subplots(2, 3, figsize=(12, 5.2))
    for ax, (name, field) in zip(axes.flat, panels + [("spread (std)", spread)]):
        is_spread = name.startswith("spread")
        im = ax.imshow(field, origin="lower", extent=extent, aspect="auto",
                       cmap="magma" if is_spread else "RdBu_r",
                       vmin=None if is_spread else lo, vmax=None if is_spread else hi)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.8)
    for ax in list(axes.flat)[len(panels) + 1:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
