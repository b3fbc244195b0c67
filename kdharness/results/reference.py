"""Published top-1 figures (mdistiller README, CRD paper) to print beside our own runs.

The CSV ships inside the package (`kdharness/reference/published_leaderboards.csv`, listed
in setup.py's package_data), so an installed harness reads it without a source checkout
or the project's shared data directory.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources

__all__ = ["REFERENCE_COLUMNS", "ReferenceDataError", "ReferenceFigure", "load_reference", "reference_by_pair"]

REFERENCE_COLUMNS = ("dataset", "teacher", "student", "method", "top1", "source")
_PACKAGE_FILE = ("kdharness", "reference/published_leaderboards.csv")


class ReferenceDataError(ValueError):
    """The published-figures CSV is missing or malformed; the message names file and row."""


@dataclass(frozen=True)
class ReferenceFigure:
    dataset: str
    teacher: str
    student: str
    method: str
    top1: float
    source: str

    @property
    def pair(self) -> tuple[str, str, str]:
        return (self.dataset, self.teacher, self.student)


def _parse(text: str, origin: str) -> list[ReferenceFigure]:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(cell.strip() for cell in rows[0]) != REFERENCE_COLUMNS:
        found = rows[0] if rows else "nothing"
        raise ReferenceDataError(f"{origin}: header is {found}; expected {','.join(REFERENCE_COLUMNS)}")
    figures = []
    last = len(REFERENCE_COLUMNS) - 1
    for line, cells in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue
        # `source` is the last column and is free text: a source written with unquoted
        # commas ("mdistiller README (DKD, CVPR 2022)") spills into extra fields; rejoin them.
        cells = cells[:last] + [",".join(cells[last:])] if len(cells) > last else cells
        row = dict(zip(REFERENCE_COLUMNS, (cell.strip() for cell in cells)))
        if len(cells) < len(REFERENCE_COLUMNS) or any(not row[key] for key in REFERENCE_COLUMNS):
            raise ReferenceDataError(
                f"{origin}, line {line}: every one of {', '.join(REFERENCE_COLUMNS)} must be filled; got {cells}"
            )
        try:
            top1 = float(row["top1"])
        except ValueError:
            raise ReferenceDataError(f"{origin}, line {line}: top1 = {row['top1']!r}; expected a number (percent)") from None
        figures.append(ReferenceFigure(row["dataset"], row["teacher"], row["student"], row["method"], top1, row["source"]))
    return figures


def load_reference(path: str | None = None) -> list[ReferenceFigure]:
    """Published figures from `path`, or from the copy packaged with kdharness."""
    if path is not None:
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                return _parse(handle.read(), path)
        except FileNotFoundError:
            raise ReferenceDataError(f"reference file {path!r} does not exist") from None
    package, name = _PACKAGE_FILE
    resource = resources.files(package).joinpath(name)
    try:
        text = resource.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReferenceDataError(
            f"packaged reference file {package}/{name} is missing; reinstall kdharness (it is package data)"
        ) from None
    return _parse(text, f"{package}/{name}")


def reference_by_pair(figures: list[ReferenceFigure]) -> dict[tuple[str, str, str], dict[str, ReferenceFigure]]:
    """(dataset, teacher, student) -> method -> figure, for lookups while rendering."""
    table: dict[tuple[str, str, str], dict[str, ReferenceFigure]] = {}
    for figure in figures:
        table.setdefault(figure.pair, {})[figure.method] = figure
    return table
