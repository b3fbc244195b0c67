"""PICD, NICD and the online teacher's losses: pure functions of logits (see docs/method.md).

All divergences are computed in float32 (a mixed-precision step gives the same numbers) and
follow mdistiller's KD convention: KL summed over classes, averaged over samples.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def context_weights(similarities: torch.Tensor, tau: float) -> torch.Tensor:
    """``w_ij = softmax_j(S_ij / tau)`` over the positives; -inf similarities get weight 0."""
    return F.softmax(similarities.float() / tau, dim=1)


def aggregate_context_logits(
    weights: torch.Tensor, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``z_bar_i = sum_j w_ij * g(h_j)`` for the linear classifier ``g(h) = W h + b``.

    Computed as ``g(sum_j w_ij h_j)``: equal because g is affine and the weights sum to 1,
    and K times cheaper than classifying every positive first.
    weights [B, K]; features [B, K, D] -> [B, C].
    """
    pooled = torch.bmm(weights.unsqueeze(1).to(features.dtype), features).squeeze(1)
    return F.linear(pooled.to(weight.dtype), weight, bias)


def kl_per_sample(logits_target: torch.Tensor, logits_student: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(softmax(target / T) || softmax(student / T))`` summed over the last dim (broadcasts)."""
    log_p_student = F.log_softmax(logits_student.float() / temperature, dim=-1)
    log_p_target = F.log_softmax(logits_target.float() / temperature, dim=-1)
    return (log_p_target.exp() * (log_p_target - log_p_student)).sum(dim=-1)


def picd_loss(
    logits_student: torch.Tensor,
    context_logits: torch.Tensor,
    own_teacher_logits: torch.Tensor,
    beta1: float,
    temperature: float,
) -> torch.Tensor:
    """Positive in-context distillation.

    ``m_i = beta1 * z_bar_i + (1 - beta1) * z_i^t``;
    ``L = T^2 * mean_i KL(softmax(m_i / T) || softmax(z_i^s / T))``.
    The target is treated as a constant (no gradient flows into it).
    """
    mixed = beta1 * context_logits.float() + (1.0 - beta1) * own_teacher_logits.float()
    return kl_per_sample(mixed.detach(), logits_student, temperature).mean() * temperature**2


def nicd_loss(
    logits_student: torch.Tensor, negative_logits: torch.Tensor, beta2: float, temperature: float
) -> torch.Tensor:
    """Negative in-context distillation: a hinge on the divergence from each negative.

    ``d_ij = KL(softmax(z_j / T) || softmax(z_i^s / T))``; ``L = mean_ij relu(beta2 - d_ij)``.
    Bounded in [0, beta2], so pushing away can never diverge, and a student already beta2
    away from a negative gets no gradient from it.
    negative_logits: [B, N, C].
    """
    divergence = kl_per_sample(negative_logits.detach(), logits_student.unsqueeze(1), temperature)
    return F.relu(beta2 - divergence).mean()


def mutual_kd_loss(logits_teacher: torch.Tensor, logits_student: torch.Tensor, temperature: float) -> torch.Tensor:
    """Online teacher's term (deep mutual learning): ``T^2 * mean KL(softmax(z^s/T) || softmax(z^t/T))``.

    The student's logits are the (detached) target; the gradient reaches the teacher only.
    """
    return kl_per_sample(logits_student.detach(), logits_teacher, temperature).mean() * temperature**2


def warmup_factor(epoch: float | None, warmup: float) -> float:
    """``min(epoch / warmup, 1)``; 1 when warmup <= 0. Epochs count from 1, as in mdistiller."""
    if warmup <= 0:
        return 1.0
    if epoch is None:
        raise ValueError(
            f"ICKD ramps PICD/NICD over ICKD.WARMUP = {warmup:g} epochs and needs the current epoch: "
            "call distiller(image=..., target=..., epoch=...) (or set ICKD.WARMUP 0)"
        )
    return min(float(epoch) / warmup, 1.0)
