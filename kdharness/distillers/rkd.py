"""RKD: Park et al., "Relational Knowledge Distillation" (CVPR 2019), as in mdistiller.

Instead of individual outputs the student mimics relations between the batch's pooled
features ``e_1..e_B``:

* distance-wise: the pairwise Euclidean distances, each network's divided by its own mean
  over the off-diagonal pairs (so the scales of the two embeddings need not agree);
* angle-wise: for every triple ``(i, j, k)`` the cosine of the angle at ``e_i`` between
  ``e_j - e_i`` and ``e_k - e_i`` (a zero vector, ``j = i``, gives cosine 0).

Both are compared with the Huber (smooth-L1, beta 1) loss averaged over all entries (the
``B x B`` distance matrix with its zero diagonal, the ``B^3`` cosines) and combined as
``RKD.DISTANCE_WEIGHT * L_d + RKD.ANGLE_WEIGHT * L_a``. ``RKD.PDIST.EPSILON`` clamps the
squared distances from below before the square root, ``RKD.PDIST.SQUARED`` keeps them
squared. Squared distances come from the expansion ``|a|^2 + |b|^2 - 2 a.b`` (one matrix
product, as mdistiller computes them, so the two agree to the last bits; for samples much
closer to each other than to the origin this loses relative precision, which the clamp
keeps finite).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdharness.distillers._base import FeatureDistiller
from kdharness.distillers._numerics import float32_loss
from kdharness.registry import register_distiller


def pairwise_differences(embedding: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` -> ``[B, B, D]`` with entry ``[i, j] = e_j - e_i``."""
    return embedding.unsqueeze(0) - embedding.unsqueeze(1)


def normalized_distances(embedding: torch.Tensor, squared: bool, eps: float) -> torch.Tensor:
    """``[B, D]`` -> ``[B, B]`` pairwise distances, zero diagonal, divided by their off-diagonal mean.

    The squared distance is clamped at ``eps`` before the square root (a finite gradient for
    coincident samples); the mean is over the entries > 0, as in mdistiller.
    """
    norms = embedding.pow(2).sum(dim=1)
    dist = (norms.unsqueeze(1) + norms.unsqueeze(0) - 2 * embedding @ embedding.t()).clamp(min=eps)
    if not squared:
        dist = dist.sqrt()
    off_diagonal = ~torch.eye(dist.shape[0], dtype=torch.bool, device=dist.device)
    dist = dist * off_diagonal
    return dist / dist[dist > 0].mean()


def triplet_cosines(differences: torch.Tensor) -> torch.Tensor:
    """``[B, B, D]`` differences -> the ``B^3`` cosines ``<u_ij, u_ik>`` of unit ``u_ij``, flattened."""
    unit = F.normalize(differences, p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2)).reshape(-1)


@float32_loss
def rkd_loss(
    f_s: torch.Tensor,
    f_t: torch.Tensor,
    squared: bool = False,
    eps: float = 1e-12,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> torch.Tensor:
    """``distance_weight * L_distance + angle_weight * L_angle`` (mdistiller's argument order)."""
    e_s, e_t = f_s.reshape(f_s.shape[0], -1), f_t.reshape(f_t.shape[0], -1)
    with torch.no_grad():
        dist_t = normalized_distances(e_t, squared, eps)
        angle_t = triplet_cosines(pairwise_differences(e_t))
    loss_distance = F.smooth_l1_loss(normalized_distances(e_s, squared, eps), dist_t)
    loss_angle = F.smooth_l1_loss(triplet_cosines(pairwise_differences(e_s)), angle_t)
    return distance_weight * loss_distance + angle_weight * loss_angle


@register_distiller("RKD")
class RKD(FeatureDistiller):
    """Cross-entropy plus ``RKD.LOSS.FEAT_WEIGHT * rkd_loss(pooled student, pooled teacher)``."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg, "RKD")
        self.distance_weight = float(cfg.RKD.DISTANCE_WEIGHT)
        self.angle_weight = float(cfg.RKD.ANGLE_WEIGHT)
        self.eps = float(cfg.RKD.PDIST.EPSILON)
        self.squared = bool(cfg.RKD.PDIST.SQUARED)

    def feature_loss(self, feats_student: dict[str, Any], feats_teacher: dict[str, Any], **kwargs: Any) -> torch.Tensor:
        return rkd_loss(
            feats_student["pooled_feat"],
            feats_teacher["pooled_feat"],
            self.squared,
            self.eps,
            self.distance_weight,
            self.angle_weight,
        )
