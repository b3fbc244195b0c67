"""The run directory: what a new run, `--resume` and `--start-over` may do to it.

A run directory holds days of training. Running the same command again must not restart
at epoch 1 over it and replace `best` with a worse model, so a new run refuses a directory
that already holds a run's files and offers the two ways on: `--resume` (continue it) or
`--start-over` (train again from epoch 1, with the old run moved aside to
`<dir>.old-<timestamp>`, never deleted).

`--resume` continues with the configuration the run was trained with: the current one is
compared with the config recorded in the checkpoint (or, for older checkpoints, in
`summary.json`), and any difference in a key that changes what is trained is refused with
a list of the changed keys, before a state_dict meets a model of another shape.

Kept out of `BaseTrainer`, which only calls these functions, so the rules read in one place.
"""
from __future__ import annotations

import glob
import json
import os
import time
from typing import Any, Iterable, Sequence

import yaml

from kdharness.config import NON_TRAINING_KEYS, flatten_config
from kdharness.engine.checkpoint import CheckpointError, load_checkpoint

# Files whose presence means the directory holds (part of) a run that a fresh start would
# overwrite. `run.lock` and `train.events/` are not among them: the trainer creates both as
# soon as it is constructed, before anything was trained.
RUN_FILES = ("summary.json", "worklog.txt", "latest", "latest.prev", "best", "student_best", "student_latest", "nan_state")
# Left in place when a run is set aside: the live trainer holds its lock on this file.
KEEP_ON_SET_ASIDE = ("run.lock",)
SET_ASIDE_MARK = ".old-"
# Overrides that say where things are or how fast they run, not what is trained: left out of
# the run directory's name (mdistiller appends every override, so a path would nest folders).
NON_NAMING_KEYS = NON_TRAINING_KEYS
# Config keys that may differ between a run and its resume: those above (a moved dataset, more
# loader workers, the NaN policy), and SOLVER.EPOCHS (to extend a finished run; the epochs
# already trained keep their history).
RESUMABLE_KEYS = NON_TRAINING_KEYS + ("SOLVER.EPOCHS",)


class ExistingRunError(ValueError):
    """A fresh start was asked for in a directory that holds a run; nothing was changed."""


class ConfigChangedError(ValueError):
    """`--resume` with a config that differs from the one the run was trained with."""


def previous_run_files(log_path: str) -> list[str]:
    """The names of the run files in `log_path` (checkpoints, summary, worklog), sorted."""
    if not os.path.isdir(log_path):
        return []
    names = [name for name in RUN_FILES if os.path.exists(os.path.join(log_path, name))]
    names += [os.path.basename(p) for p in glob.glob(os.path.join(log_path, "epoch_*"))]
    return sorted(names)


def describe_run(log_path: str) -> str:
    """A few words on the run in `log_path` from its summary.json: finished or how far, best top-1 (or mIoU)."""
    try:
        with open(os.path.join(log_path, "summary.json"), encoding="utf-8") as handle:
            summary = json.load(handle)
        done, planned = len(summary.get("history") or []), summary.get("epochs")
        state = "a finished run" if summary.get("complete") else f"a partial run ({done} of {planned} epochs)"
        best, name = summary.get("best_top1"), "top-1"
        if summary.get("task") == "segmentation":
            best, name = summary.get("best_miou"), "mIoU"
        if isinstance(best, (int, float)) and best >= 0:
            state += f", best {name} {best:.2f} % at epoch {summary.get('best_epoch')}"
        return state
    except (OSError, ValueError, AttributeError, TypeError):
        return "a partial run"


