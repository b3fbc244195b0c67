"""OFD: Heo et al., "A Comprehensive Overhaul of Feature Distillation" (ICCV 2019), as in mdistiller.

The student's pre-ReLU stage features go through a connector (conv + BN) to the teacher's
width and are matched to the teacher's pre-ReLU features with a *partial* L2: where the
teacher is negative, the ReLU that follows would erase any difference below the teacher's
value, so only a student value above it is penalised; and very negative teacher values are
replaced by a per-channel margin, the expected teacher value given that it is negative,
``E[x | x < 0]`` for ``x ~ N(beta, gamma^2)`` of the teacher BN that precedes the ReLU.

What mdistiller does and we keep, so that losses and checkpoints match:

- the margins are computed once, at construction, from the (already loaded) teacher; they
  are not in the ``state_dict`` (a non-persistent buffer here, a plain list there);
- state_dict keys ``connectors.connectors.<i>.0.weight`` (conv), ``...<i>.1.*`` (BN);
- the teacher runs in training mode during training (its BN uses batch statistics and
  updates its running statistics), as in the paper's code and mdistiller's ``OFD.train``;
- stage ``i`` of ``n`` is weighted ``1 / 2^(n - i - 1)``; the teacher map is average-pooled
  to the student's size.

Ours: stages are paired from the deepest one back, over as many as the student's and the
teacher's stage lists and the teacher's BN list all have; where they have the same length
(every pair mdistiller can run) this is mdistiller's pairing, elsewhere (e.g. ResNet50 ->
MobileNetV2) mdistiller indexes past a list's end and we train.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdharness.distillers._base import FeatureDistiller
from kdharness.distillers._numerics import float32_loss
from kdharness.registry import register_distiller

# Below this probability of a negative teacher value the conditional mean is numerically
# meaningless; the margin is then -3 sigma (mdistiller's threshold and fallback).
_MIN_NEGATIVE_PROBABILITY = 1e-3


def ofd_margin(gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Per-channel ``E[x | x < 0]`` for ``x ~ N(beta, |gamma|^2)``, in float64.

    ``E[x | x < 0] = beta - s * phi(beta / s) / Phi(-beta / s)`` with ``s = |gamma|``, ``phi``/``Phi``
    the standard normal pdf/cdf; ``-3 s`` where ``Phi(-beta / s) <= 1e-3``.
    """
    s = gamma.detach().double().abs()
    m = beta.detach().double()
    z = m / s
    p_negative = 0.5 * torch.erfc(z / math.sqrt(2.0))  # Phi(-z)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    conditional = m - s * pdf / p_negative
    return torch.where(p_negative > _MIN_NEGATIVE_PROBABILITY, conditional, -3.0 * s)


@float32_loss
def ofd_feature_loss(student: torch.Tensor, teacher: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Partial L2 between ``[B, C, H, W]`` maps, averaged over the batch and summed over the rest.

    With ``t' = max(t, margin)``: ``(s - t)^2`` where ``t > 0``; else ``(s - t')^2`` where
    ``s > t'``; else 0. ``margin`` broadcasts per channel (``[1, C, 1, 1]``).
    """
    margin = margin.to(student)
    floor = torch.maximum(teacher, margin)
    positive = teacher > 0
    err = torch.where(positive, student - teacher, student - floor)
    penalised = positive | (student > floor)
    return torch.where(penalised, err * err, torch.zeros_like(err)).mean(dim=0).sum()


class Connectors(nn.Module):
    """One ``conv(k x k) -> BN`` per stage from the student's width to the teacher's.

    A module of its own so that keys read ``connectors.connectors.<i>...`` as in mdistiller.
    """

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], kernel_size: int = 1) -> None:
        super().__init__()
        self.connectors = nn.ModuleList(
            self._connector(s, t, kernel_size) for s, t in zip(student_channels, teacher_channels)
        )

    @staticmethod
    def _connector(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=(kernel_size - 1) // 2, bias=False)
        # He-normal on fan-out, as mdistiller; BN starts as the identity.
        conv.weight.data.normal_(0.0, math.sqrt(2.0 / (kernel_size * kernel_size * out_channels)))
        bn = nn.BatchNorm2d(out_channels)
        return nn.Sequential(conv, bn)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [connector(f) for connector, f in zip(self.connectors, feats)]


@register_distiller("OFD")
class OFD(FeatureDistiller):
    """Cross-entropy plus the margin-aware partial L2 on connected pre-ReLU stage features."""

    extra_modules = ("connectors",)

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg, "OFD")
        kernel_size = int(cfg.OFD.CONNECTOR.KERNEL_SIZE)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"OFD.CONNECTOR.KERNEL_SIZE = {kernel_size}; expected an odd number >= 1")
        student_channels = list(student.get_stage_channels()[1:])
        teacher_channels = list(teacher.get_stage_channels()[1:])
        bns = list(teacher.get_bn_before_relu())
        self.num_stages = min(len(student_channels), len(teacher_channels), len(bns))
        n = self.num_stages
        self.connectors = Connectors(student_channels[-n:], teacher_channels[-n:], kernel_size)
        margins = [ofd_margin(bn.weight, bn.bias).float().view(1, -1, 1, 1) for bn in bns[-n:]]
        for i, margin in enumerate(margins):
            self.register_buffer(f"margin_{i}", margin, persistent=False)

    @property
    def margins(self) -> list[torch.Tensor]:
        return [getattr(self, f"margin_{i}") for i in range(self.num_stages)]

    def train(self, mode: bool = True) -> "OFD":
        # mdistiller's OFD leaves the teacher in training mode too (see the module docstring).
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.training = mode
        for module in self.children():
            module.train(mode)
        return self

    def ofd_loss(self, feats_student: Sequence[torch.Tensor], feats_teacher: Sequence[torch.Tensor]) -> torch.Tensor:
        """Sum over the last ``num_stages`` stages of ``ofd_feature_loss / 2^(n - i - 1)``."""
        n = self.num_stages
        feats_student, feats_teacher = list(feats_student)[-n:], list(feats_teacher)[-n:]
        total = feats_student[0].new_zeros(())
        for i, (connector, f_s, f_t, margin) in enumerate(
            zip(self.connectors.connectors, feats_student, feats_teacher, self.margins)
        ):
            expected = connector[0].in_channels
            if f_s.shape[1] != expected or f_t.shape[1] != margin.shape[1]:
                raise ValueError(
                    f"OFD stage {i}: student feature has {f_s.shape[1]} channels (connector expects "
                    f"{expected}), teacher feature {f_t.shape[1]} (its BN has {margin.shape[1]}); the "
                    "models' get_stage_channels() disagree with their features"
                )
            connected = connector(f_s)
            target = F.adaptive_avg_pool2d(f_t, connected.shape[-2:]).detach()
            total = total + ofd_feature_loss(connected, target, margin) / 2 ** (n - i - 1)
        return total

    def feature_loss(self, feats_student: dict[str, Any], feats_teacher: dict[str, Any], **kwargs: Any) -> torch.Tensor:
        return self.ofd_loss(feats_student["preact_feats"][1:], feats_teacher["preact_feats"][1:])
