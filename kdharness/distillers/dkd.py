"""DKD: Zhao et al., "Decoupled Knowledge Distillation" (CVPR 2022).

Classical KD is split into two terms that the paper shows are coupled in the KD loss:

* TCKD (target-class KD): KL between the binary distributions
  ``[p_gt, 1 - p_gt]`` of teacher and student, i.e. "how sure is the model of the label";
* NCKD (non-target-class KD): KL between the distributions over the non-target classes
  only, renormalised among themselves, i.e. "how does the model rank the wrong classes".

KD weights NCKD by ``1 - p_gt(teacher)``, which suppresses it exactly when the teacher is
confident; DKD weights the two terms freely: ``alpha * TCKD + beta * NCKD``. The numbers
follow mdistiller: both KLs summed over all entries, divided by the batch size, times T^2,
and the target class is removed from NCKD by subtracting 1000 from its logit before the
softmax (``exp(-1000)`` is exactly 0 in float32, so this equals dropping the class).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdharness.distillers._base import Distiller, require_teacher
from kdharness.registry import register_distiller

# mdistiller's constant: large enough that the masked class gets probability exactly 0.
GT_MASK_OFFSET = 1000.0


def _gt_mask(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Boolean [B, C] mask, True at each sample's label."""
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(1, target.reshape(-1, 1), True)


def _binary_split(probs: torch.Tensor, gt_mask: torch.Tensor) -> torch.Tensor:
    """[B, C] class probabilities -> [B, 2] = (p_target, p_all_other_classes)."""
    p_target = (probs * gt_mask).sum(dim=1, keepdim=True)
    p_other = (probs * ~gt_mask).sum(dim=1, keepdim=True)
    return torch.cat([p_target, p_other], dim=1)


def tckd_loss(
    logits_student: torch.Tensor, logits_teacher: torch.Tensor, target: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Target-class term: ``T^2 / B * sum_b KL(b_teacher || b_student)`` over binary distributions."""
    gt_mask = _gt_mask(logits_student, target)
    p_student = _binary_split(F.softmax(logits_student.float() / temperature, dim=1), gt_mask)
    p_teacher = _binary_split(F.softmax(logits_teacher.float() / temperature, dim=1), gt_mask)
    kl = F.kl_div(torch.log(p_student), p_teacher, reduction="sum")
    return kl * temperature**2 / target.shape[0]


def nckd_loss(
    logits_student: torch.Tensor, logits_teacher: torch.Tensor, target: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Non-target term: KL between the distributions over the wrong classes, as in tckd_loss' scaling."""
    offset = GT_MASK_OFFSET * _gt_mask(logits_student, target)
    p_teacher = F.softmax(logits_teacher.float() / temperature - offset, dim=1)
    log_p_student = F.log_softmax(logits_student.float() / temperature - offset, dim=1)
    kl = F.kl_div(log_p_student, p_teacher, reduction="sum")
    return kl * temperature**2 / target.shape[0]


def dkd_loss(
    logits_student: torch.Tensor,
    logits_teacher: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    temperature: float,
) -> torch.Tensor:
    """``alpha * TCKD + beta * NCKD`` (mdistiller's ``dkd_loss``, same argument order)."""
    return alpha * tckd_loss(logits_student, logits_teacher, target, temperature) + beta * nckd_loss(
        logits_student, logits_teacher, target, temperature
    )


def warmup_factor(epoch: float, warmup: float) -> float:
    """Linear ramp ``min(epoch / warmup, 1)``; DKD's large beta destabilises the first epochs.

    mdistiller counts epochs from 1, so with WARMUP = 20 the first epoch uses 1/20 of the
    loss. ``warmup <= 0`` switches the ramp off.
    """
    if warmup <= 0:
        return 1.0
    return min(epoch / warmup, 1.0)


@register_distiller("DKD")
class DKD(Distiller):
    """Cross-entropy plus the warmed-up decoupled KD loss against the frozen teacher."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, require_teacher(teacher, "DKD"), cfg)
        self.ce_loss_weight = float(cfg.DKD.CE_WEIGHT)
        self.alpha = float(cfg.DKD.ALPHA)
        self.beta = float(cfg.DKD.BETA)
        self.temperature = float(cfg.DKD.T)
        self.warmup = float(cfg.DKD.WARMUP)

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, **kwargs: Any):
        epoch = kwargs.get("epoch")
        if epoch is None and self.warmup > 0:
            raise ValueError(
                f"DKD ramps its loss over DKD.WARMUP = {self.warmup:g} epochs and needs the current "
                "epoch: call distiller(image=..., target=..., epoch=...) (or set DKD.WARMUP 0)"
            )
        logits_student, _ = self.student(image)
        with torch.no_grad():
            logits_teacher, _ = self.teacher(image)
        loss_ce = self.ce_loss_weight * self.ce_loss(logits_student, target)
        loss_dkd = warmup_factor(epoch if epoch is not None else 0, self.warmup) * dkd_loss(
            logits_student, logits_teacher, target, self.alpha, self.beta, self.temperature
        )
        return logits_student, {"loss_ce": loss_ce, "loss_kd": loss_dkd}
