"""Find the `summary.json` of finished runs and group them into a leaderboard.

`kdharness.engine.trainer.BaseTrainer.write_summary` writes one summary per run directory,
first with ``"complete": false`` after every epoch and finally with ``"complete": true``.
Only complete runs are results; the others are reported so that a half-finished sweep is
not mistaken for a finished one.

Grouping: rows are (dataset, teacher, student) pairs; columns are methods (the summary's
``method``, e.g. "KD", "ICKD+KD") or, with ``by="label"``, run names without the seed
override, to tell apart variants that share a method name. Vanilla runs fill two special
places: the "vanilla" cell of their own pair, and the teacher cell of every pair whose
teacher is the model they trained.
"""
from __future__ import annotations

import json
import math
import os
import re

import yaml
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Literal, Mapping, Sequence

from kdharness.config import flatten_config
from kdharness.results.settings import (
    column_labels,
    describe_differences,
    differences,
    method_of_column,
    partition_by_settings,
    settings_from_config,
    shared_settings,
)
from kdharness.results.stats import PairedComparison, mean, paired_comparison, sample_std

__all__ = [
    "VANILLA",
    "Cell",
    "Leaderboard",
    "MethodComparison",
    "PairRow",
    "RunSummary",
    "SummaryError",
    "aggregate",
    "compare",
    "find_summary_files",
    "ickd_baselines",
    "load_summaries",
    "method_order",
    "read_summary",
    "strip_seed",
]

SUMMARY_FILE = "summary.json"
VANILLA = "vanilla"
Metric = Literal["best", "last"]
GroupBy = Literal["method", "label"]
Pair = tuple[str, str, str]

_REQUIRED = {
    "complete": bool,
    "experiment": str,
    "dataset": str,
    "teacher": str,
    "student": str,
    "method": str,
    "seed": int,
}
# Per task (summary.json's "task", classification when absent): the keys of the run's best and
# last value, the metric they measure, and the history keys of its per-epoch curves.
TASK_FIELDS = {
    "classification": ("best_top1", "last_top1", "top-1", ("test_acc", "train_eval_acc")),
    "segmentation": ("best_miou", "last_miou", "mIoU", ("test_miou", "train_eval_miou")),
}
_SEED_OVERRIDE = re.compile(r",EXPERIMENT\.SEED:[^,]*")
# A run that `tools/train.py --start-over` moved aside (kdharness.engine.run_dir.set_aside):
# an earlier attempt, replaced by the run in the directory without the suffix; never a result.
_SET_ASIDE_DIR = re.compile(r"\.old-\d{8}-\d{6}(-\d+)?$")
# Published-table order: each baseline followed by ICKD added to it; then mdistiller's
# feature distillers (the CRD paper's table order), so their published columns sit together.
_BASE_ORDER = ("", "KD", "DKD", "CRD", "DML", "FITNET", "AT", "SP", "VID", "RKD", "PKT", "NST", "KDSVD",
               "PIXEL_KD", "SKD", "IFVD", "CWD", "DSD", "CIRKD")  # segmentation's, in CIRKD's table order


class SummaryError(ValueError):
    """A file that is not a readable run summary; the message names the file and what is wrong."""


def strip_seed(experiment: str) -> str:
    """The run name without its `EXPERIMENT.SEED:<s>` override: the label shared by all seeds."""
    return _SEED_OVERRIDE.sub("", experiment)


