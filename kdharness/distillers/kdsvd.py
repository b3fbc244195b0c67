"""KDSVD: Lee et al., "Self-supervised Knowledge Distillation Using Singular Value Decomposition"
(ECCV 2018), as mdistiller implements it.

Each stage's feature is compressed by a truncated SVD; the knowledge is how the leading
right-singular vectors of consecutive stages relate to each other, measured by a
Gaussian (RBF) kernel, and the student matches the teacher's kernel values.

Per stage (``feats["feats"][1:]``), as in mdistiller:

1. The ``[B, C, H, W]`` map is viewed as ``B`` matrices of ``(C*H) x W`` (mdistiller's
   reshape; right-singular vectors therefore live on the width axis) and decomposed
   (float32, ``torch.linalg.svd``: the same LAPACK routine and sign convention as
   mdistiller's ``torch.svd``). The teacher keeps ``K`` (``KDSVD.K``) singular triplets,
   the student ``K + 3``; each kept block is L2-normalised (the singular values across the
   ``K`` kept, each vector over its coordinates); non-finite entries become 0.
2. Each teacher vector picks the student vector of largest ``|cosine|`` and takes it with
   the cosine's sign (ties: the sum of the tied ones), which removes the student's SVD
   sign ambiguity and its ordering differences.
3. Both sets of ``K`` vectors are scaled by the teacher's normalised singular values.

For consecutive stages ``(l-1, l)`` and each kept index ``k``,
``R[c, c', k] = exp(-(v_l[c, k] - v_{l-1}[c', k])^2 / 8)`` over all coordinate pairs; the
loss sums ``(R_student - R_teacher)^2`` (non-finite terms dropped) over stages and
entries and divides by the batch size. The value depends on the teacher's singular-vector
signs, which are LAPACK's, exactly as in mdistiller. Student and teacher stages must
have equal widths ``W`` (mdistiller's only configuration: ResNet32x4 -> ResNet8x4).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdharness.distillers._base import FeatureDistiller
from kdharness.distillers._numerics import float32_loss
from kdharness.registry import register_distiller

RBF_DENOMINATOR = 8.0  # exp(-d^2 / 8), mdistiller's (and the paper code's) kernel width
STUDENT_EXTRA_VECTORS = 3  # the student keeps K + 3 vectors to choose the teacher's matches from


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


class LeadingSVD(torch.autograd.Function):
    """``torch.linalg.svd(a, full_matrices=False)``'s singular values and ``Vh``, with a backward
    that stays finite when singular values repeat outside the leading ``n`` that the loss uses.

    torch's backward divides by ``s_j^2 - s_i^2`` for *every* pair ``(i, j)``; two equal
    singular values give ``0 / 0 = NaN`` even when neither vector reaches the loss. Feature
    maps of zero-padded images (Fashion-MNIST's 28x28 in a 32x32 frame, with dark borders)
    have identical constant columns, hence repeated zero singular values: the loss is finite,
    its gradient NaN. A pair of two unused indices contributes exactly zero (``Vh``'s gradient
    is zero in those rows), so leaving such pairs out gives torch's gradient wherever that is
    finite, and a finite one whenever the kept singular values differ from all the others.
    A repeated *kept* value has no derivative: its gradient stays non-finite, for the
    trainer's SOLVER.NAN_POLICY. Backward formula (U's gradient zero): Townsend, "Differentiating
    the singular value decomposition" (2016), with ``F_ij = 1 / (s_j^2 - s_i^2)``.
    """

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        ctx.save_for_backward(u, s, vh)
        ctx.n = n
        return s, vh

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_s: torch.Tensor | None, grad_vh: torch.Tensor | None):
        u, s, vh = ctx.saved_tensors
        k = s.shape[-1]
        grad_s = torch.zeros_like(s) if grad_s is None else grad_s
        grad_v = torch.zeros_like(vh).transpose(-2, -1) if grad_vh is None else grad_vh.transpose(-2, -1)
        index = torch.arange(k, device=s.device)
        used = index < ctx.n if ctx.n > 0 else torch.ones_like(index, dtype=torch.bool)
        skipped = (~used.unsqueeze(0) & ~used.unsqueeze(1)) | torch.eye(k, dtype=torch.bool, device=s.device)
        s2 = s * s
        gap = s2.unsqueeze(-2) - s2.unsqueeze(-1)  # [..., i, j] = s_j^2 - s_i^2
        inverse_gap = torch.where(skipped, torch.zeros_like(gap), 1.0 / torch.where(skipped, torch.ones_like(gap), gap))
        vhgv = vh @ grad_v
        inner = s.unsqueeze(-1) * (inverse_gap * (vhgv - vhgv.transpose(-2, -1))) + torch.diag_embed(grad_s)
        grad_a = u @ inner @ vh
        if k < vh.shape[-1]:  # wide matrix: the part of V's gradient outside V's span
            inverse_s = torch.where(used, 1.0 / torch.where(used, s, torch.ones_like(s)), torch.zeros_like(s))
            outside = grad_v.transpose(-2, -1) - (grad_v.transpose(-2, -1) @ vh.transpose(-2, -1)) @ vh
            grad_a = grad_a + (u * inverse_s.unsqueeze(-2)) @ outside
        return grad_a, None


def truncated_svd(feat: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised leading singular values ``[B, n]`` and right-singular vectors ``[B, W, n]``.

    ``feat`` is ``[B, C, H, W]``, decomposed as ``(C*H) x W`` matrices. ``n <= 0`` keeps all.
    """
    if feat.dim() != 4:
        raise ValueError(f"KDSVD expects [B, C, H, W] stage features; got shape {tuple(feat.shape)}")
    b, c, h, w = feat.shape
    s, vh = LeadingSVD.apply(feat.reshape(b, c * h, w).float(), n)
    s, v = _finite(s), _finite(vh.transpose(-2, -1))
    if n > 0:
        s = F.normalize(s[:, :n], p=2, dim=1)
        v = F.normalize(v[:, :, :n], p=2, dim=1)
    return s, v


