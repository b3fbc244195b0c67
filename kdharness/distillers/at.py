"""AT: Zagoruyko & Komodakis, "Paying More Attention to Attention" (ICLR 2017), as in mdistiller.

A stage's spatial attention map is the channel mean of the feature raised to the power
``p`` (``AT.P``, 2 by default), flattened and L2-normalised per sample; the student
matches the teacher's map with a squared error. The loss sums over the stages
``feats["feats"][1:]`` (every stage output, the stem excluded), pairing student and
teacher stages in order (the shorter list decides how many). Where the two maps differ
in size, the larger is average-pooled (adaptively) to the smaller. Per stage the error is
averaged over batch and positions, as mdistiller does; ``AT.LOSS.FEAT_WEIGHT`` (1000)
compensates for that small scale.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdharness.distillers._base import FeatureDistiller
from kdharness.distillers._numerics import float32_loss
from kdharness.registry import register_distiller


def match_spatial_size(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the taller of two ``[B, C, H, W]`` maps to ``H x H`` of the shorter one.

    mdistiller compares heights only and pools to a square; every CIFAR/ImageNet feature
    map is square, so that is the same as pooling to the other's size.
    """
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
    return f_s, f_t


def attention_map(feat: torch.Tensor, p: float) -> torch.Tensor:
    """``normalize(mean_c feat^p)`` flattened: ``[B, C, H, W]`` -> ``[B, H*W]`` of unit length."""
    return F.normalize(feat.pow(p).mean(dim=1).reshape(feat.shape[0], -1), p=2, dim=1)


@float32_loss
def at_stage_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float) -> torch.Tensor:
    """``mean_{b, hw} (a_s - a_t)^2`` for one stage, after matching spatial sizes."""
    f_s, f_t = match_spatial_size(f_s, f_t)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


def at_loss(g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor], p: float) -> torch.Tensor:
    """Sum of ``at_stage_loss`` over the paired stages."""
    return sum(at_stage_loss(f_s, f_t, p) for f_s, f_t in zip(g_s, g_t))  # type: ignore[return-value]


@register_distiller("AT")
class AT(FeatureDistiller):
    """Cross-entropy plus ``AT.LOSS.FEAT_WEIGHT * at_loss(student stages, teacher stages)``."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg, "AT")
        # mdistiller's default P is the integer 2: feat.pow(2) of an int exponent.
        self.p = cfg.AT.P

    def feature_loss(self, feats_student: dict[str, Any], feats_teacher: dict[str, Any], **kwargs: Any) -> torch.Tensor:
        return at_loss(feats_student["feats"][1:], feats_teacher["feats"][1:], self.p)
