"""Undo what a skipped training step did to the normalisation layers' running statistics.

A training-mode forward updates every BatchNorm's `running_mean`, `running_var` and
`num_batches_tracked` before the loss is known. When that loss turns out NaN or infinite
and the step is skipped (`SOLVER.NAN_POLICY skip`), one NaN batch mean is enough to leave
the running statistics NaN for good, and the evaluated model at chance. These buffers are
small (two floats per channel), so the trainer copies them before each forward (one `cat`
per dtype and device, over flat views made once) and copies them back when it skips the
step; the copy is exact. The views stay valid because checkpoints load in place; build the
snapshot after the model has been moved to its device.
"""
from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _NormBase


def running_stat_buffers(module: nn.Module) -> list[torch.Tensor]:
    """Every normalisation buffer that a training-mode forward of `module` may change."""
    buffers = []
    for layer in module.modules():
        if isinstance(layer, _NormBase) and layer.track_running_stats:
            buffers += [b for b in (layer.running_mean, layer.running_var, layer.num_batches_tracked) if b is not None]
    return buffers


class RunningStatsSnapshot:
    """`take()` before a forward, `restore()` to put the running statistics back as they were."""

    def __init__(self, module: nn.Module) -> None:
        groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = defaultdict(list)
        for buffer in running_stat_buffers(module):
            groups[(buffer.dtype, buffer.device)].append(buffer.view(-1))  # a view: sees every update
        self._groups = list(groups.values())
        self._sizes = [[view.numel() for view in group] for group in self._groups]
        self._saved: list[torch.Tensor] = []

    def take(self) -> None:
        with torch.no_grad():
            self._saved = [torch.cat(group) for group in self._groups]

    def restore(self) -> None:
        if len(self._saved) != len(self._groups):
            raise RuntimeError("RunningStatsSnapshot.restore() before take()")
        with torch.no_grad():
            for group, sizes, flat in zip(self._groups, self._sizes, self._saved):
                for view, value in zip(group, flat.split(sizes)):
                    view.copy_(value)