def set_aside(log_path: str, keep: Sequence[str] = KEEP_ON_SET_ASIDE) -> str:
    """Move everything in `log_path` except `keep` into a new `<log_path>.old-<timestamp>` directory.

    The directory itself stays (the running trainer holds its lock inside it); returns the
    new directory's path.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = f"{os.path.normpath(log_path)}{SET_ASIDE_MARK}{stamp}"
    suffix = 1
    while os.path.exists(target):
        target = f"{os.path.normpath(log_path)}{SET_ASIDE_MARK}{stamp}-{suffix}"
        suffix += 1
    os.makedirs(target)
    for name in sorted(os.listdir(log_path)):
        if name not in keep:
            os.replace(os.path.join(log_path, name), os.path.join(target, name))
    return target


def prepare_fresh_start(log_path: str, start_over: bool, move: bool = True) -> str | None:
    """Before a run without `--resume`: refuse a directory holding a run, or set that run aside.

    Returns the directory the old run was moved to (None when there was none, or when
    `move` is False: a process other than the one that writes the run only checks). Raises
    ExistingRunError, naming the directory, what it holds and both ways on, when it holds a
    run and `start_over` is False.
    """
    files = previous_run_files(log_path)
    if not files:
        return None
    if not start_over:
        raise ExistingRunError(
            f"run directory {log_path!r} already holds {describe_run(log_path)} ({', '.join(files)}); "
            "a new run would overwrite it. Add --resume to continue it, or --start-over to train again "
            f"from epoch 1 (the old run is kept in {os.path.normpath(log_path)}{SET_ASIDE_MARK}<timestamp>), "
            "or choose another EXPERIMENT.NAME / LOG.PREFIX"
        )
    return set_aside(log_path) if move else None


# -- resume ---------------------------------------------------------------------------------
def resume_candidates(log_path: str) -> list[str]:
    """The checkpoints `--resume` tries, in order: latest, latest.prev, then epoch_N newest first."""
    epochs = sorted(
        glob.glob(os.path.join(log_path, "epoch_*")),
        key=lambda p: int(p.rsplit("_", 1)[-1]) if p.rsplit("_", 1)[-1].isdigit() else -1,
        reverse=True,
    )
    return [os.path.join(log_path, n) for n in ("latest", "latest.prev")] + epochs


def load_resume_state(log_path: str, warn=print) -> tuple[str, dict[str, Any]]:
    """The newest intact full checkpoint of the run, as (path, state); `warn` hears each one skipped and why."""
    errors = []
    for path in resume_candidates(log_path):
        if not os.path.exists(path):
            continue
        try:
            state = load_checkpoint(path)
            if "optimizer" not in state:
                raise CheckpointError(f"{path!r} holds no optimizer state (a student-only checkpoint)")
        except CheckpointError as error:
            errors.append(str(error))
            warn(f"skipping {error}")
            continue
        return path, state
    detail = "; ".join(errors) if errors else "none found"
    raise CheckpointError(f"--resume: no intact checkpoint in {log_path!r} ({detail})")


def recorded_config(log_path: str, state: dict[str, Any]) -> str | None:
    """The YAML config the run was trained with: the checkpoint's, else summary.json's, else None."""
    if isinstance(state.get("config"), str):
        return state["config"]
    try:
        with open(os.path.join(log_path, "summary.json"), encoding="utf-8") as handle:
            config = json.load(handle).get("config")
        return config if isinstance(config, str) else None
    except (OSError, ValueError, AttributeError):
        return None


def config_diff(recorded: str, current: str, ignore: Iterable[str] = RESUMABLE_KEYS) -> list[tuple[str, Any, Any]]:
    """(key, recorded value, current value) for every key whose value changed, `ignore` keys left out
    (an entry ending in "." covers its node).

    Keys present on one side only (a key added to the harness after the run started) are
    not differences: the run never had a value to compare.
    """
    old, new = flatten_config(yaml.safe_load(recorded) or {}), flatten_config(yaml.safe_load(current) or {})
    ignore = tuple(ignore)
    return [
        (key, old[key], new[key])
        for key in sorted(old.keys() & new.keys())
        if old[key] != new[key] and not _ignored(key, ignore)
    ]


def _ignored(key: str, ignore: tuple[str, ...]) -> bool:
    return any(key == entry or (entry.endswith(".") and key.startswith(entry)) for entry in ignore)


def check_resume_config(log_path: str, state: dict[str, Any], current: str) -> None:
    """Refuse to resume with a config that changes what the run trains; the message lists each change."""
    recorded = recorded_config(log_path, state)
    if recorded is None:
        return
    changes = config_diff(recorded, current)
    if changes:
        lines = "; ".join(f"{key}: {old!r} in the run, {new!r} now" for key, old, new in changes)
        raise ConfigChangedError(
            f"--resume: the config differs from the one the run in {log_path!r} was trained with ({lines}). "
            "Resume with the recorded values (revert the YAML or the overrides), or train the new config "
            "as a new run (another EXPERIMENT.NAME, or --start-over to replace this one)"
        )
