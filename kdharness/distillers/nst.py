"""NST: Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer" (2017).

Each channel's spatial activation map is one sample of the network's "neuron selectivity"
distribution; NST matches the student's and teacher's distributions with the squared
maximum mean discrepancy under the degree-2 polynomial kernel ``k(x, y) = (x . y)^2``:

    MMD^2 = mean_{i,j} k(t_i, t_j) + mean_{i,j} k(s_i, s_j) - 2 mean_{i,j} k(s_i, t_j)

where ``s_i`` / ``t_j`` are the per-channel maps, each L2-normalised over its positions,
and every mean runs over the batch and all channel pairs (so the two networks may have
different channel counts). As in mdistiller: stages ``feats["feats"][1:]``, the larger
map pooled to the smaller's size (as AT), and the per-stage values summed.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdharness.distillers._base import Distiller
from kdharness.distillers._numerics import float32_loss
from kdharness.distillers.at import match_spatial_size
from kdharness.distillers.kd import require_teacher
from kdharness.registry import register_distiller


def poly2_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean_{batch, i, j} (a_i . b_j)^2`` for ``a: [B, Ca, N]``, ``b: [B, Cb, N]``."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


@float32_loss
def nst_stage_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Squared MMD between the channels' normalised maps of one stage."""
    f_s, f_t = match_spatial_size(f_s, f_t)
    s = F.normalize(f_s.reshape(f_s.shape[0], f_s.shape[1], -1), p=2, dim=2)
    t = F.normalize(f_t.reshape(f_t.shape[0], f_t.shape[1], -1), p=2, dim=2)
    # The teacher-teacher term is a constant for the student: detached.
    return poly2_kernel_mean(t, t).detach() + poly2_kernel_mean(s, s) - 2 * poly2_kernel_mean(s, t)


def nst_loss(g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of ``nst_stage_loss`` over the paired stages."""
    return sum(nst_stage_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t))  # type: ignore[return-value]


@register_distiller("NST")
class NST(Distiller):
    """Cross-entropy plus ``NST.LOSS.FEAT_WEIGHT * nst_loss(student stages, teacher stages)``."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, require_teacher(teacher, "NST"), cfg)
        self.ce_loss_weight = float(cfg.NST.LOSS.CE_WEIGHT)
        self.feat_loss_weight = float(cfg.NST.LOSS.FEAT_WEIGHT)

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, **kwargs: Any):
        logits_student, feats_student = self.student(image)
        with torch.no_grad():
            _, feats_teacher = self.teacher(image)
        loss_ce = self.ce_loss_weight * self.ce_loss(logits_student, target)
        loss_feat = self.feat_loss_weight * nst_loss(feats_student["feats"][1:], feats_teacher["feats"][1:])
        return logits_student, {"loss_ce": loss_ce, "loss_kd": loss_feat}
