"""PNGs of the results: the leaderboard (accuracy per method per pair, error bars = seed std),
and the paper's sensitivity figures from one-factor sweeps (`kdharness.results.sensitivity`).

Points with error bars rather than bars from zero: the differences that matter between
distillation methods are a point or two on a 70 % scale, which bars would flatten. Uses a
bare `Figure` with the Agg canvas, so it never touches pyplot's global state or needs a
display, and matplotlib is imported only when a plot is asked for (it is an extra).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from kdharness.results.reference import ReferenceFigure, reference_by_pair
from kdharness.results.sensitivity import ICKD_ALL, Param, Sweep, value_order, format_value
from kdharness.results.summaries import VANILLA, Cell, Leaderboard, RunSummary

__all__ = ["plot_curves", "plot_ickd_all", "plot_leaderboard", "plot_sensitivity"]

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


def _matplotlib():
    """(colormaps, FigureCanvasAgg, Figure), or an ImportError that says how to install them."""
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'ickd-pytorch[plot]'") from None
    return colormaps, FigureCanvasAgg, Figure


def plot_leaderboard(board: Leaderboard, path: str, reference: Sequence[ReferenceFigure] = (), dpi: int = 120) -> None:
    """Write one panel per dataset to `path` (PNG); published figures as hollow markers."""
    colormaps, FigureCanvasAgg, Figure = _matplotlib()
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
                (x + offset, table[row.pair][name].value)
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
        ax.set_ylabel(f"{'best' if board.metric == 'best' else 'last'} {board.metric_name([dataset])} (%)")
        ax.set_title(f"{dataset} (mean ± std over seeds)")
        ax.grid(axis="y", alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda i: labels[i] == "published")  # "published" last
        ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        low, high = ax.get_ylim()
        if math.isfinite(low) and math.isfinite(high):
            ax.set_ylim(low - 0.5, high + 0.5)
    figure.savefig(path, format="png", dpi=dpi)


def plot_curves(board: Leaderboard, summaries: Sequence[RunSummary], path: str, dpi: int = 120) -> None:
    """Write learning curves to `path` (PNG): one panel per teacher/student pair, one colour per
    leaderboard column, one thin line per seed; test top-1 solid, top-1 on the training images
    (``LOG.EVAL_TRAIN_SET``) dashed. The gap between the two is what a regulariser acts on, so a
    converged-regime study shows both."""
    colormaps, FigureCanvasAgg, Figure = _matplotlib()
    by_path = {summary.path: summary for summary in summaries}
    rows = [row for row in board.rows if any(cell.n for cell in row.cells.values())]
    if not rows or not any(by_path[p].curves for row in rows for cell in row.cells.values() for _, _, p in cell.runs if p in by_path):
        raise ValueError(f"nothing to plot into {path!r}: no run records per-epoch test accuracy")
    columns = [VANILLA, *board.columns]
    palette = colormaps["tab10" if len(columns) <= 10 else "tab20"]
    figure = Figure(figsize=(7.5, 3.8 * len(rows)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, row in zip(axes, rows):
        for name in [column for column in columns if column in row.cells]:
            colour = palette(columns.index(name) % palette.N)
            for index, (_, _, run_path) in enumerate(row.cells[name].runs):
                curve = by_path[run_path].curves if run_path in by_path else ()
                epochs = [point["epoch"] for point in curve]
                ax.plot(epochs, [point["test_acc"] for point in curve], color=colour, lw=1,
                        label=f"{name} test" if index == 0 else None)
                train = [(point["epoch"], point["train_eval_acc"]) for point in curve if "train_eval_acc" in point]
                if train:
                    ax.plot(*zip(*train), color=colour, lw=1, ls="--", label=f"{name} train images" if index == 0 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{board.metric_name([row.dataset])} (%)")
        ax.set_title(f"{row.dataset}: {row.teacher} → {row.student}\n(one line per seed)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    figure.savefig(path, format="png", dpi=dpi)


def _series_colours(sweeps: Sequence[Sweep]) -> dict[str, Any]:
    """One colour per (pair, method) series, the same in every panel."""
    from matplotlib import colormaps

    labels = list(dict.fromkeys(sweep.label for sweep in sweeps))
    palette = colormaps["tab10"]
    return {label: palette(i % palette.N) for i, label in enumerate(labels)}


def plot_sensitivity(sweeps: Sequence[Sweep], params: Sequence[Param], path: str, title: str = "", dpi: int = 120) -> Any:
    """One panel per hyper-parameter, laid out like the paper's Figs. 4 and 5.

    Top-1 mean ± std over seeds against the swept values (evenly spaced and labelled, so
    K = 1..64 and tau = 0.01..1 read alike; the config's own value is ringed); the baseline
    (ICKD.BASE's method) is a dashed line in the series' colour with its ± std as a band.
    A panel without runs says so instead of disappearing. Returns the matplotlib Figure.
    """
    _, FigureCanvasAgg, Figure = _matplotlib()
    if not any(sweep.key in {p.key for p in params} for sweep in sweeps):
        raise ValueError(f"nothing to plot into {path!r}: no runs vary {', '.join(p.key for p in params)}")
    colours = _series_colours(sweeps)
    figure = Figure(figsize=(3.6 * len(params) + 1.0, 3.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(params), squeeze=False)[0]
    for ax, param in zip(axes, params):
        mine = [sweep for sweep in sweeps if sweep.key == param.key]
        ax.set_xlabel(param.symbol)
        ax.grid(axis="y", alpha=0.3)
        if not mine:
            ax.text(0.5, 0.5, f"no runs vary\n{param.key}", ha="center", va="center", transform=ax.transAxes, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.set_ylabel("top-1 (%)")
        values = sorted({value for sweep in mine for value, _ in sweep.points}, key=lambda v: value_order((v, None)))
        position = {value: i for i, value in enumerate(values)}
        for sweep in mine:
            colour = colours[sweep.label]
            xs = [position[value] for value, _ in sweep.points]
            ys = [cell.mean for _, cell in sweep.points]
            errors = [cell.std or 0.0 for _, cell in sweep.points]
            ax.errorbar(xs, ys, yerr=errors, fmt="-o", capsize=3, color=colour, label=sweep.label)
            if sweep.centre in position:
                centre = dict(sweep.points).get(sweep.centre)
                if centre is not None:
                    ax.scatter([position[sweep.centre]], [centre.mean], s=120, facecolors="none", edgecolors=[colour], zorder=3)
            if sweep.baseline is not None:
                base = sweep.baseline
                ax.axhline(base.mean, color=colour, linestyle="--", linewidth=1, label=f"{sweep.baseline_name} ({sweep.student})")
                if base.std:
                    ax.axhspan(base.mean - base.std, base.mean + base.std, color=colour, alpha=0.1, linewidth=0)
        ax.set_xticks(range(len(values)), [format_value(v) for v in values])
        ax.set_xlim(-0.5, len(values) - 0.5)
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=8)
    figure.suptitle(title or "sensitivity (mean ± std over seeds; ring: the config's value; dashed: baseline)", fontsize=10)
    figure.savefig(path, format="png", dpi=dpi)
    return figure


def plot_ickd_all(sweeps: Sequence[Sweep], path: str, dpi: int = 120) -> Any:
    """The paper's Fig. 2 on our data: per pair, the baseline, IC-KD (Top-K) and IC-KD-all as
    bars of mean top-1 with ± std error bars; the y axis starts near the lowest bar, so
    differences of a point stay visible. Returns the matplotlib Figure."""
    _, FigureCanvasAgg, Figure = _matplotlib()
    mine = [sweep for sweep in sweeps if sweep.key == ICKD_ALL.key]
    if not mine:
        raise ValueError(f"nothing to plot into {path!r}: no runs override {ICKD_ALL.key}")
    figure = Figure(figsize=(max(5.0, 1.9 * len(mine) + 2.0), 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    kinds = ("baseline", "IC-KD", "IC-KD-all")
    colours = {"baseline": "0.6", "IC-KD": "tab:blue", "IC-KD-all": "tab:orange"}
    width = 0.26
    lows: list[float] = []
    for x, sweep in enumerate(mine):
        cells = dict(sweep.points)
        bars = {"baseline": sweep.baseline, "IC-KD": cells.get(False), "IC-KD-all": cells.get(True)}
        for i, kind in enumerate(kinds):
            cell = bars[kind]
            if cell is None or not cell.n:
                continue
            label = kind if x == 0 else None
            if kind == "baseline":
                label = "baseline (ICKD.BASE)" if x == 0 else None
            ax.bar(x + (i - 1) * width, cell.mean, width, yerr=cell.std or 0.0, capsize=3, color=colours[kind], label=label)
            ax.text(x + (i - 1) * width, cell.mean + (cell.std or 0.0), f"{cell.mean:.1f}", ha="center", va="bottom", fontsize=7)
            lows.append(cell.mean - (cell.std or 0.0))
    ax.set_xticks(range(len(mine)), [f"{s.teacher}\n→ {s.student}\n{s.method}" for s in mine], fontsize=8)
    if lows:
        _, high = ax.get_ylim()
        ax.set_ylim(max(0.0, min(lows) - 3.0), high + 1.0)
    ax.set_ylabel("top-1 (%)")
    ax.set_title("IC-KD (Top-K positives) vs IC-KD-all (all same-class)\nmean ± std over seeds", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    figure.savefig(path, format="png", dpi=dpi)
    return figure
