"""Logs whatever diagnostics a distiller offers, without knowing the distiller.

Contract (docs/architecture.md): a distiller may define ``diagnostics() -> dict[str, float]``,
the detached scalars of its last training step (ICKD: the in-context terms against the base
loss, retrieval similarities, the share of active NICD pairs). They are not losses, so they
never go in the loss dict, which the trainer sums. The trainer asks after every applied
step, writes them to tensorboard as ``diagnostics/<name>`` with the loss terms, and keeps a
running mean per epoch that goes into the epoch's ``history`` entry of summary.json as
``"diagnostics": {name: mean}``; mid-epoch checkpoints carry the running sums, so a resumed
epoch reports the same means as an uninterrupted one.
"""
from __future__ import annotations

from typing import Any, Callable

from kdharness.engine.utils import AverageMeter

TAG = "diagnostics"


class DiagnosticsLog:
    """Per-epoch running means of ``distiller.diagnostics()``; does nothing for a distiller without it."""

    def __init__(self, distiller: Any) -> None:
        source = getattr(distiller, "diagnostics", None)
        self._source: Callable[[], dict[str, float]] | None = source if callable(source) else None
        self._meters: dict[str, AverageMeter] = {}
        self._last: dict[str, float] = {}

    def reset(self) -> None:
        """Start a new epoch's means."""
        self._meters = {}
        self._last = {}

    def record(self) -> None:
        """Read the distiller's diagnostics of the step just applied."""
        if self._source is None:
            return
        self._last = {str(name): float(value) for name, value in self._source().items()}
        for name, value in self._last.items():
            self._meters.setdefault(name, AverageMeter()).update(value)

    def write_step(self, writer: Any, step: int) -> None:
        """The last step's values to tensorboard, beside the loss terms."""
        for name, value in self._last.items():
            writer.add_scalar(f"{TAG}/{name}", value, step)

    def epoch_means(self) -> dict[str, float]:
        return {name: meter.avg for name, meter in self._meters.items()}

    def history_entry(self) -> dict[str, dict[str, float]]:
        """``{"diagnostics": {name: epoch mean}}`` to merge into an epoch's history entry ({} if none)."""
        means = self.epoch_means()
        return {TAG: means} if means else {}

    def write_epoch(self, writer: Any, epoch: int) -> None:
        for name, value in self.epoch_means().items():
            writer.add_scalar(f"{TAG}_epoch/{name}", value, epoch)

    def state_dict(self) -> dict[str, dict[str, float]]:
        """The epoch's running sums, saved in mid-epoch checkpoints so a resumed epoch has the same means."""
        return {name: meter.state_dict() for name, meter in self._meters.items()}

    def load_state_dict(self, state: dict[str, dict[str, float]]) -> None:
        self._meters = {}
        for name, meter_state in state.items():
            self._meters[name] = AverageMeter()
            self._meters[name].load_state_dict(meter_state)
