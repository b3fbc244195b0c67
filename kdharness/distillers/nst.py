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

from kdharness.distillers._base import FeatureDistiller
from kdharness.distillers._numerics import float32_loss
from kdharness.distillers.at import match_spatial_size
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
class NST(FeatureDistiller):
    """Cross-entropy plus ``NST.LOSS.FEAT_WEIGHT * nst_loss(student stages, teacher stages)``."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg, "NST")

    def feature_loss(self, feats_student: dict[str, Any], feats_teacher: dict[str, Any], **kwargs: Any) -> torch.Tensor:
        return nst_loss(feats_student["feats"][1:], feats_teacher["feats"][1:])
