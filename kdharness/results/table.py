"""Markdown and CSV renderings of a leaderboard and of paired comparisons.

Cells read ``mean ± std (n)``, so the number of seeds behind a figure is never hidden; a
single run shows ``± –`` because its sample std is undefined (not zero). Published figures
go in their own columns, each labelled with its source, and only for the datasets that
have them.
"""
from __future__ import annotations

import csv
import io
from typing import Sequence

from kdharness.results.reference import ReferenceFigure, reference_by_pair
from kdharness.results.stats import PairedComparison
from kdharness.results.summaries import VANILLA, Cell, Leaderboard, MethodComparison, PairRow, method_order

__all__ = [
    "format_cell",
    "metric_title",
    "render_comparison_csv",
    "render_comparison_markdown",
    "render_csv",
    "render_markdown",
    "summary_line",
]

MISSING_MD = "–"
_METRIC_WHEN = {"best": "best", "last": "last-epoch"}
PUBLISHED_TEACHER = "teacher"


def metric_title(metric: str, name: str = "top-1") -> str:
    """``best top-1``, ``last-epoch mIoU``: which value (``metric``) of which measure (``name``)."""
    return f"{_METRIC_WHEN.get(metric, metric)} {name}"


def _teacher_header(name: str) -> str:
    return "Teacher acc." if name == "top-1" else f"Teacher {name}"


def format_cell(cell: Cell | None, missing: str = "") -> str:
    """``71.00 ± 1.00 (3)``; ``71.00 ± – (1)`` for one run; `missing` for no run."""
    if cell is None or cell.n == 0:
        return missing
    std = cell.std
    return f"{cell.mean:.2f} ± {'–' if std is None else f'{std:.2f}'} ({cell.n})"


def _reference_columns(rows: Sequence[PairRow], figures: Sequence[ReferenceFigure]) -> list[tuple[str, str]]:
    """(method, source) of every published figure for the given rows, in leaderboard order; a
    published teacher (segmentation's teacher rows) and vanilla student first."""
    table = reference_by_pair(list(figures))
    found = {(f.method, f.source) for row in rows for f in table.get(row.pair, {}).values()}
    first = (PUBLISHED_TEACHER, VANILLA)
    return sorted(found, key=lambda ms: (first.index(ms[0]) if ms[0] in first else 2, method_order(ms[0]), ms[1]))


def _reference_header(method: str) -> str:
    return "Teacher" if method == PUBLISHED_TEACHER else _escape(method)


def _reference_value(row: PairRow, method: str, source: str, table: dict) -> str:
    figure = table.get(row.pair, {}).get(method)
    return f"{figure.value:.2f}" if figure is not None and figure.source == source else ""


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(board: Leaderboard, reference: Sequence[ReferenceFigure] = ()) -> str:
    """One table per dataset, numbered source notes under the tables that cite them."""
    if not board.rows:
        return "_No complete runs found._\n"
    table = reference_by_pair(list(reference))
    grouping = "method" if board.group_by == "method" else "run label (seed override removed)"
    lines: list[str] = []
    sources: dict[str, int] = {}
    for dataset in board.datasets:
        rows = board.rows_for(dataset)
        columns = board.columns_for(rows)
        ref_columns = _reference_columns(rows, reference)
        for _, source in ref_columns:
            sources.setdefault(source, len(sources) + 1)
        name = board.metric_name([dataset])
        header = ["Teacher", "Student", _teacher_header(name), "Vanilla"] + [_escape(c) for c in columns]
        header += [f"{_reference_header(method)} (published) [{sources[source]}]" for method, source in ref_columns]
        lines.append(f"## {dataset}: {metric_title(board.metric, name)} (%), mean ± std (n seeds), columns by {grouping}")
        lines.append("")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join([":--", ":--"] + ["--:"] * (len(header) - 2)) + "|")
        for row in rows:
            cells = [row.teacher, row.student, format_cell(row.teacher_cell, MISSING_MD)]
            cells.append(format_cell(row.cells.get(VANILLA), MISSING_MD))
            cells += [format_cell(row.cells.get(column), MISSING_MD) for column in columns]
            cells += [_reference_value(row, m, s, table) or MISSING_MD for m, s in ref_columns]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        cited = dict.fromkeys(source for _, source in ref_columns)
        if cited:
            lines += [f"[{sources[source]}] {source}  " for source in cited]
            lines.append("")
    return "\n".join(lines)


