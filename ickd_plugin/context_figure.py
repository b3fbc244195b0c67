"""What ICKD distils from, as pictures: query images beside their retrieved in-context samples.

Two figures, so that a user can judge the memory bank before trusting the method:

* a grid, one row per query: the query image, its Top-K same-class bank samples (with the
  cosine similarity ``s`` and the PICD weight ``w = softmax(s / tau_1)``) and its Top-N
  different-class samples (with ``s``);
* a class-by-class heatmap over many queries: row = the query's class, column = the class
  of each retrieved negative, i.e. which classes the teacher finds hardest to tell apart.

The retrieval is the training step's own (`ickd_plugin.retrieval.retrieve` on the bank,
the query's own row excluded); only the query differs: it is the sample's bank feature (the
image without augmentation) rather than an augmented view. matplotlib is imported only to
render. `tools/show_context.py` builds the bank from a config and calls these.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ickd_plugin.losses import context_weights
from ickd_plugin.memory_bank import MemoryBank
from ickd_plugin.retrieval import retrieve


@dataclass(frozen=True)
class QueryContext:
    """One query's in-context samples, as bank rows, best first."""

    row: int
    label: int
    pos_rows: list[int]
    pos_sim: list[float]
    pos_weight: list[float]  # PICD weights over *all* the query's positives (IC-KD-all: every same-class row)
    neg_rows: list[int]
    neg_sim: list[float]
    neg_labels: list[int]


@torch.no_grad()
def query_contexts(
    bank: MemoryBank, rows: torch.Tensor, k: int, n: int, tau: float, all_same_class: bool = False, show: int | None = None
) -> list[QueryContext]:
    """Retrieve each bank row's positives and negatives as training does, the row itself as query.

    `show` keeps the first `show` positives and negatives of each (all of them when None);
    with IC-KD-all the positives are every same-class row, shown by decreasing similarity.
    """
    rows = rows.to(bank.features.device).long()
    found = retrieve(
        bank.features[rows].float(), bank.labels[rows], _excluded(bank, rows), bank.features, bank.inv_norms,
        bank.class_rows, k, n, all_same_class=all_same_class, center=bank.similarity_center, ties=bank.ties,
        row_groups=_row_groups(bank),
    )
    weights = context_weights(found.pos_sim, tau)
    pos_sim, pos_rows = found.pos_sim, found.pos_rows
    if found.pos_mask is not None:  # IC-KD-all: order the padded columns by similarity (-inf last)
        order = pos_sim.argsort(dim=1, descending=True, stable=True)
        pos_sim, pos_rows, weights = pos_sim.gather(1, order), pos_rows.gather(1, order), weights.gather(1, order)
        counts = found.pos_mask.sum(dim=1).tolist()
    else:
        counts = [pos_rows.shape[1]] * rows.shape[0]
    neg_labels = bank.labels[found.neg_rows]
    out = []
    for i, row in enumerate(rows.tolist()):
        kept = counts[i] if show is None else min(show, counts[i])
        negs = found.neg_rows.shape[1] if show is None else min(show, found.neg_rows.shape[1])
        out.append(QueryContext(
            row=row,
            label=int(bank.labels[row]),
            pos_rows=pos_rows[i, :kept].tolist(),
            pos_sim=pos_sim[i, :kept].tolist(),
            pos_weight=weights[i, :kept].tolist(),
            neg_rows=found.neg_rows[i, :negs].tolist(),
            neg_sim=found.neg_sim[i, :negs].tolist(),
            neg_labels=neg_labels[i, :negs].tolist(),
        ))
    return out


@torch.no_grad()
def hard_negative_counts(
    bank: MemoryBank, rows: torch.Tensor, n: int, num_classes: int, batch_size: int = 256
) -> torch.Tensor:
    """``[C, C]`` int64: entry (a, b) counts the retrieved Top-N negatives of class b over the
    queries (bank rows `rows`) of class a; each row of the matrix sums to N x (its queries)."""
    counts = torch.zeros(num_classes, num_classes, dtype=torch.long)
    rows = rows.to(bank.features.device).long()
    for start in range(0, rows.shape[0], batch_size):
        chunk = rows[start : start + batch_size]
        labels = bank.labels[chunk]
        found = retrieve(
            bank.features[chunk].float(), labels, _excluded(bank, chunk), bank.features, bank.inv_norms,
            bank.class_rows, 1, n, center=bank.similarity_center, ties=bank.ties, row_groups=_row_groups(bank),
        )
        pairs = labels[:, None] * num_classes + bank.labels[found.neg_rows]
        counts += torch.bincount(pairs.flatten().cpu(), minlength=num_classes * num_classes).view(num_classes, num_classes)
    return counts


def _row_groups(bank: MemoryBank) -> torch.Tensor | None:
    """A dense bank's rows are excluded by image (`ickd_plugin.dense_bank`), a sample bank's by row."""
    image_ids = getattr(bank, "image_ids", None)
    return image_ids if image_ids is not None and image_ids.numel() else None


def _excluded(bank: MemoryBank, rows: torch.Tensor) -> torch.Tensor:
    """`retrieve`'s ``self_rows`` for bank rows used as queries: the rows themselves, or (a dense
    bank, with `_row_groups`) their images, whose pixels are then all excluded."""
    groups = _row_groups(bank)
    return rows if groups is None else groups[rows]


