"""One-factor sweeps of ICKD's hyper-parameters, read from run summaries (the paper's Figs. 2, 4, 5).

A sweep is what `tools/train.py --cfg C ICKD.K 32` (or `tools/sweep.py ... ICKD.K 32`) leaves
behind: runs of one config that differ from it in exactly one ``ICKD.*`` override. The run
directory's name records the overrides (``<tag>,EXPERIMENT.SEED:0,ICKD.K:32``, see
`kdharness.engine.build.experiment_name`), so membership comes from the name; the value
itself comes from the config stored in summary.json (typed, e.g. 32 and not "32"). The runs
of the config without override are the sweep's centre: a point in every sweep of that config.

Runs are also checked against their centre: a run whose stored config differs from the
centre's in anything but the swept key (say SOLVER.EPOCHS, because it came from another
experiment directory) is left out with a warning rather than plotted as a false point.

Pure functions (no printing): `tools/leaderboard.py --sensitivity` renders them, and
`kdharness.results.plot` draws them.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import yaml

from kdharness.config import NON_TRAINING_KEYS, SEED_KEY, flatten_config
from kdharness.results.summaries import VANILLA, Cell, Metric, RunSummary, load_summaries

__all__ = [
    "FIGURES",
    "ICKD_ALL",
    "BOOKKEEPING_KEYS",
    "Param",
    "Sweep",
    "SweepRun",
    "flatten_config",
    "format_value",
    "load_sweep_runs",
    "parse_experiment",
    "render_sensitivity_markdown",
    "sweeps",
    "value_order",
]


@dataclass(frozen=True)
class Param:
    """A swept config key and how the paper writes it (matplotlib mathtext)."""

    key: str
    symbol: str


# The paper's figures: Fig. 4 (beta_1, K, tau_1, beta_2) and Fig. 5 (gamma_picd, gamma_nicd),
# one panel per hyper-parameter; Fig. 2 compares IC-KD (Top-K positives) with IC-KD-all.
FIGURES: dict[str, tuple[Param, ...]] = {
    "fig4": (
        Param("ICKD.BETA1", r"$\beta_1$"),
        Param("ICKD.K", r"$K$"),
        Param("ICKD.TAU", r"$\tau_1$"),
        Param("ICKD.BETA2", r"$\beta_2$"),
    ),
    "fig5": (
        Param("ICKD.PICD_WEIGHT", r"$\gamma_{picd}$"),
        Param("ICKD.NICD_WEIGHT", r"$\gamma_{nicd}$"),
    ),
}
ICKD_ALL = Param("ICKD.ALL_SAME_CLASS", "IC-KD-all")
MIN_VALUES = 4  # values per panel in the paper's Figs. 4 and 5; fewer is reported

# Config keys that say where or how fast a run happened, not what it trained: not compared
# between a run and its centre. The host's one list, plus the seed (kdharness.config).
BOOKKEEPING_KEYS = NON_TRAINING_KEYS + (SEED_KEY,)
# Also ignored when matching a baseline run to a sweep: what differs between methods by design.
_METHOD_KEYS = ("ICKD.", "DISTILLER.TYPE", "SOLVER.TRAINER")

# Table headers of the diagnostics ICKD logs (docs/method.md, "Diagnostics"); any other name
# a distiller logs is shown under its own name after these.
DIAGNOSTIC_COLUMNS = {
    "picd_to_base": "PICD/base",
    "nicd_to_base": "NICD/base",
    "nicd_inside_margin": "NICD pairs in margin",
    "pos_sim": "pos. sim.",
    "neg_sim": "neg. sim.",
    "pos_sim_std": "pos. sim. spread",
    "picd_max_weight": "max PICD weight",
}

_OVERRIDE = re.compile(r"^([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)+):(.*)$")
_SEED_KEY = "EXPERIMENT.SEED"


def parse_experiment(experiment: str) -> tuple[str, dict[str, str]]:
    """``"tag,EXPERIMENT.SEED:0,ICKD.K:32"`` -> ``("tag", {"ICKD.K": "32"})`` (the seed dropped).

    A comma inside an override's value (which the name does not escape) is kept in that value.
    """
    first, *parts = experiment.split(",")
    overrides: dict[str, str] = {}
    last: str | None = None
    for part in parts:
        match = _OVERRIDE.match(part)
        if match:
            last = match.group(1)
            overrides[last] = match.group(2)
        elif last is not None:
            overrides[last] += "," + part
        else:
            first += "," + part
    overrides.pop(_SEED_KEY, None)
    return first, overrides


@dataclass(frozen=True)
class SweepRun:
    """A complete run with what a sweep needs: its config tag, overrides and stored config."""

    summary: RunSummary
    tag: str
    overrides: Mapping[str, str]
    config: Mapping[str, Any]
    diagnostics: Mapping[str, float] = field(default_factory=dict)  # the last epoch's, if the distiller logs any

    @property
    def is_ickd(self) -> bool:
        return self.config.get("DISTILLER.TYPE") == "ICKD"


def load_sweep_runs(paths: Iterable[str]) -> tuple[list[SweepRun], list[str]]:
    """Complete runs under `paths` with their stored configs; one warning per file left out."""
    summaries, warnings = load_summaries(paths)
    runs = []
    for summary in summaries:
        try:
            with open(summary.path, encoding="utf-8") as handle:
                data = json.load(handle)
            text = data.get("config")
            config = yaml.safe_load(text) if isinstance(text, str) else None
        except (OSError, ValueError, yaml.YAMLError):
            data, config = {}, None
        if not isinstance(config, Mapping):
            warnings.append(f"skipped {summary.path} for sweeps: no readable 'config' (the YAML dump of the run's config)")
            continue
        tag, overrides = parse_experiment(summary.experiment)
        runs.append(SweepRun(summary, tag, overrides, flatten_config(config), _last_diagnostics(data.get("history"))))
    return runs, warnings


def _last_diagnostics(history: Any) -> dict[str, float]:
    """The ``"diagnostics"`` of the last history entry (kdharness.engine.diagnostics), {} if none."""
    if not isinstance(history, list) or not history or not isinstance(history[-1], Mapping):
        return {}
    found = history[-1].get("diagnostics")
    if not isinstance(found, Mapping):
        return {}
    return {str(k): float(v) for k, v in found.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass
class Sweep:
    """Top-1 of one config's runs against the values of one swept key, with its baseline.

    `points` is sorted by value; `centre` is the config's own value (None when the config's
    runs are missing). `baseline` holds the runs of the method ICKD is added to. `diagnostics`
    maps a value to the mean over its runs of their last epoch's diagnostics.
    """

    dataset: str
    teacher: str
    student: str
    tag: str
    method: str
    key: str
    points: list[tuple[Any, Cell]]
    centre: Any
    baseline_name: str
    baseline: Cell | None = None
    warnings: list[str] = field(default_factory=list)
    diagnostics: dict[Any, dict[str, float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.method} {self.teacher}→{self.student}"


def _differences(a: Mapping[str, Any], b: Mapping[str, Any], ignore: Sequence[str]) -> list[str]:
    """Keys (present in both, not starting with an `ignore` prefix) whose values differ."""
    return [
        f"{key} {a[key]!r} vs {b[key]!r}"
        for key in sorted(a.keys() & b.keys())
        if not key.startswith(tuple(ignore)) and a[key] != b[key]
    ]


def _cell(runs: Sequence[SweepRun], metric: Metric) -> Cell:
    ordered = sorted(runs, key=lambda run: (run.summary.seed, run.summary.path))
    return Cell(tuple((run.summary.seed, float(run.summary.value(metric)), run.summary.path) for run in ordered))


def _baseline_name(centre: SweepRun) -> str:
    """The method ICKD is added to, as summaries name it: KD, DKD, ..., vanilla for NONE, DML online."""
    if centre.config.get("ICKD.PARADIGM") == "online":
        return "DML"
    base = centre.config.get("ICKD.BASE", "KD")
    return VANILLA if base == "NONE" else str(base)


def _baseline_cell(
    runs: Sequence[SweepRun], reference: SweepRun, name: str, metric: Metric, warnings: list[str]
) -> Cell | None:
    """Runs of method `name` on the reference's pair, without overrides and trained the same way."""
    chosen = []
    ref = reference.summary
    for run in runs:
        s = run.summary
        same_pair = (s.dataset, s.student) == (ref.dataset, ref.student) and (name == VANILLA or s.teacher == ref.teacher)
        if s.method != name or not same_pair or run.overrides:
            continue
        ignore = BOOKKEEPING_KEYS + _METHOD_KEYS + (("DISTILLER.TEACHER",) if name == VANILLA else ())
        differs = _differences(run.config, reference.config, ignore)
        if differs:
            warnings.append(f"baseline {name}: left out {s.path}: trained differently from {ref.path} ({'; '.join(differs)})")
            continue
        chosen.append(run)
    return _cell(chosen, metric) if chosen else None


