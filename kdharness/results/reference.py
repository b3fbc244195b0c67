"""Published figures to print beside our own runs: top-1 for classification, mIoU for segmentation.

Two CSVs ship inside the package (`kdharness/reference/`, listed in setup.py's
package_data), so an installed harness reads them without a source checkout or the
project's shared data directory; every row names its source:

- ``published_leaderboards.csv``: top-1 (%) of KD, DKD, CRD and mdistiller's feature
  distillers on CIFAR-100 and ImageNet (mdistiller README, CRD paper Tables 1-2);
- ``published_segmentation.csv``: validation mIoU (%) from CIRKD's README (Yang et al., CVPR
  2022), DeepLabV3-ResNet101 teachers and DeepLabV3-ResNet18 / -MobileNetV2 / PSPNet-ResNet18
  students on Cityscapes, Pascal VOC (augmented: ``voc_aug``) and CamVid (vanilla, SKD, IFVD,
  CWD, DSD, CIRKD). Its teacher rows (``student`` "-", ``method`` "teacher") are the
  teacher's own mIoU, shown beside every pair with that teacher.

Single published runs; the sources report no std.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources

__all__ = [
    "PUBLISHED_TEACHER",
    "REFERENCE_COLUMNS",
    "ReferenceDataError",
    "ReferenceFigure",
    "SEGMENTATION_COLUMNS",
    "load_reference",
    "reference_by_pair",
]

REFERENCE_COLUMNS = ("dataset", "teacher", "student", "method", "top1", "source")
SEGMENTATION_COLUMNS = ("dataset", "split", "teacher", "student", "method", "miou", "source")
# The value column of each layout and the metric it holds.
_LAYOUTS = {REFERENCE_COLUMNS: ("top1", "top-1"), SEGMENTATION_COLUMNS: ("miou", "mIoU")}
_PACKAGE = "kdharness"
_PACKAGE_FILES = ("reference/published_leaderboards.csv", "reference/published_segmentation.csv")
# A row of the teacher alone: ``student`` "-", ``method`` "teacher".
PUBLISHED_TEACHER = "teacher"
NO_STUDENT = "-"


class ReferenceDataError(ValueError):
    """The published-figures CSV is missing or malformed; the message names file and row."""


@dataclass(frozen=True)
class ReferenceFigure:
    """One published number: ``value`` (percent) of ``metric`` ("top-1" or "mIoU")."""

    dataset: str
    teacher: str
    student: str
    method: str
    value: float
    source: str
    metric: str = "top-1"

    @property
    def top1(self) -> float:
        """The value under its older name (all figures were top-1 before segmentation)."""
        return self.value

    @property
    def pair(self) -> tuple[str, str, str]:
        return (self.dataset, self.teacher, self.student)


def _parse(text: str, origin: str) -> list[ReferenceFigure]:
    rows = list(csv.reader(io.StringIO(text)))
    columns = tuple(cell.strip() for cell in rows[0]) if rows else ()
    if columns not in _LAYOUTS:
        found = rows[0] if rows else "nothing"
        expected = " or ".join(",".join(layout) for layout in _LAYOUTS)
        raise ReferenceDataError(f"{origin}: header is {found}; expected {expected}")
    value_key, metric = _LAYOUTS[columns]
    figures = []
    last = len(columns) - 1
    for line, cells in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue
        # `source` is the last column and is free text: a source written with unquoted
        # commas ("mdistiller README (DKD, CVPR 2022)") spills into extra fields; rejoin them.
        cells = cells[:last] + [",".join(cells[last:])] if len(cells) > last else cells
        row = dict(zip(columns, (cell.strip() for cell in cells)))
        if len(cells) < len(columns) or any(not row[key] for key in columns):
            raise ReferenceDataError(
                f"{origin}, line {line}: every one of {', '.join(columns)} must be filled; got {cells}"
            )
        try:
            value = float(row[value_key])
        except ValueError:
            raise ReferenceDataError(
                f"{origin}, line {line}: {value_key} = {row[value_key]!r}; expected a number (percent)"
            ) from None
        figures.append(
            ReferenceFigure(row["dataset"], row["teacher"], row["student"], row["method"], value, row["source"], metric)
        )
    return figures


def load_reference(path: str | None = None) -> list[ReferenceFigure]:
    """Published figures from `path` (either layout), or from both files packaged with kdharness."""
    if path is not None:
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                return _parse(handle.read(), path)
        except FileNotFoundError:
            raise ReferenceDataError(f"reference file {path!r} does not exist") from None
    figures: list[ReferenceFigure] = []
    for name in _PACKAGE_FILES:
        resource = resources.files(_PACKAGE).joinpath(name)
        try:
            text = resource.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ReferenceDataError(
                f"packaged reference file {_PACKAGE}/{name} is missing; reinstall kdharness (it is package data)"
            ) from None
        figures += _parse(text, f"{_PACKAGE}/{name}")
    return figures


def reference_by_pair(figures: list[ReferenceFigure]) -> dict[tuple[str, str, str], dict[str, ReferenceFigure]]:
    """(dataset, teacher, student) -> method -> figure, for lookups while rendering.

    A published teacher row (student "-", method "teacher") is also filed under every pair of
    that teacher that has figures, as method "teacher"."""
    table: dict[tuple[str, str, str], dict[str, ReferenceFigure]] = {}
    for figure in figures:
        table.setdefault(figure.pair, {})[figure.method] = figure
    for figure in figures:
        if figure.method == PUBLISHED_TEACHER and figure.student == NO_STUDENT:
            for pair, methods in table.items():
                if pair[:2] == figure.pair[:2] and pair[2] != NO_STUDENT:
                    methods.setdefault(PUBLISHED_TEACHER, figure)
    return table

