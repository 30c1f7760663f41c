"""Pictures of graphs: sample grids and the levels of a pyramid."""
from __future__ import annotations

import math

import networkx as nx

from core.plots import pyplot

plt = pyplot()


def _draw(ax, graph, title=None):
    g = graph.to_networkx() if hasattr(graph, "to_networkx") else graph
    pos = nx.kamada_kawai_layout(g) if 1 < g.number_of_nodes() <= 200 and nx.is_connected(g) \
        else nx.spring_layout(g, seed=0)
    nx.draw_networkx(g, pos, ax=ax, node_size=12, width=0.6, with_labels=False, node_color="#1f77b4")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)


def draw_graphs(graphs, path, title: str = ""):
    """Draw up to a few dozen graphs in a grid and save the PNG at ``path``."""
    if not graphs:
        raise ValueError("no graphs to draw")
    cols = min(6, len(graphs))
    rows = math.ceil(len(graphs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, g in zip(axes.flat, graphs):
        _draw(ax, g, f"n={g.num_nodes}, m={len(g.edges)}")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def draw_pyramid(pyramid, path, title: str = "graph pyramid, coarse to fine"):
    """Draw every level G_1 … G_K of a ``coarsen.GraphPyramid``."""
    from domains.graph.data import Graph

    levels = [Graph(lv.num_nodes, lv.edges) for lv in pyramid.levels]
    fig, axes = plt.subplots(1, len(levels), figsize=(2.2 * len(levels), 2.4), squeeze=False)
    for k, (ax, g) in enumerate(zip(axes[0], levels), start=1):
        _draw(ax, g, f"G_{k}: {g.num_nodes} nodes")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
