"""``LOG.WANDB True``: the run's scalars in Weights & Biases as well as in tensorboard.

mdistiller's users set ``LOG.WANDB`` (its default is True) and read their curves there. As in
mdistiller, the run is ``wandb.init(project=EXPERIMENT.PROJECT, name=<experiment name>,
tags=EXPERIMENT.TAG's parts and the overrides)``, with the run's config; ``LOG.WANDB_PROJECT``
overrides the project. What is logged is what the tensorboard writer gets, tag for tag: the
loss terms and ICKD's diagnostics per step (x-axis ``global_step``), the epoch's metrics
(``train_acc``, ``test_acc``, ...), its diagnostics' means and ``lr`` (x-axis ``epoch``);
``test_acc``'s summary is its maximum (mdistiller's ``best_acc``). Files go to ``WANDB_DIR``
when set, else into the run directory; ``WANDB_MODE=offline`` works without a network.

wandb is an optional extra (``pip install -e .[wandb]``). Not installed, or failing to start or
to log: one warning line, and the run goes on with tensorboard only. The wandb run starts at
the first scalar, so a command refused before training leaves none behind.
"""
from __future__ import annotations

import os
from typing import Any

import yaml

from kdharness.engine.utils import log_msg

# Tags the trainer logs per step (x-axis global_step); every other tag is per epoch.
STEP_TAG_PREFIXES = ("train/", "diagnostics/")
# Tags whose run summary is their best value rather than their last.
MAX_SUMMARY_TAGS = ("test_acc", "test_acc_top5", "test_miou", "test_pixel_acc")


def _warn(message: str) -> None:
    print(log_msg(message, "WARN"), flush=True)


def open_wandb(cfg: Any, experiment_name: str, log_path: str) -> "WandbScalars | None":
    """A `WandbScalars` for the run, or None (after one warning line) when wandb is not installed."""
    try:
        import wandb
    except ImportError as error:
        _warn(f"LOG.WANDB is True but wandb cannot be imported ({error}); logging to tensorboard only "
              "(pip install wandb, or pip install -e .[wandb])")
        return None
    return WandbScalars(wandb, cfg, experiment_name, log_path)


class WandbScalars:
    """Mirrors ``add_scalar(tag, value, step)`` into one wandb run; values of one step go in one row."""

    def __init__(self, wandb: Any, cfg: Any, experiment_name: str, log_path: str) -> None:
        self._wandb = wandb
        self._run: Any = None
        self._failed = False
        self._closed = False
        self._defined: set[str] = set()
        self._pending: dict[str, tuple[int, dict[str, float]]] = {}  # axis -> (step, row)
        name = os.path.basename(experiment_name)
        tags = [tag for tag in str(cfg.EXPERIMENT.TAG).split(",") if tag] + name.split(",")[1:]
        self._init_kwargs = dict(
            project=cfg.LOG.get("WANDB_PROJECT", "") or cfg.EXPERIMENT.PROJECT,
            name=experiment_name,
            tags=tags,
            config=yaml.safe_load(cfg.dump()),
            dir=None if os.environ.get("WANDB_DIR") else log_path,
        )

    def _start(self) -> bool:
        if self._run is None and not self._failed and not self._closed:
            try:
                self._run = self._wandb.init(**self._init_kwargs)
                for axis in ("epoch", "global_step"):
                    self._run.define_metric(axis, hidden=True)
            except Exception as error:  # a missing API key, no network without WANDB_MODE=offline, ...
                self._give_up("could not start a wandb run", error)
        return self._run is not None

    def _give_up(self, what: str, error: Exception) -> None:
        self._failed = True
        _warn(f"LOG.WANDB: {what} ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
              "logging to tensorboard only from here on")

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if not self._start():
            return
        axis = "global_step" if tag.startswith(STEP_TAG_PREFIXES) else "epoch"
        try:
            if tag not in self._defined:
                summary = "max" if tag in MAX_SUMMARY_TAGS else None
                self._run.define_metric(tag, step_metric=axis, summary=summary)
                self._defined.add(tag)
            pending = self._pending.get(axis)
            if pending is not None and pending[0] != int(step):
                self._log(axis)
            self._pending.setdefault(axis, (int(step), {}))[1][tag] = float(value)
        except Exception as error:
            self._give_up("logging failed", error)

    def _log(self, axis: str) -> None:
        step, row = self._pending.pop(axis)
        self._run.log({**row, axis: step})

    def flush(self) -> None:
        if self._run is None or self._failed:
            return
        try:
            for axis in list(self._pending):
                self._log(axis)
        except Exception as error:
            self._give_up("logging failed", error)

    def close(self) -> None:
        self.flush()
        self._closed = True
        if self._run is not None:
            run, self._run = self._run, None
            try:
                run.finish()
            except Exception as error:
                self._give_up("finishing the run failed", error)
