"""The run's scalar logs: tensorboard events always, Weights & Biases too with ``LOG.WANDB``.

The trainer's ``tf_writer`` is a `ScalarLog`: ``add_scalar(tag, value, step)``, ``flush()``,
``close()``, as tensorboardX's SummaryWriter, for the scalars the trainer logs (loss terms and
diagnostics per step, metrics and the learning rate per epoch).

The events are written here, in the caller's thread, in tensorboardX's own format (one
``Event`` holding a scalar ``Summary`` per record). tensorboardX's SummaryWriter writes from a
background thread instead: on a full disk that thread dies with a traceback of its own and
the writer's queue fills, so the next ``add_scalar`` blocks and the run hangs. Here a failed
write raises `io_errors.RunWriteError` naming the events file, which ``tools/train.py``
prints as one ``error:`` line.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Any

from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import RecordWriter
from tensorboardX.summary import scalar

from kdharness.engine.io_errors import writing
from kdharness.engine.utils import log_msg


class TensorboardScalars:
    """Scalars to ``<logdir>/events.out.tfevents.<time>.<host>``, written synchronously."""

    def __init__(self, logdir: str) -> None:
        self.logdir = logdir
        self._records: RecordWriter | None = None
        self.path = ""
        self._open()

    def _open(self) -> None:
        self.path = os.path.join(self.logdir, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}")
        with writing(self.path):
            os.makedirs(self.logdir, exist_ok=True)
            self._records = RecordWriter(self.path)
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: Any) -> None:
        with writing(self.path):
            self._records.write(event.SerializeToString())

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._write(event_pb2.Event(summary=scalar(tag, float(value)), wall_time=time.time(), step=int(step)))

    def flush(self) -> None:
        """Write the buffered records and fsync the file."""
        if self._records is not None:
            with writing(self.path):
                self._records.flush()

    def close(self) -> None:
        if self._records is not None:
            records, self._records = self._records, None
            with writing(self.path):
                records.flush()
                records.close()

    def reopen(self) -> None:
        """Continue in a new events file (the old one was moved away with an earlier run)."""
        self.close()
        self._open()


class ScalarLog:
    """Every scalar to tensorboard and to the optional mirrors (wandb); ``reopen`` is tensorboard's alone."""

    def __init__(self, tensorboard: TensorboardScalars, mirrors: list[Any] | None = None) -> None:
        self.tensorboard = tensorboard
        self.mirrors = list(mirrors or [])

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.tensorboard.add_scalar(tag, value, step)
        for mirror in self.mirrors:
            mirror.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.tensorboard.flush()
        for mirror in self.mirrors:
            mirror.flush()

    def close(self) -> None:
        """Close every log. Closing also runs on the way out of a failed run, so a failed last
        write of the events is a warning, not an error hiding the one that ended the run; the
        events up to the last `flush` (each epoch's end) are on disk."""
        try:
            self.tensorboard.close()
        except OSError as error:
            print(log_msg(f"{error}; the tensorboard events up to the last epoch are on disk", "WARN"), flush=True)
        for mirror in self.mirrors:
            mirror.close()

    def reopen(self) -> None:
        self.tensorboard.reopen()


def open_scalar_log(log_path: str, cfg: Any, experiment_name: str) -> ScalarLog:
    """Tensorboard events in ``<log_path>/train.events``, plus wandb when ``cfg.LOG.WANDB`` is set
    and wandb can be used (else one warning line and tensorboard only)."""
    mirrors = []
    if cfg.LOG.get("WANDB", False):
        from kdharness.engine.wandb_log import open_wandb

        mirror = open_wandb(cfg, experiment_name, log_path)
        if mirror is not None:
            mirrors.append(mirror)
    return ScalarLog(TensorboardScalars(os.path.join(log_path, "train.events")), mirrors)
