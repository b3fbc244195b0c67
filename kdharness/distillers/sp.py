"""SP: Tung & Mori, "Similarity-Preserving Knowledge Distillation" (ICCV 2019), as in mdistiller.

Within a batch, the student's pairwise similarities between samples should mirror the
teacher's. For a feature ``Q`` flattened to ``[B, D]`` the batch similarity matrix is
``G = Q Q^T`` with each row L2-normalised; the loss is
``||G_t - G_s||_F^2 / B^2``. Student and teacher may differ in width and resolution:
only the ``B x B`` matrices are compared. mdistiller applies it to the last stage
(``feats["feats"][-1]``) alone, with ``SP.LOSS.FEAT_WEIGHT = 3000``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdharness.distillers._base import FeatureDistiller
from kdharness.distillers._numerics import float32_loss
from kdharness.registry import register_distiller


def batch_similarity(feat: torch.Tensor) -> torch.Tensor:
    """``[B, ...]`` -> ``[B, B]``: the Gram matrix of the flattened samples, rows of unit L2 norm."""
    flat = feat.reshape(feat.shape[0], -1)
    return F.normalize(flat @ flat.t(), p=2, dim=1)


@float32_loss
def similarity_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """``||G_t - G_s||_F^2 / B^2`` for one pair of features (a 0-dim tensor)."""
    batch = f_s.shape[0]
    return (batch_similarity(f_t) - batch_similarity(f_s)).pow(2).sum() / (batch * batch)


def sp_loss(g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of ``similarity_loss`` over the paired features."""
    return sum(similarity_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t))  # type: ignore[return-value]


@register_distiller("SP")
class SP(FeatureDistiller):
    """Cross-entropy plus ``SP.LOSS.FEAT_WEIGHT * similarity_loss(last student stage, last teacher stage)``."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg, "SP")

    def feature_loss(self, feats_student: dict[str, Any], feats_teacher: dict[str, Any], **kwargs: Any) -> torch.Tensor:
        return sp_loss([feats_student["feats"][-1]], [feats_teacher["feats"][-1]])
