"""PKT: Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer" (ECCV 2018).

The pooled features of a batch define, for each sample ``i``, a conditional distribution
over the other samples ``j`` from a cosine-similarity kernel rescaled to ``[0, 1]``:

    p_{j|i} = (1 + cos(f_i, f_j)) / 2  /  sum_j (1 + cos(f_i, f_j)) / 2

(the sum includes ``j = i``, as in the authors' and mdistiller's code). The student
matches the teacher's distributions with ``KL(p_teacher || p_student)``, averaged (not
summed) over all ``B x B`` entries, hence mdistiller's large ``PKT.LOSS.FEAT_WEIGHT``
(30000). Constants follow mdistiller: ``eps = 1e-7`` added to each norm and inside both
logarithm arguments; a NaN coordinate after normalisation is replaced by 0. One
difference: an all-zero feature row has a finite gradient here (NaN in mdistiller).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from kdharness.distillers._base import FeatureDistiller
from kdharness.distillers._numerics import float32_loss
from kdharness.registry import register_distiller

PKT_EPS = 1e-7  # mdistiller's guard in the norms and the logarithm


def cosine_conditional(feat: torch.Tensor, eps: float = PKT_EPS) -> torch.Tensor:
    """``[B, D]`` features -> ``[B, B]`` rows ``p_{.|i}`` from the rescaled cosine kernel."""
    squared_norm = feat.pow(2).sum(dim=1, keepdim=True)
    # sqrt(0) has an infinite derivative: an all-zero row (a dead pooled feature after ReLU)
    # would turn the whole gradient into NaN. Same value, finite (zero) gradient there.
    positive = squared_norm > 0
    norm = torch.where(positive, torch.where(positive, squared_norm, torch.ones_like(squared_norm)).sqrt(), squared_norm)
    unit = feat / (norm + eps)
    unit = torch.where(torch.isnan(unit), torch.zeros_like(unit), unit)
    kernel = (unit @ unit.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


@float32_loss
def pkt_loss(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = PKT_EPS) -> torch.Tensor:
    """``mean_{i,j} p_t(j|i) log((p_t(j|i) + eps) / (p_s(j|i) + eps))`` on flattened features."""
    p_s = cosine_conditional(f_s.reshape(f_s.shape[0], -1), eps)
    p_t = cosine_conditional(f_t.reshape(f_t.shape[0], -1), eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@register_distiller("PKT")
class PKT(FeatureDistiller):
    """Cross-entropy plus ``PKT.LOSS.FEAT_WEIGHT * pkt_loss(pooled student, pooled teacher)``."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg, "PKT")

    def feature_loss(self, feats_student: dict[str, Any], feats_teacher: dict[str, Any], **kwargs: Any) -> torch.Tensor:
        return pkt_loss(feats_student["pooled_feat"], feats_teacher["pooled_feat"])