def render_csv(board: Leaderboard, reference: Sequence[ReferenceFigure] = ()) -> str:
    """One CSV for all datasets; reference columns exist only if some shown pair has figures.

    Classification alone keeps the ``teacher_acc`` column; a board with segmentation runs
    names it ``teacher_miou`` (segmentation alone), or adds a ``metric`` column (both)."""
    table = reference_by_pair(list(reference))
    columns = board.columns_for(board.rows)
    ref_columns = _reference_columns(board.rows, reference)
    name = board.metric_name()
    mixed = " / " in name
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    teacher_column = {"top-1": "teacher_acc", "mIoU": "teacher_miou"}.get(name, "teacher_value")
    writer.writerow(
        ["dataset"] + (["metric"] if mixed else []) + ["teacher", "student", teacher_column, VANILLA, *columns]
        + [f"{method} (published: {source})" for method, source in ref_columns]
    )
    for row in board.rows:
        writer.writerow(
            [row.dataset] + ([board.metric_name([row.dataset])] if mixed else [])
            + [row.teacher, row.student, format_cell(row.teacher_cell), format_cell(row.cells.get(VANILLA))]
            + [format_cell(row.cells.get(column)) for column in columns]
            + [_reference_value(row, m, s, table) for m, s in ref_columns]
        )
    return out.getvalue()


# -- comparisons ---------------------------------------------------------------------------
def _signed(value: float) -> str:
    return f"{value:+.2f}"


def _p(value: float | None) -> str:
    if value is None:
        return MISSING_MD
    return f"{value:.1e}" if 0 < value < 1e-4 else f"{value:.4f}"


def _verdict(result: PairedComparison | None, a: str, b: str) -> str:
    return "no result" if result is None else result.verdict(a, b)


def summary_line(comparisons: Sequence[MethodComparison], a: str, b: str) -> str:
    """How many pairs show a gain beyond noise, and the mean gain across pairs."""
    decided = [c.result for c in comparisons if c.result is not None]
    if not decided:
        return f"No pair has runs of both {a} and {b} with a common seed."
    better = sum(1 for r in decided if r.ci_low is not None and r.ci_low > 0)
    worse = sum(1 for r in decided if r.ci_high is not None and r.ci_high < 0)
    gain = sum(r.mean_diff for r in decided) / len(decided)
    return (
        f"Across {len(decided)} pair(s): {a} > {b} beyond seed noise on {better}, {a} < {b} on {worse}, "
        f"undecided on {len(decided) - better - worse}; mean difference {_signed(gain)} points."
    )


def render_comparison_markdown(
    comparisons: Sequence[MethodComparison], a: str, b: str, metric: str = "best", metric_name: str = "top-1"
) -> str:
    """``metric``: best or last; ``metric_name``: what the values measure (top-1, mIoU)."""
    confidence = next((c.result.confidence for c in comparisons if c.result is not None), 0.95)
    level = f"{confidence * 100:g}%"
    lines = [
        f"## {_escape(a)} vs {_escape(b)}: {metric_title(metric, metric_name)}, paired by seed",
        "",
        f"| Dataset | Teacher | Student | n | Mean diff | Std diff | {level} CI | MDD (80% power) | p (two-sided) | Verdict | Note |",
        "|:--|:--|:--|--:|--:|--:|--:|--:|--:|:--|:--|",
    ]
    for c in comparisons:
        r = c.result
        if r is None:
            numbers = [MISSING_MD] * 6
        else:
            ci = MISSING_MD if r.ci_low is None or r.ci_high is None else f"[{_signed(r.ci_low)}, {_signed(r.ci_high)}]"
            std = MISSING_MD if r.std_diff is None else f"{r.std_diff:.2f}"
            mdd = r.mdd()
            numbers = [str(r.n), _signed(r.mean_diff), std, ci, MISSING_MD if mdd is None else f"{mdd:.2f}", _p(r.p_value)]
        cells = [c.dataset, c.teacher, c.student, *numbers, _escape(_verdict(r, a, b)), _escape(c.note)]
        lines.append("| " + " | ".join(cells) + " |")
    if not comparisons:
        lines.append(f"| – | – | – | – | – | – | – | – | – | no pair has both {_escape(a)} and {_escape(b)} | |")
    lines += ["", summary_line(comparisons, a, b), ""]
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.10g}"


def render_comparison_csv(comparisons: Sequence[MethodComparison], a: str, b: str, header: bool = True) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(
            ["dataset", "teacher", "student", "a", "b", "n", "seeds", "mean_diff", "std_diff", "ci_low", "ci_high",
             "confidence", "t", "p_value", "mdd_80", "verdict", "note"]
        )
    for c in comparisons:
        r = c.result
        numbers = ["", "", "", "", "", "", ""] if r is None else [
            r.n, _number(r.mean_diff), _number(r.std_diff), _number(r.ci_low), _number(r.ci_high),
            _number(r.confidence), _number(r.t),
        ]
        p_value = "" if r is None else _number(r.p_value)
        mdd = "" if r is None else _number(r.mdd())
        writer.writerow(
            [c.dataset, c.teacher, c.student, a, b, numbers[0], " ".join(map(str, c.seeds)), *numbers[1:], p_value,
             mdd, _verdict(r, a, b), c.note]
        )
    return out.getvalue()
