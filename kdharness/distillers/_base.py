"""The mdistiller `Distiller` protocol, kept exactly so mdistiller's distillers port unchanged.

A distiller owns the student and the teacher. The trainer only ever calls
``distiller(image=..., target=..., index=..., epoch=...)`` in training mode, which returns
``(student_logits, {loss_name: loss})``, and ``distiller(image=...)`` in eval mode, which
returns the student's logits. The trainer sums the loss dict and logs every entry, so a
new method never touches the trainer.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

# What a distiller needs from the harness before it is built. `tools/train.py` reads this
# class attribute (or the classmethod of the same name) to decide whether to load teacher
# weights, build an untrained teacher, or build none at all.
TEACHER_PRETRAINED = "pretrained"
TEACHER_SCRATCH = "scratch"
TEACHER_NONE = "none"


def label_smoothing(cfg: Any) -> float:
    """``SOLVER.LABEL_SMOOTHING`` of a config, 0 for one without the key (mdistiller's)."""
    solver = getattr(cfg, "SOLVER", None) if cfg is not None else None
    return float(solver.get("LABEL_SMOOTHING", 0.0)) if solver is not None else 0.0


class Distiller(nn.Module):
    """Base class: student + frozen teacher; subclasses implement `forward_train`.

    `cfg` (optional, so mdistiller's two-argument form still works) gives every method's
    cross-entropy on the labels its ``SOLVER.LABEL_SMOOTHING``: `ce_loss` is the one place
    where a distiller's CE term is computed.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: Any = None) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.label_smoothing = label_smoothing(cfg)

    def ce_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on the labels, smoothed by ``SOLVER.LABEL_SMOOTHING`` (0: the plain one)."""
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)

    @classmethod
    def teacher_requirement(cls, cfg: Any) -> str:
        """One of TEACHER_PRETRAINED, TEACHER_SCRATCH, TEACHER_NONE."""
        return TEACHER_PRETRAINED

    def train(self, mode: bool = True) -> "Distiller":
        # The teacher stays in eval mode: its BatchNorm statistics must not drift.
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.training = mode
        for module in self.children():
            module.train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def get_learnable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates; methods with extra modules extend this."""
        return [v for _, v in self.student.named_parameters()]

    def get_extra_parameters(self) -> int:
        """Number of parameters the method adds beyond the student (reported at start)."""
        return 0

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, **kwargs: Any):
        raise NotImplementedError

    def forward_test(self, image: torch.Tensor) -> torch.Tensor:
        return self.student(image)[0]

    def forward(self, **kwargs: Any):
        if self.training:
            return self.forward_train(**kwargs)
        return self.forward_test(kwargs["image"])


class Vanilla(Distiller):
    """Student trained with cross-entropy alone (mdistiller's "NONE"); no teacher is built."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, cfg: Any = None) -> None:
        super().__init__(student, None, cfg)

    @classmethod
    def teacher_requirement(cls, cfg: Any) -> str:
        return TEACHER_NONE

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, **kwargs: Any):
        logits_student, _ = self.student(image)
        return logits_student, {"loss_ce": self.ce_loss(logits_student, target)}