def align_to_teacher(v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """``[B, W, n_s]`` student vectors -> ``[B, W, n_t]``: per teacher vector, the student vector
    of largest absolute cosine, with the cosine's sign (several if tied)."""
    if v_s.shape[1] != v_t.shape[1]:
        raise ValueError(
            f"KDSVD: student stage width {v_s.shape[1]} differs from the teacher's {v_t.shape[1]}; "
            "the singular vectors cannot be compared (pick a pair whose stages have equal widths)"
        )
    cosine = v_s.transpose(-2, -1) @ v_t  # [B, n_s, n_t]
    best = cosine.abs().amax(dim=1, keepdim=True)
    selection = torch.where(cosine.abs() == best, torch.sign(cosine), torch.zeros_like(cosine))
    return v_s @ selection


def _rbf(v: torch.Tensor, v_prev: torch.Tensor) -> torch.Tensor:
    """``[B, W, n]``, ``[B, W', n]`` -> ``[B, W, W', n]`` Gaussian kernel of coordinate differences."""
    return torch.exp(-(v.unsqueeze(2) - v_prev.unsqueeze(1)).pow(2) / RBF_DENOMINATOR)


@float32_loss
def kdsvd_loss(g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor], k: int) -> torch.Tensor:
    """Sum over consecutive stage pairs of ``sum (R_s - R_t)^2``, divided by the batch size."""
    total = g_s[0].new_zeros(())
    previous: tuple[torch.Tensor, torch.Tensor] | None = None
    for f_s, f_t in zip(g_s, g_t):
        s_t, v_t = truncated_svd(f_t, k)
        _, v_s = truncated_svd(f_s, k + STUDENT_EXTRA_VECTORS)
        v_s = align_to_teacher(v_s, v_t)
        scale = s_t.unsqueeze(1)
        v_t, v_s = v_t * scale, v_s * scale
        if previous is not None:
            v_s_prev, v_t_prev = previous
            squared = (_rbf(v_s, v_s_prev) - _rbf(v_t, v_t_prev).detach()).pow(2)
            total = total + _finite(squared).sum()
        previous = (v_s, v_t)
    return total / g_s[0].shape[0]


@register_distiller("KDSVD")
class KDSVD(FeatureDistiller):
    """Cross-entropy plus ``KDSVD.LOSS.FEAT_WEIGHT * kdsvd_loss(student stages, teacher stages, K)``."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg, "KDSVD")
        self.k = int(cfg.KDSVD.K)

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, **kwargs: Any):
        logits_student, feats_student = self.student(image)
        with torch.no_grad():
            _, feats_teacher = self.teacher(image)
        loss_ce = self.ce_loss_weight * self.ce_loss(logits_student, target)
        loss_feat = self.feat_loss_weight * kdsvd_loss(feats_student["feats"][1:], feats_teacher["feats"][1:], self.k)
        return logits_student, {"loss_ce": loss_ce, "loss_kd": loss_feat}
