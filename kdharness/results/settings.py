"""What a run was trained with, as the leaderboard compares runs: its settings.

A leaderboard cell averages runs, and `--compare` pairs them by seed; both are only
meaningful between runs trained the same way. A run's *settings* are its recorded config
(the ``config`` of its summary.json) without the seed and without the keys that change
neither training nor measurement (`kdharness.config.NON_TRAINING_KEYS`: paths, workers,
logging). Runs of one method whose settings differ never share a cell: each group gets a
column of its own, labelled by the keys that tell the groups apart.

Two runs of *different* methods differ by design in their method keys (the distiller and
trainer, every method's own config node, label smoothing); a comparison pairs them only
when everything else (data, budget, optimiser, ...), their *shared settings*, is equal.

A key that only one of two configs holds (added to the harness between the two runs) is
not a difference: one of the runs never had a value for it.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import yaml

from kdharness.config import SEED_KEY, flatten_config, is_non_training_key

__all__ = [
    "column_labels",
    "differences",
    "describe_differences",
    "method_of_column",
    "partition_by_settings",
    "settings_from_config",
    "shared_settings",
]

# The host's own top-level nodes; every other top-level node belongs to one method (CFG.KD,
# CFG.DKD, a plugin's CFG.ICKD, ...), as do these keys of the host's nodes.
_HOST_NODES = ("EXPERIMENT", "DATASET", "DISTILLER", "SOLVER", "LOG")
_METHOD_KEYS = ("DISTILLER.TYPE", "SOLVER.TRAINER", "SOLVER.LABEL_SMOOTHING")
_METHOD_NODES_IN_HOST = ("SOLVER.DOT.",)
# At most this many differing keys are spelt out in a column label.
_LABEL_KEYS = 3


def settings_from_config(config: Any) -> dict[str, Any]:
    """The flattened config without the seed and the non-training keys; {} for no readable config.

    `config` is the YAML text a summary stores (or an already parsed mapping).
    """
    if isinstance(config, str):
        try:
            config = yaml.load(config, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError:
            return {}
    flat = flatten_config(config) if isinstance(config, Mapping) else {}
    return {key: value for key, value in flat.items() if key != SEED_KEY and not is_non_training_key(key)}


def is_method_key(key: str) -> bool:
    """Whether `key` belongs to a method rather than to the training all methods share."""
    node = key.split(".", 1)[0]
    return node not in _HOST_NODES or key in _METHOD_KEYS or key.startswith(_METHOD_NODES_IN_HOST)


def shared_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings two methods must agree on to be compared: all but the method keys."""
    return {key: value for key, value in settings.items() if not is_method_key(key)}


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) for every key both hold with different values, sorted by key."""
    return [(key, a[key], b[key]) for key in sorted(a.keys() & b.keys()) if a[key] != b[key]]


def describe_differences(found: Sequence[tuple[str, Any, Any]], name_a: str, name_b: str) -> str:
    """``SOLVER.EPOCHS 3 in ICKD+KD, 1 in KD; ...`` for a message."""
    return "; ".join(f"{key} {_show(va)} in {name_a}, {_show(vb)} in {name_b}" for key, va, vb in found)


def partition_by_settings(items: Sequence[Any], settings_of) -> list[list[Any]]:
    """Group `items` (in order) so that the members of a group have no differing settings.

    Each item joins the first group whose first member it does not differ from; a key held
    by only one side never splits a group (see the module docstring).
    """
    groups: list[list[Any]] = []
    for item in items:
        mine = settings_of(item)
        for group in groups:
            if not differences(settings_of(group[0]), mine):
                group.append(item)
                break
        else:
            groups.append([item])
    return groups


def column_labels(name: str, groups: Sequence[Mapping[str, Any]]) -> list[str]:
    """One label per group of runs of `name`, given each group's settings: ``KD [SOLVER.EPOCHS=1]``.

    A label spells out the keys in which its group departs from the others: for a key that
    most groups share one value of (a one-factor sweep around a centre config), only the
    groups with another value name it; for a key without such a value (two groups, 1 and 3
    epochs) every group names its own. A group that departs in nothing (the sweep's centre)
    keeps the plain `name`. Labels are made unique if the shortened form would collide.
    """
    varying = sorted({key for i, a in enumerate(groups) for b in groups[i + 1 :] for key, _, _ in differences(a, b)})
    modal: dict[str, Any] = {}
    for key in varying:
        counts: dict[str, int] = {}
        for settings in groups:
            if key in settings:
                counts[repr(settings[key])] = counts.get(repr(settings[key]), 0) + 1
        ranked = sorted(counts.values(), reverse=True)
        if len(ranked) > 1 and ranked[0] > ranked[1]:
            modal[key] = next(value for value, count in counts.items() if count == ranked[0])
    labels: list[str] = []
    for settings in groups:
        keys = [key for key in varying if key in settings and repr(settings[key]) != modal.get(key)]
        shown = [f"{key}={_show(settings[key])}" for key in keys[:_LABEL_KEYS]]
        more = f", +{len(keys) - _LABEL_KEYS} more" if len(keys) > _LABEL_KEYS else ""
        label = f"{name} [{', '.join(shown)}{more}]" if keys else name
        if label in labels:
            label = f"{label} #{sum(existing.startswith(label) for existing in labels) + 1}"
        labels.append(label)
    return labels


def method_of_column(label: str) -> str:
    """The method (or run label) a column shows: ``"KD [SOLVER.EPOCHS=1]"`` -> ``"KD"``."""
    return label.split(" [", 1)[0]


def _show(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)
