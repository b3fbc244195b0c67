"""A PNG of the leaderboard: accuracy per method per pair, error bars = seed std.

Points with error bars rather than bars from zero: the differences that matter between
distillation methods are a point or two on a 70 % scale, which bars would flatten. Uses a
bare `Figure` with the Agg canvas, so it never touches pyplot's global state or needs a
display, and matplotlib is imported only when a plot is asked for (it is an extra).
"""
from __future__ import annotations

import math
from typing import Sequence

from kdharness.results.reference import ReferenceFigure, reference_by_pair
from kdharness.results.summaries import VANILLA, Cell, Leaderboard

__all__ = ["plot_leaderboard"]

TEACHER = "teacher"


def _series(board: Leaderboard, rows) -> list[str]:
    names = []
    if any(row.teacher_cell is not None for row in rows):
        names.append(TEACHER)
    if any(VANILLA in row.cells for row in rows):
        names.append(VANILLA)
    return names + board.columns_for(rows)


def _cell(row, name: str) -> Cell | None:
    return row.teacher_cell if name == TEACHER else row.cells.get(name)


def plot_leaderboard(board: Leaderboard, path: str, reference: Sequence[ReferenceFigure] = (), dpi: int = 120) -> None:
    """Write one panel per dataset to `path` (PNG); published figures as hollow markers."""
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'ickd-pytorch[plot]'") from None
    if not board.rows:
        raise ValueError(f"nothing to plot into {path!r}: the leaderboard has no complete runs")
    table = reference_by_pair(list(reference))
    datasets = board.datasets
    widest = max(len(board.rows_for(d)) for d in datasets)
    figure = Figure(figsize=(max(6.0, 1.6 * widest + 2.5), 4.2 * len(datasets)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(datasets), 1, squeeze=False)[:, 0]
    # One colour per series across all panels, so a method looks the same on every dataset.
    everything = [TEACHER, VANILLA, *board.columns]
    palette = colormaps["tab10" if len(everything) <= 10 else "tab20"]
    for ax, dataset in zip(axes, datasets):
        rows = board.rows_for(dataset)
        series = _series(board, rows)
        width = 0.8 / max(1, len(series))
        drew_published = False
        for index, name in enumerate(series):
            colour = palette(everything.index(name) % palette.N)
            offset = (index - (len(series) - 1) / 2) * width
            xs, ys, errors = [], [], []
            for x, row in enumerate(rows):
                cell = _cell(row, name)
                if cell is not None and cell.n:
                    xs.append(x + offset)
                    ys.append(cell.mean)
                    errors.append(cell.std or 0.0)
            if xs:
                ax.errorbar(xs, ys, yerr=errors, fmt="o", capsize=3, color=colour, label=name)
            published = [
                (x + offset, table[row.pair][name].top1)
                for x, row in enumerate(rows)
                if name in table.get(row.pair, {})
            ]
            if published:
                px, py = zip(*published)
                ax.scatter(px, py, marker="D", facecolors="none", edgecolors=[colour], s=36, zorder=3)
                drew_published = True
        if drew_published:
            ax.scatter([], [], marker="D", facecolors="none", edgecolors="black", label="published")
        ax.set_xticks(range(len(rows)), [f"{row.teacher}\n→ {row.student}" for row in rows], fontsize=8)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_ylabel(f"{'best' if board.metric == 'best' else 'last'} top-1 (%)")
        ax.set_title(f"{dataset} (mean ± std over seeds)")
        ax.grid(axis="y", alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda i: labels[i] == "published")  # "published" last
        ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        low, high = ax.get_ylim()
        if math.isfinite(low) and math.isfinite(high):
            ax.set_ylim(low - 0.5, high + 0.5)
    figure.savefig(path, format="png", dpi=dpi)
