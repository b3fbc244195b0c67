"""What a leaderboard cell cost and what its runs logged: wall time, last-epoch diagnostics, fit.

The leaderboard says how well each method did; these tables say what it took (wall time per
run, as each ``summary.json`` records it) and, for methods that log diagnostics (ICKD's
``picd_to_base``, ``pos_sim``, ... see docs/architecture.md), what the loss was doing at the
end; the fit table says how well the students fit their own training images at the last
evaluation against the test set (runs with ``LOG.EVAL_TRAIN_SET``): a regulariser narrows
that gap. They take the leaderboard's own grouping (`aggregate`), so a row here is a cell there,
and a teacher run appears once, as ``teacher``.
"""
from __future__ import annotations

from statistics import median
from typing import Iterable, Sequence

from kdharness.results.stats import mean, sample_std
from kdharness.results.summaries import VANILLA, Leaderboard, RunSummary

__all__ = ["render_cost_markdown", "render_diagnostics_markdown", "render_fit_markdown"]

_HEAD = ["Dataset", "Teacher", "Student", "Method", "n"]


def _groups(board: Leaderboard, by_path: dict[str, RunSummary]) -> list[tuple[tuple[str, ...], list[RunSummary]]]:
    """((dataset, teacher, student, column), runs) in leaderboard order; each run once."""
    seen: set[str] = set()
    groups = []

    def add(key: tuple[str, ...], paths: Iterable[str]) -> None:
        runs = [by_path[path] for path in paths if path not in seen]
        seen.update(run.path for run in runs)
        if runs:
            groups.append((key, runs))

    for row in board.rows:
        if row.teacher_cell is not None:
            add((row.dataset, "–", row.teacher, "teacher"), (path for _, _, path in row.teacher_cell.runs))
        for column in [VANILLA, *board.columns_for([row])]:
            cell = row.cells.get(column)
            if cell is not None:
                add((row.dataset, row.teacher, row.student, column), (path for _, _, path in cell.runs))
    return groups


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":--"] * 4 + ["--:"] * (len(header) - 4)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render_cost_markdown(board: Leaderboard, summaries: Sequence[RunSummary]) -> str:
    """Per cell of `board` (aggregated from `summaries`): runs, median and total wall time; then
    the total over all runs."""
    by_path = {summary.path: summary for summary in summaries}
    rows, total, counted, unknown = [], 0.0, 0, 0
    for key, runs in _groups(board, by_path):
        times = [run.wall_time_s for run in runs if run.wall_time_s is not None]
        unknown += len(runs) - len(times)
        if not times:
            continue
        total += sum(times)
        counted += len(times)
        rows.append([*key, str(len(times)), f"{median(times) / 60:.1f}", f"{sum(times) / 60:.0f}"])
    if not rows:
        return "_No complete run records its wall time._\n"
    rows.append(["all", "", "", "", str(counted), "", f"{total / 60:.0f}"])
    lines = ["## wall time per run (summary.json `wall_time_s`)", ""]
    lines += _table([*_HEAD, "median (min)", "total (min)"], rows)
    lines += ["", f"Total: {counted} runs, {total / 3600:.1f} h of wall time, one process each."]
    if unknown:
        lines.append(f"{unknown} run(s) record no wall time and are left out.")
    return "\n".join(lines) + "\n"


def render_diagnostics_markdown(board: Leaderboard, summaries: Sequence[RunSummary]) -> str:
    """Per cell of `board` whose runs log diagnostics: the mean over runs of each last-epoch value."""
    by_path = {summary.path: summary for summary in summaries}
    groups = [(key, [run for run in runs if run.diagnostics]) for key, runs in _groups(board, by_path)]
    groups = [(key, runs) for key, runs in groups if runs]
    if not groups:
        return "_No complete run logs diagnostics._\n"
    names = list(dict.fromkeys(name for _, runs in groups for run in runs for name in run.diagnostics))
    rows = []
    for key, runs in groups:
        cells = []
        for name in names:
            values = [run.diagnostics[name] for run in runs if name in run.diagnostics]
            cells.append(f"{mean(values):.3f}" if values else "–")
        rows.append([*key, str(len(runs)), *cells])
    lines = ["## last-epoch diagnostics, mean over runs (summary.json `history[-1].diagnostics`)", ""]
    return "\n".join(lines + _table([*_HEAD, *names], rows)) + "\n"


def _mean_std(values: Sequence[float]) -> str:
    std = sample_std(values)
    return f"{mean(values):.2f}" + ("" if std is None else f" ± {std:.2f}")


def render_fit_markdown(board: Leaderboard, summaries: Sequence[RunSummary]) -> str:
    """Per cell whose runs scored their own training images (``train_eval_acc``): at each run's
    last evaluation, that score and the test score (mean ± std over runs), and the gap between
    their means."""
    by_path = {summary.path: summary for summary in summaries}
    rows = []
    for key, runs in _groups(board, by_path):
        last = [run.curves[-1] for run in runs if run.curves and "train_eval_acc" in run.curves[-1]]
        if not last:
            continue
        train = [point["train_eval_acc"] for point in last]
        test = [point["test_acc"] for point in last]
        rows.append([*key, str(len(last)), _mean_std(train), _mean_std(test), f"{mean(train) - mean(test):.2f}"])
    if not rows:
        return "_No complete run scored its training images (LOG.EVAL_TRAIN_SET)._\n"
    metrics = {run.metric for run in summaries}
    metric = metrics.pop() if len(metrics) == 1 else "score"
    lines = [f"## fit at the last evaluation: {metric} on the run's own training images (no augmentation) and on the test set", ""]
    lines += _table([*_HEAD, "training images", "test", "gap"], rows)
    return "\n".join(lines) + "\n"