@dataclass(frozen=True)
class RunSummary:
    """The fields of one summary.json that the comparison tools use."""

    path: str
    complete: bool
    experiment: str
    dataset: str
    teacher: str
    student: str
    method: str
    seed: int
    best_top1: float  # the best value of the run's metric: top-1, or mIoU for segmentation (see `metric`)
    last_top1: float | None  # its last evaluated value
    epochs_done: int
    epochs: int | None
    skipped_steps: int = 0  # steps dropped for a non-finite loss (SOLVER.NAN_POLICY skip)
    wall_time_s: float | None = None  # the run's wall time, resumed parts summed
    diagnostics: Mapping[str, float] = field(default_factory=dict)  # the last epoch's means (ICKD's, ...)
    config: Mapping[str, Any] = field(default_factory=dict)  # the recorded config, flattened ("SOLVER.LR": 0.05)
    settings: Mapping[str, Any] = field(default_factory=dict)  # what it trained with (kdharness.results.settings)
    # per evaluated epoch: epoch, test_acc, train_eval_acc (if recorded): the run's metric (top-1 or mIoU)
    curves: Sequence[Mapping[str, float]] = ()
    metric: str = "top-1"  # what best_top1 / last_top1 measure: "top-1", or "mIoU" for segmentation runs

    @property
    def pair(self) -> Pair:
        return (self.dataset, self.teacher, self.student)

    @property
    def label(self) -> str:
        return strip_seed(self.experiment)

    def value(self, metric: Metric) -> float | None:
        """The run's best or last value of its metric (``self.metric``: top-1 or mIoU)."""
        return self.best_top1 if metric == "best" else self.last_top1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str) -> "RunSummary":
        task = data.get("task", "classification")
        if task not in TASK_FIELDS:
            raise SummaryError(f"{path}: task = {task!r}; expected one of {', '.join(TASK_FIELDS)}")
        best_key, last_key, metric, curve_keys = TASK_FIELDS[task]
        required = {**_REQUIRED, best_key: (int, float)}
        missing = [key for key in required if key not in data]
        if missing:
            raise SummaryError(
                f"{path}: missing keys {missing}; expected a summary.json written by kdharness.engine.trainer"
            )
        for key, kind in required.items():
            if not isinstance(data[key], kind) or (kind is int and isinstance(data[key], bool)):
                raise SummaryError(f"{path}: {key} = {data[key]!r}; expected {_kind_name(kind)}")
        last = data.get(last_key)
        if last is not None and not isinstance(last, (int, float)):
            raise SummaryError(f"{path}: {last_key} = {last!r}; expected a number or null")
        history = data.get("history") or []
        config = data.get("config")
        try:
            parsed = yaml.load(config, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if isinstance(config, str) else config
        except yaml.YAMLError:
            parsed = None
        return cls(
            path=path,
            complete=data["complete"],
            experiment=data["experiment"],
            dataset=data["dataset"],
            teacher=data["teacher"],
            student=data["student"],
            method=data["method"],
            seed=data["seed"],
            best_top1=float(data[best_key]),
            last_top1=None if last is None else float(last),
            epochs_done=len(history) if isinstance(history, list) else 0,
            epochs=data.get("epochs") if isinstance(data.get("epochs"), int) else None,
            skipped_steps=data.get("skipped_steps") if isinstance(data.get("skipped_steps"), int) else 0,
            wall_time_s=_number_or_none(data.get("wall_time_s")),
            diagnostics=_last_diagnostics(history),
            config=flatten_config(parsed) if isinstance(parsed, Mapping) else {},
            settings=settings_from_config(parsed),
            curves=_curves(history, curve_keys),
            metric=metric,
        )


def _number_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


CURVE_KEYS = ("epoch", "test_acc", "train_eval_acc")


def _curves(history: Any, keys: tuple[str, str] = ("test_acc", "train_eval_acc")) -> tuple[dict[str, float], ...]:
    """The evaluated epochs' scores, for learning-curve figures (`leaderboard.py --curves`),
    under CURVE_KEYS's names whatever the task: ``keys`` are the history's keys of the test and
    training-image scores (segmentation: ``test_miou``, ``train_eval_miou``)."""
    if not isinstance(history, list):
        return ()
    names = dict(zip(keys, CURVE_KEYS[1:]), epoch="epoch")
    points = []
    for entry in history:
        if isinstance(entry, dict) and _number_or_none(entry.get(keys[0])) is not None:
            points.append({names[key]: float(entry[key]) for key in names if _number_or_none(entry.get(key)) is not None})
    return tuple(points)


def _last_diagnostics(history: Any) -> dict[str, float]:
    """The last epoch's ``diagnostics`` means (docs/architecture.md), numbers only."""
    last = history[-1] if isinstance(history, list) and history and isinstance(history[-1], dict) else {}
    found = last.get("diagnostics")
    if not isinstance(found, dict):
        return {}
    return {str(name): float(value) for name, value in found.items() if _number_or_none(value) is not None}


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {bool: "true/false", str: "a string", int: "an integer", float: "a number"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


# -- finding and reading ------------------------------------------------------------------
def find_summary_files(paths: Iterable[str]) -> list[str]:
    """Every summary.json under the given run directories (or the files themselves), sorted.

    A path that does not exist is an error rather than an empty result: a typo in a
    directory name would otherwise print an empty leaderboard.
    """
    found: set[str] = set()
    for path in paths:
        if os.path.isfile(path):
            found.add(os.path.normpath(path))
        elif os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not _SET_ASIDE_DIR.search(d))
                if SUMMARY_FILE in files:
                    found.add(os.path.normpath(os.path.join(root, SUMMARY_FILE)))
        else:
            raise FileNotFoundError(f"{path!r} does not exist; expected a run directory or a summary.json")
    return sorted(found)


def read_summary(path: str) -> RunSummary:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SummaryError(f"{path}: unreadable ({error}); expected the JSON summary of a run") from None
    if not isinstance(data, dict):
        raise SummaryError(f"{path}: top level is {type(data).__name__}; expected a JSON object")
    return RunSummary.from_dict(data, path)


def load_summaries(
    paths: Iterable[str], include_skipped: bool = False, defaults: Mapping[str, Any] | None = None
) -> tuple[list[RunSummary], list[str]]:
    """Complete run summaries under `paths`, and one warning per file left out and why.

    A run that skipped steps for a non-finite loss trained on less than its config says
    (and may have diverged): it is left out unless `include_skipped`. `defaults` (settings of
    the current default config, `settings_from_config(CFG)`) fill the keys a run's recorded
    config lacks because they were added to the harness after it ran: it trained with their
    default. Without them such a run would match runs with any value of the key, and could be
    averaged with runs that set it otherwise.
    """
    summaries: list[RunSummary] = []
    warnings: list[str] = []
    for path in find_summary_files(paths):
        try:
            summary = read_summary(path)
        except SummaryError as error:
            warnings.append(f"skipped {error}")
            continue
        if not summary.complete:
            progress = f"{summary.epochs_done} of {summary.epochs}" if summary.epochs else f"{summary.epochs_done}"
            warnings.append(
                f"skipped {path}: incomplete run ({progress} epochs); finish it with tools/sweep.py or tools/train.py --resume"
            )
            continue
        if summary.skipped_steps and not include_skipped:
            warnings.append(
                f"skipped {path}: {summary.skipped_steps} training steps were skipped for a non-finite loss "
                "(SOLVER.NAN_POLICY skip); rank it anyway with --include-skipped"
            )
            continue
        if defaults and summary.settings:
            missing = {key: value for key, value in defaults.items() if key not in summary.settings}
            if missing:
                summary = replace(summary, settings={**missing, **summary.settings})
        summaries.append(summary)
    return summaries, warnings


# -- aggregation --------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """The runs of one method on one pair, trained with the same settings: (seed, value,
    summary path) triples, and those settings (kdharness.results.settings)."""

    runs: tuple[tuple[int, float, str], ...]
    settings: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def values(self) -> list[float]:
        return [value for _, value, _ in self.runs]

    @property
    def seeds(self) -> list[int]:
        return [seed for seed, _, _ in self.runs]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def mean(self) -> float:
        return mean(self.values)

    @property
    def std(self) -> float | None:
        """Sample std (ddof=1); None with a single run."""
        return sample_std(self.values)


@dataclass
class PairRow:
    dataset: str
    teacher: str
    student: str
    teacher_cell: Cell | None = None
    cells: dict[str, Cell] = field(default_factory=dict)

    @property
    def pair(self) -> Pair:
        return (self.dataset, self.teacher, self.student)


@dataclass
class Leaderboard:
    """Rows in (dataset, teacher, student) order; `columns` excludes the vanilla column."""

    rows: list[PairRow]
    columns: list[str]
    metric: Metric = "best"
    group_by: GroupBy = "method"
    warnings: list[str] = field(default_factory=list)
    metric_names: dict[str, str] = field(default_factory=dict)  # dataset -> "top-1" or "mIoU"

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(row.dataset for row in self.rows))

    def metric_name(self, datasets: Iterable[str] | None = None) -> str:
        """What the values of ``datasets`` (all of the board's by default) measure: "top-1",
        "mIoU", or "top-1 / mIoU" when they mix."""
        names = dict.fromkeys(self.metric_names.get(d, "top-1") for d in (self.datasets if datasets is None else datasets))
        return " / ".join(names) or "top-1"

    def rows_for(self, dataset: str) -> list[PairRow]:
        return [row for row in self.rows if row.dataset == dataset]

    def columns_for(self, rows: Sequence[PairRow]) -> list[str]:
        """The method columns that hold at least one run in `rows`, in leaderboard order."""
        present = {key for row in rows for key in row.cells}
        return [column for column in self.columns if column in present]


# Method names of ICKD runs (kdharness.engine.trainer.method_name): Top-K, then the paper's IC-KD-all.
ICKD_METHOD_PREFIXES = ("ICKD", "IC-KD-all")


def ickd_kind(name: str) -> int:
    """0 for a method without ICKD, 1 for ICKD (Top-K positives), 2 for IC-KD-all."""
    return next((rank for rank, prefix in enumerate(ICKD_METHOD_PREFIXES, 1) if name.startswith(prefix)), 0)


def ickd_base(name: str) -> str | None:
    """The base an ICKD method adds to: "ICKD+KD" -> "KD", "IC-KD-all(online)+KD" -> "KD", "ICKD"
    (base NONE) -> ""; None for a method without ICKD."""
    if not ickd_kind(name):
        return None
    return name.split("+", 1)[1] if "+" in name else ""


def method_order(name: str) -> tuple[int, int, bool, str]:
    """KD, ICKD+KD, ICKD(online)+KD, IC-KD-all+KD, DKD, ICKD+DKD, ...: each baseline beside ICKD
    added to it, the offline paradigm before the online and teacher-free ones; the groups of
    a method split by settings (``KD [SOLVER.EPOCHS=1]``) beside it."""
    method = method_of_column(name)
    kind, base = ickd_kind(method), ickd_base(method)
    base = method if base is None else base
    rank = _BASE_ORDER.index(base) if base in _BASE_ORDER else len(_BASE_ORDER)
    return (rank, kind, "(" in method, (base if rank == len(_BASE_ORDER) else method) + name[len(method):])


def _make_cell(runs: list[RunSummary], metric: Metric) -> Cell:
    """Runs sorted by seed; `aggregate` has already dropped runs without a value and split
    runs with different settings; the cell keeps the settings all its runs hold."""
    ordered = sorted(runs, key=lambda run: (run.seed, run.path))
    common = dict(ordered[0].settings) if ordered else {}
    for run in ordered[1:]:
        common.update({key: value for key, value in run.settings.items() if key not in common})
    return Cell(tuple((run.seed, float(run.value(metric) or 0.0), run.path) for run in ordered), common)


def _duplicate_seed_warnings(where: str, runs: list[RunSummary]) -> list[str]:
    by_seed: dict[int, list[str]] = defaultdict(list)
    for run in runs:
        by_seed[run.seed].append(run.path)
    return [
        f"{where}: seed {seed} has {len(paths)} runs ({', '.join(paths)}) trained with the same settings; "
        "they count as separate samples"
        for seed, paths in sorted(by_seed.items())
        if len(paths) > 1
    ]


def aggregate(summaries: Iterable[RunSummary], metric: Metric = "best", by: GroupBy = "method") -> Leaderboard:
    """Group complete runs into pair rows and method (or label) columns.

    Runs of one method (or label) share a cell only when they were trained with the same
    settings (`kdharness.results.settings`): a method whose runs differ in anything but the
    seed and the non-training keys gets one column per group, labelled with the differing
    keys (``KD [SOLVER.EPOCHS=1]``), and a warning says so.

    A vanilla run is the vanilla cell of its own pair and also the teacher cell of every
    pair whose teacher is its student. Its own row is shown only when the pair has other
    runs or when no pair uses it as a teacher, so teacher runs do not add empty rows.
    """
    if metric not in ("best", "last"):
        raise ValueError(f"metric = {metric!r}; allowed: best, last")
    if by not in ("method", "label"):
        raise ValueError(f"by = {by!r}; allowed: method, label")
    warnings: list[str] = []
    runs: list[RunSummary] = []
    for summary in summaries:
        value = summary.value(metric)
        if not summary.complete:
            warnings.append(f"skipped {summary.path}: incomplete run")
        elif value is None or not math.isfinite(value) or value < 0:  # the trainer's best is -1 before any epoch
            warnings.append(f"skipped {summary.path}: no {metric} {summary.metric} recorded")
        else:
            runs.append(summary)

    teachers = {(run.dataset, run.teacher) for run in runs}
    teacher_runs: dict[tuple[str, str], list[RunSummary]] = defaultdict(list)
    grouped: dict[Pair, dict[str, list[RunSummary]]] = defaultdict(lambda: defaultdict(list))
    shows_row: set[Pair] = set()
    for run in runs:
        is_vanilla = run.method == VANILLA
        key = VANILLA if is_vanilla else (run.method if by == "method" else run.label)
        grouped[run.pair][key].append(run)
        used_as_teacher = is_vanilla and (run.dataset, run.student) in teachers
        if used_as_teacher:
            teacher_runs[(run.dataset, run.student)].append(run)
        if not used_as_teacher:
            shows_row.add(run.pair)

    rows: list[PairRow] = []
    columns: set[str] = set()
    for pair in sorted(shows_row):
        dataset, teacher, student = pair
        where = f"{dataset} {teacher} -> {student}"
        row = PairRow(dataset, teacher, student)
        if (dataset, teacher) in teacher_runs:
            row.teacher_cell = _teacher_cell(f"{dataset} teacher {teacher}", teacher_runs[(dataset, teacher)], metric, warnings)
        for key, key_runs in grouped[pair].items():
            for label, group in _split_by_settings(f"{where}, {key}", key, key_runs, warnings):
                row.cells[label] = _make_cell(group, metric)
                warnings.extend(_duplicate_seed_warnings(f"{where}, {label}", group))
                if label != VANILLA:
                    columns.add(label)
        rows.append(row)
    for (dataset, model), model_runs in sorted(teacher_runs.items()):
        warnings.extend(_duplicate_seed_warnings(f"{dataset} teacher {model}", model_runs))
    order = method_order if by == "method" else (lambda name: (0, 0, False, name))
    metric_names = {run.dataset: run.metric for run in runs}
    return Leaderboard(rows, sorted(columns, key=order), metric, by, warnings, metric_names)


def _ordered(runs: Sequence[RunSummary]) -> list[RunSummary]:
    return sorted(runs, key=lambda run: (run.seed, run.path))


def _split_by_settings(
    where: str, key: str, runs: Sequence[RunSummary], warnings: list[str]
) -> list[tuple[str, list[RunSummary]]]:
    """(column label, runs) per group of `runs` trained with the same settings; one group: `key`."""
    groups = partition_by_settings(_ordered(runs), lambda run: run.settings)
    if len(groups) == 1:
        return [(key, groups[0])]
    labelled = list(zip(column_labels(key, [group[0].settings for group in groups]), groups))
    names = ", ".join(f"{label!r} ({len(group)} runs)" for label, group in labelled)
    warnings.append(
        f"{where}: runs trained with different settings are not averaged together; shown as {names}"
    )
    return labelled


def _teacher_cell(where: str, runs: Sequence[RunSummary], metric: Metric, warnings: list[str]) -> Cell | None:
    """The teacher cell, or None (with a warning) when the teacher's runs were trained differently."""
    groups = partition_by_settings(_ordered(runs), lambda run: run.settings)
    if len(groups) > 1:
        found = differences(groups[0][0].settings, groups[1][0].settings)
        warnings.append(
            f"{where}: its runs were trained with different settings "
            f"({describe_differences(found, groups[0][0].path, groups[1][0].path)}); no teacher accuracy is shown"
        )
        return None
    return _make_cell(list(runs), metric)


# -- paired comparison over the leaderboard ----------------------------------------------
@dataclass(frozen=True)
class MethodComparison:
    """A vs B on one pair: the paired result, or None with the reason in `note`."""

    dataset: str
    teacher: str
    student: str
    seeds: tuple[int, ...]
    result: PairedComparison | None
    note: str = ""


def _by_seed(cell: Cell, name: str) -> tuple[dict[int, float], list[str]]:
    values: dict[int, float] = {}
    duplicates = []
    for seed, value, _ in cell.runs:
        if seed in values:
            duplicates.append(f"seed {seed} has several {name} runs")
        values[seed] = value
    return values, duplicates


def _columns_showing(row: PairRow, name: str) -> list[str]:
    """The cells of `row` that show `name`: its own column, or the groups it was split into."""
    if name in row.cells:
        return [name]
    return [label for label in row.cells if method_of_column(label) == name]


def compare(board: Leaderboard, a: str, b: str, confidence: float = 0.95) -> list[MethodComparison]:
    """The paired comparison of columns `a` and `b` (either may be "vanilla") on every pair.

    Runs are matched by seed; seeds that only one side has are left out and named in the
    note, and a seed with several runs on one side makes the pairing ambiguous (no result).
    Only runs trained with the same shared settings are paired (`kdharness.results.settings`):
    a pair whose two columns differ in, say, SOLVER.EPOCHS gets no result, and a note naming
    the keys. A name whose runs were split by settings (``KD`` shown as ``KD [SOLVER.EPOCHS=1]``
    and ``KD [SOLVER.EPOCHS=3]``) stands for the one group that matches the other side.
    """
    known = set(board.columns) | {VANILLA} | {method_of_column(column) for column in board.columns}
    for row in board.rows:
        known |= set(row.cells) | {method_of_column(label) for label in row.cells}
    for name in (a, b):
        if name not in known:
            raise KeyError(f"no column {name!r} in the leaderboard; columns: {', '.join(sorted(known))}")
    out: list[MethodComparison] = []
    for row in board.rows:
        columns_a, columns_b = _columns_showing(row, a), _columns_showing(row, b)
        if not columns_a or not columns_b:
            continue
        options = [(ca, cb) for ca in columns_a for cb in columns_b if ca != cb or a == b]
        matching = [
            (ca, cb) for ca, cb in options
            if not differences(shared_settings(row.cells[ca].settings), shared_settings(row.cells[cb].settings))
        ]
        if not matching:
            ca, cb = options[0] if options else (columns_a[0], columns_b[0])
            found = differences(shared_settings(row.cells[ca].settings), shared_settings(row.cells[cb].settings))
            out.append(MethodComparison(*row.pair, (), None,
                                        f"not paired, trained differently: {describe_differences(found, ca, cb)}"))
            continue
        if len(matching) > 1:
            listed = "; ".join(f"{ca!r} vs {cb!r}" for ca, cb in matching)
            out.append(MethodComparison(*row.pair, (), None,
                                        f"ambiguous: several groups match ({listed}); name the columns in full"))
            continue
        ca, cb = matching[0]
        notes = [f"as {ca!r} vs {cb!r}"] if (ca, cb) != (a, b) else []
        values_a, dup_a = _by_seed(row.cells[ca], ca)
        values_b, dup_b = _by_seed(row.cells[cb], cb)
        if dup_a or dup_b:
            out.append(MethodComparison(*row.pair, (), None, "ambiguous pairing: " + "; ".join(dup_a + dup_b)))
            continue
        seeds = sorted(values_a.keys() & values_b.keys())
        unpaired = sorted(values_a.keys() ^ values_b.keys())
        if unpaired:
            notes.append(f"unpaired seeds left out: {unpaired}")
        note = "; ".join(notes)
        if not seeds:
            out.append(MethodComparison(*row.pair, (), None, note or "no common seeds"))
            continue
        result = paired_comparison([values_a[s] for s in seeds], [values_b[s] for s in seeds], confidence)
        out.append(MethodComparison(*row.pair, tuple(seeds), result, note))
    return out


def ickd_baselines(board: Leaderboard) -> list[tuple[str, str]]:
    """(ICKD variant, its baseline) for every ICKD column: ICKD+KD vs KD, ICKD vs vanilla, and
    online ICKD vs DML (the same online training without the ICKD terms, see method_name)."""
    available = set(board.columns) | ({VANILLA} if any(VANILLA in row.cells for row in board.rows) else set())
    pairs = []
    available |= {method_of_column(column) for column in board.columns}
    for column in board.columns:
        method = method_of_column(column)
        if ickd_kind(method):
            base = "DML" if "(online)" in method else (ickd_base(method) or VANILLA)
            if base in available:
                pairs.append((column, base))
    return pairs