def sweeps(
    runs: Sequence[SweepRun],
    keys: Iterable[str],
    metric: Metric = "best",
    baseline: str | None = None,
) -> tuple[list[Sweep], list[str]]:
    """One `Sweep` per (pair, ICKD config, key in `keys`) that has at least one overridden run.

    `baseline` names the method drawn as the reference line (default: ICKD.BASE's method,
    vanilla for NONE, DML for the online paradigm).
    """
    keys = list(keys)
    warnings: list[str] = []
    groups: dict[tuple[str, str, str, str], list[SweepRun]] = defaultdict(list)
    for run in runs:
        value = run.summary.value(metric)
        if run.is_ickd and value is not None and value >= 0:
            s = run.summary
            groups[(s.dataset, s.teacher, s.student, run.tag)].append(run)
    out: list[Sweep] = []
    for (dataset, teacher, student, tag), members in sorted(groups.items()):
        centre_runs = [run for run in members if not run.overrides]
        swept: dict[str, list[SweepRun]] = defaultdict(list)
        for run in members:
            ickd = [key for key in run.overrides if key.startswith("ICKD.")]
            if len(run.overrides) == 1 and ickd:
                swept[ickd[0]].append(run)
            elif run.overrides and set(run.overrides) & set(keys):
                warnings.append(
                    f"left out {run.summary.path}: overrides {', '.join(sorted(run.overrides))}; "
                    "a sweep run differs from its config in exactly one ICKD.* override"
                )
        reference = centre_runs[0] if centre_runs else None
        for key in keys:
            if key not in swept:
                continue
            sweep_warnings: list[str] = []
            by_value: dict[Any, list[SweepRun]] = defaultdict(list)
            for run in swept[key]:
                if reference is not None:
                    differs = _differences(run.config, reference.config, BOOKKEEPING_KEYS + (key,))
                    if differs:
                        sweep_warnings.append(
                            f"{key}: left out {run.summary.path}: its config differs from the centre run "
                            f"{reference.summary.path} beyond {key} ({'; '.join(differs)})"
                        )
                        continue
                by_value[run.config.get(key, run.overrides[key])].append(run)
            centre_value = reference.config.get(key) if reference is not None else None
            if reference is None:
                sweep_warnings.append(f"{dataset} {teacher}->{student} {tag}: no run without overrides, so no centre point for {key}")
            else:
                by_value[centre_value].extend(centre_runs)
            if not by_value:
                warnings.extend(sweep_warnings)
                continue
            points = [(value, _cell(value_runs, metric)) for value, value_runs in sorted(by_value.items(), key=value_order)]
            first = reference or swept[key][0]
            name = baseline or _baseline_name(first)
            base_cell = _baseline_cell(runs, first, name, metric, sweep_warnings)
            if base_cell is None:
                sweep_warnings.append(f"{dataset} {teacher}->{student}: no {name} run to draw as the baseline")
            thin = [f"{value}" for value, cell in points if cell.n < 2]
            if thin:
                sweep_warnings.append(f"{key}: a single seed at {', '.join(thin)} (no error bar)")
            if key != ICKD_ALL.key and len(points) < MIN_VALUES:
                sweep_warnings.append(f"{key}: {len(points)} values; the paper's sensitivity panels have at least {MIN_VALUES}")
            warnings.extend(sweep_warnings)
            out.append(Sweep(
                dataset, teacher, student, tag, first.summary.method, key, points, centre_value,
                name, base_cell, sweep_warnings, {value: _mean_diagnostics(by_value[value]) for value, _ in points},
            ))
    return out, warnings


