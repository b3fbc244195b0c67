"""Undo what a skipped training step did to the model's buffers.

A training-mode forward changes buffers before the loss is known: every BatchNorm's
`running_mean`, `running_var` and `num_batches_tracked`, and a method's own state, such as
CRD's memory rows of the batch's samples and its normalisation constants. When that loss
turns out NaN or infinite and the step is skipped (`SOLVER.NAN_POLICY skip`), one NaN batch
is enough to leave the running statistics NaN for good (the evaluated model at chance) and
NaN memory rows that make every later CRD loss NaN. So the trainer copies, before each
forward, what a forward may change, as cheaply as that can be done exactly:

- normalisation statistics and small buffers (at most `SMALL_NUMEL` elements): in full, one
  `cat` per dtype and device over flat views made once;
- per-sample buffers (first dimension = the training set's size, e.g. CRD's memories): the
  rows of the batch's dataset indices (all ranks' under DDP);
- any other buffer is not copied; `restore()` names those whose content changed anyway.
"""
from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _NormBase

from kdharness.engine import distributed

SMALL_NUMEL = 1024


def running_stat_buffers(module: nn.Module) -> list[torch.Tensor]:
    """Every normalisation buffer that a training-mode forward of `module` may change."""
    buffers = []
    for layer in module.modules():
        if isinstance(layer, _NormBase) and layer.track_running_stats:
            buffers += [b for b in (layer.running_mean, layer.running_var, layer.num_batches_tracked) if b is not None]
    return buffers


class StepStateSnapshot:
    """`take(index)` before a forward; `restore()` puts the buffers back as they were.

    Views and buffer lists are made once: build it after the model is on its device
    (checkpoints load in place, so the views stay valid).
    """

    def __init__(self, module: nn.Module, num_samples: int = 0) -> None:
        norm = {id(b) for b in running_stat_buffers(module)}
        groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = defaultdict(list)
        self._per_sample: list[tuple[str, torch.Tensor]] = []
        self._untracked: list[tuple[str, torch.Tensor]] = []
        for name, buffer in module.named_buffers():
            if not buffer.is_contiguous():
                self._untracked.append((name, buffer))  # no flat view of it to copy into
            elif id(buffer) in norm or buffer.numel() <= SMALL_NUMEL:
                groups[(buffer.dtype, buffer.device)].append(buffer.view(-1))  # a view: sees every update
            elif num_samples and buffer.dim() >= 1 and buffer.shape[0] == num_samples:
                self._per_sample.append((name, buffer))
            else:
                self._untracked.append((name, buffer))
        self._groups = list(groups.values())
        self._sizes = [[view.numel() for view in group] for group in self._groups]
        self._saved: list[torch.Tensor] | None = None
        self._rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._watched: list[tuple[str, torch.Tensor, int]] = []

    def take(self, index: torch.Tensor | None = None) -> None:
        """Copy what this step's forward may change; `index`: the batch's dataset indices."""
        with torch.no_grad():
            self._saved = [torch.cat(group) for group in self._groups]
            self._rows = []
            watched = list(self._untracked)
            if self._per_sample and index is None:
                watched += self._per_sample  # no rows to copy: only notice a change
            elif self._per_sample:
                rows = distributed.all_gather_batch(index.reshape(-1).long())  # CRD takes in every rank's batch
                for _, buffer in self._per_sample:
                    where = rows.to(buffer.device)
                    self._rows.append((buffer, where, buffer.index_select(0, where)))
        self._watched = [(name, buffer, buffer._version) for name, buffer in watched]

    def restore(self) -> list[str]:
        """Put the copied buffers back; returns the names of changed buffers that were not copied."""
        if self._saved is None:
            raise RuntimeError("StepStateSnapshot.restore() before take()")
        with torch.no_grad():
            for group, sizes, flat in zip(self._groups, self._sizes, self._saved):
                for view, value in zip(group, flat.split(sizes)):
                    view.copy_(value)
            for buffer, where, values in self._rows:
                buffer.index_copy_(0, where, values)
        return [name for name, buffer, version in self._watched if buffer._version != version]