def mark_pixel(image: Any, pixel: int, grid: tuple[int, int], colour: tuple[int, int, int] = (255, 0, 0)) -> Any:
    """``image [H, W, 3]`` (uint8) with a square outline around the cell ``pixel`` of a ``grid``
    (h, w) laid over it: where a dense bank's pixel (decoder resolution) lies in its image."""
    import numpy as np

    out = np.array(image, copy=True)
    height, width = out.shape[:2]
    y, x = divmod(int(pixel), grid[1])
    top, left = y * height // grid[0], x * width // grid[1]
    bottom, right = max(top + 1, (y + 1) * height // grid[0]) - 1, max(left + 1, (x + 1) * width // grid[1]) - 1
    pad = max(1, (bottom - top) // 2)
    top, left, bottom, right = max(0, top - pad), max(0, left - pad), min(height - 1, bottom + pad), min(width - 1, right + pad)
    out[top, left : right + 1] = out[bottom, left : right + 1] = colour
    out[top : bottom + 1, left] = out[top : bottom + 1, right] = colour
    return out


def _imports() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("show_context needs matplotlib: pip install 'ickd-pytorch[plot]'") from None
    return FigureCanvasAgg, Figure


TILE_INCHES = 1.25
GAP_TILES = 0.3  # width of the blank column between positives and negatives, in tiles


def render_context_grid(
    contexts: Sequence[QueryContext],
    image_of: Callable[[int], np.ndarray],
    class_names: Sequence[str],
    path: str,
    title: str = "",
    dpi: int = 100,
) -> Any:
    """The query grid as a PNG: one row per query, ``1 + max positives + max negatives`` tiles
    of ``TILE_INCHES`` each, and a blank `GAP_TILES`-wide column between positives and
    negatives. Returns the Figure.

    image_of(row) gives a bank row's image as ``[H, W]`` or ``[H, W, 3]`` uint8.
    """
    FigureCanvasAgg, Figure = _imports()
    if not contexts:
        raise ValueError(f"nothing to draw into {path!r}: no queries")
    num_pos = max(len(c.pos_rows) for c in contexts)
    num_neg = max(len(c.neg_rows) for c in contexts)
    ratios = [1.0] * (1 + num_pos) + [GAP_TILES] + [1.0] * num_neg
    figure = Figure(figsize=(TILE_INCHES * sum(ratios), TILE_INCHES * 1.25 * len(contexts) + 0.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(contexts), len(ratios), squeeze=False, gridspec_kw={"width_ratios": ratios})
    for line, context in zip(axes, contexts):
        tiles = [(context.row, f"query\n{class_names[context.label]}", "black")]
        for j, row in enumerate(context.pos_rows):
            tiles.append((row, f"s={context.pos_sim[j]:.3f}\nw={context.pos_weight[j]:.2f}", "tab:green"))
        tiles += [(None, "", "black")] * (num_pos - len(context.pos_rows) + 1)
        for j, row in enumerate(context.neg_rows):
            tiles.append((row, f"s={context.neg_sim[j]:.3f}\n{class_names[context.neg_labels[j]]}", "tab:red"))
        tiles += [(None, "", "black")] * (num_neg - len(context.neg_rows))
        for ax, (row, text, colour) in zip(line, tiles):
            ax.set_xticks([])
            ax.set_yticks([])
            if row is None:
                ax.set_axis_off()
                continue
            image = image_of(row)
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_title(text, fontsize=7, color=colour)
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2)
    figure.suptitle(title or f"queries | Top-{num_pos} same-class (s, PICD weight w) | Top-{num_neg} other-class (s)", fontsize=9)
    figure.savefig(path, format="png", dpi=dpi)
    return figure


def render_negative_heatmap(counts: torch.Tensor, class_names: Sequence[str], path: str, title: str = "", dpi: int = 100) -> Any:
    """The class x class heatmap of `hard_negative_counts` as a PNG, each row as fractions of its
    queries' negatives, with the counts written in the cells (up to 20 classes). Returns the Figure."""
    FigureCanvasAgg, Figure = _imports()
    counts = counts.to(torch.float64)
    num_classes = counts.shape[0]
    fractions = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    side = max(4.0, 0.45 * num_classes + 2.0)
    figure = Figure(figsize=(side + 1.0, side), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    image = ax.imshow(fractions.numpy(), cmap="viridis", vmin=0.0, vmax=max(1e-9, float(fractions.max())))
    figure.colorbar(image, ax=ax, label="share of the row's retrieved negatives")
    names = list(class_names)[:num_classes]
    if num_classes <= 40:
        ax.set_xticks(range(num_classes), names, rotation=90, fontsize=7)
        ax.set_yticks(range(num_classes), names, fontsize=7)
    if num_classes <= 20:
        for a in range(num_classes):
            for b in range(num_classes):
                if counts[a, b]:
                    colour = "black" if fractions[a, b] > 0.6 * float(fractions.max()) else "white"  # readable on viridis
                    ax.text(b, a, f"{int(counts[a, b])}", ha="center", va="center", fontsize=6, color=colour)
    ax.set_xlabel("class of the retrieved negative")
    ax.set_ylabel("class of the query")
    ax.set_title(title or "which classes are retrieved as the hardest negatives", fontsize=9)
    figure.savefig(path, format="png", dpi=dpi)
    return figure