def _mean_diagnostics(runs: Sequence[SweepRun]) -> dict[str, float]:
    """Per name, the mean over the runs that logged it."""
    values: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for name, value in run.diagnostics.items():
            values[name].append(value)
    return {name: sum(v) / len(v) for name, v in values.items()}


def value_order(item: tuple[Any, Any]) -> tuple[int, Any]:
    """Sort key of a (value, ...) item: booleans, then numbers by size, then text."""
    value = item[0]
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, (int, float)):
        return (1, float(value))
    return (2, str(value))


def format_value(value: Any) -> str:
    """How a swept value is printed on an axis or in a table: ``0.1``, ``8``, ``True``."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def render_sensitivity_markdown(found: Sequence[Sweep], metric: Metric = "best") -> str:
    """One table per sweep: value, top-1 mean ± std (n), difference to the baseline's mean, and
    the runs' last-epoch diagnostics (mean over seeds) when they logged any."""
    from kdharness.results.table import format_cell

    parts = []
    for sweep in found:
        base = sweep.baseline
        names = [name for name in DIAGNOSTIC_COLUMNS if any(name in d for d in sweep.diagnostics.values())]
        names += sorted({name for d in sweep.diagnostics.values() for name in d} - set(names))
        title = f"### {sweep.dataset} {sweep.teacher} → {sweep.student}, {sweep.method} ({sweep.tag}): {sweep.key}"
        header = [sweep.key, f"{metric} top-1 (%)", f"vs {sweep.baseline_name}"] + [DIAGNOSTIC_COLUMNS.get(n, n) for n in names]
        lines = [title, "", "| " + " | ".join(header) + " |", "|" + "--:|" * len(header)]
        for value, cell in sweep.points:
            marker = " (config)" if value == sweep.centre and type(value) is type(sweep.centre) else ""
            delta = f"{cell.mean - base.mean:+.2f}" if base is not None else "–"
            diag = sweep.diagnostics.get(value, {})
            extra = "".join(f" {diag[n]:.3g} |" if n in diag else " – |" for n in names)
            lines.append(f"| {format_value(value)}{marker} | {format_cell(cell)} | {delta} |{extra}")
        base_text = format_cell(base, "no runs")
        lines += ["", f"{sweep.baseline_name}: {base_text}", ""]
        parts.append("\n".join(lines))
    return "\n".join(parts)
