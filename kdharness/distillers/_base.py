"""The mdistiller `Distiller` protocol, kept exactly so mdistiller's distillers port unchanged.

A distiller owns the student and the teacher. The trainer only ever calls
``distiller(image=..., target=..., index=..., epoch=...)`` in training mode, which returns
``(student_logits, {loss_name: loss})``, and ``distiller(image=...)`` in eval mode, which
returns the student's logits. The trainer sums the loss dict and logs every entry, so a
new method never touches the trainer.
"""
from __future__ import annotations

from functools import reduce
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdharness.config import CLASSIFICATION, IGNORE_INDEX, SEGMENTATION, is_segmentation

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


def config_task(cfg: Any) -> str:
    """``DATASET.TASK`` of a config (classification for mdistiller's, which lack the key)."""
    return SEGMENTATION if cfg is not None and is_segmentation(cfg) else CLASSIFICATION


def check_task(cls: type, cfg: Any, method: str | None = None) -> None:
    """ValueError naming ``DATASET.TASK`` unless the distiller class declares the config's task
    in its ``tasks`` (a class without the attribute, a plugin's, is not restricted)."""
    tasks = getattr(cls, "tasks", None)
    task = config_task(cfg)
    if tasks is not None and task not in tasks:
        name = method or cls.__name__
        raise ValueError(
            f"DISTILLER.TYPE {name} is for {' and '.join(tasks)}; DATASET.TASK = {task!r}. "
            + ("Segmentation's distillers: NONE, KD, PIXEL_KD, CWD" if task == SEGMENTATION
               else "Use it with DATASET.TASK segmentation (and KD for classification)")
        )


def require_teacher(teacher: nn.Module | None, method: str) -> nn.Module:
    """Fail at construction, not on the first batch, when a method that needs a teacher has none."""
    if teacher is None:
        raise ValueError(
            f"{method} distils from a teacher, but none was given; set DISTILLER.TEACHER "
            f"(and DISTILLER.TEACHER_WEIGHTS if the checkpoint is not in mdistiller's layout)"
        )
    return teacher


class Distiller(nn.Module):
    """Base class: student + frozen teacher; subclasses implement `forward_train`.

    `cfg` (optional, so mdistiller's two-argument form still works) gives every method's
    cross-entropy on the labels its ``SOLVER.LABEL_SMOOTHING``, and, for a segmentation
    config (``DATASET.TASK``), its per-pixel form without the pixels labelled
    ``IGNORE_INDEX``: `ce_loss` is the one place where a distiller's CE term is computed.
    """

    # The tasks (DATASET.TASK) the method trains: refused for the others, when the config is
    # loaded and when the distiller is built. mdistiller's methods are written for logits
    # [B, C] and pooled features: classification only, unless a method says more.
    tasks: ClassVar[tuple[str, ...]] = (CLASSIFICATION,)

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: Any = None) -> None:
        super().__init__()
        if cfg is not None:
            check_task(type(self), cfg)
        self.student = student
        self.teacher = teacher
        self.label_smoothing = label_smoothing(cfg)
        self.segmentation = config_task(cfg) == SEGMENTATION

    def ce_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on the labels, smoothed by ``SOLVER.LABEL_SMOOTHING`` (0: the plain one).

        Segmentation: logits ``[B, C, H, W]``, masks ``[B, H, W]``; the mean over the labelled
        pixels (0, not NaN, for a batch without any: a crop that fell on ignored pixels only).
        """
        if not self.segmentation:
            return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        total = F.cross_entropy(
            logits, target, ignore_index=IGNORE_INDEX, label_smoothing=self.label_smoothing, reduction="sum"
        )
        return total / (target != IGNORE_INDEX).sum().clamp(min=1)

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

    tasks = (CLASSIFICATION, SEGMENTATION)

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, cfg: Any = None) -> None:
        super().__init__(student, None, cfg)

    @classmethod
    def teacher_requirement(cls, cfg: Any) -> str:
        return TEACHER_NONE

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, **kwargs: Any):
        logits_student, _ = self.student(image)
        return logits_student, {"loss_ce": self.ce_loss(logits_student, target)}


class FeatureDistiller(Distiller):
    """A method whose loss is ``CE weight * CE + feature weight * feature_loss(student, teacher)``.

    mdistiller's feature distillers (FitNet, AT, NST, PKT, SP, RKD, KDSVD, OFD, VID, ReviewKD)
    and CRD share everything but their feature loss: a teacher is required, the two weights
    are read from the method's node (``<NODE>.LOSS.CE_WEIGHT``, ``<NODE>.LOSS.FEAT_WEIGHT``;
    ReviewKD keeps mdistiller's ``REVIEWKD.CE_WEIGHT`` / ``REVIEWKD_WEIGHT``), both networks
    run once per step (the teacher without gradients), and the loss dict is
    ``{"loss_ce", "loss_kd"}``. A method writes its constructor (what it reads and builds
    beyond that), `feature_loss` (unweighted) and, when it trains modules beside the student
    (regressors, connectors, embeddings), their attribute names in ``extra_modules``: the
    optimizer gets their parameters, and the start-up report counts them.
    """

    extra_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        cfg: Any,
        node: str,
        ce_weight: str = "LOSS.CE_WEIGHT",
        feat_weight: str = "LOSS.FEAT_WEIGHT",
    ) -> None:
        """``node``: the method's config node, also its name in errors (``"AT"``); ``ce_weight`` and
        ``feat_weight``: the weights' keys under it."""
        super().__init__(student, require_teacher(teacher, node), cfg)
        method = getattr(cfg, node)
        self.ce_loss_weight = float(reduce(getattr, ce_weight.split("."), method))
        self.feat_loss_weight = float(reduce(getattr, feat_weight.split("."), method))

    def get_learnable_parameters(self) -> list[nn.Parameter]:
        return super().get_learnable_parameters() + [p for module in self._extra() for p in module.parameters()]

    def get_extra_parameters(self) -> int:
        return sum(p.numel() for module in self._extra() for p in module.parameters())

    def _extra(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.extra_modules]

    def feature_loss(self, feats_student: dict[str, Any], feats_teacher: dict[str, Any], **kwargs: Any) -> torch.Tensor:
        """The method's loss, unweighted, from the two networks' feature dicts (and the batch's
        other inputs, e.g. CRD's ``index``)."""
        raise NotImplementedError

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, **kwargs: Any):
        logits_student, feats_student = self.student(image)
        with torch.no_grad():
            _, feats_teacher = self.teacher(image)
        loss_ce = self.ce_loss_weight * self.ce_loss(logits_student, target)
        loss_feat = self.feat_loss_weight * self.feature_loss(feats_student, feats_teacher, **kwargs)
        return logits_student, {"loss_ce": loss_ce, "loss_kd": loss_feat}
