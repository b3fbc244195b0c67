"""VID: Ahn et al., "Variational Information Distillation for Knowledge Transfer" (CVPR 2019), as in mdistiller.

VID maximises a variational lower bound on the mutual information between each teacher
stage feature ``t`` and the student's: ``t`` is modelled as a Gaussian whose mean a small
regressor predicts from the student feature ``s`` and whose per-channel variance is
``softplus(alpha_c) + eps``. The loss is the Gaussian negative log-likelihood (without
its constant), averaged over every element:

    mean( 0.5 * ((mu(s) - t)^2 / var_c + log var_c) )

summed over the stages ``feats[1:]``. Where the maps differ in size, the larger one is
average-pooled to the smaller.

What mdistiller does and we keep, so that losses and checkpoints match:

- the regressor is ``1x1 conv -> ReLU -> 1x1 conv -> ReLU -> 1x1 conv`` (no biases), keys
  ``regressors.<i>.{0,2,4}.weight``;
- the variance parameters ``alpha`` stay at their initial value ``softplus^-1(INIT_PRED_VAR
  - EPS)``: mdistiller keeps them in a plain list, so they are neither trained nor saved.
  Here they are non-persistent buffers: same values, same ``state_dict`` keys.

Ours: the regressors' widths come from one probe forward (``VID.INPUT_SIZE``) run in eval
mode on zeros, so building VID changes neither the models' BN statistics nor the global
RNG (mdistiller's probe runs a random batch through both models in training mode).
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


def match_spatial(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the taller of two ``[B, C, H, W]`` maps to the other's ``H x H``."""
    h_s, h_t = f_s.shape[2], f_t.shape[2]
    if h_s > h_t:
        f_s = F.adaptive_avg_pool2d(f_s, (h_t, h_t))
    elif h_t > h_s:
        f_t = F.adaptive_avg_pool2d(f_t, (h_s, h_s))
    return f_s, f_t


@float32_loss
def vid_nll(pred_mean: torch.Tensor, target: torch.Tensor, log_scale: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean Gaussian NLL (constant dropped) of ``target`` under ``N(pred_mean, softplus(log_scale) + eps)``."""
    variance = (torch.log(1.0 + torch.exp(log_scale)) + eps).view(1, -1, 1, 1).to(pred_mean)
    return torch.mean(0.5 * ((pred_mean - target) ** 2 / variance + torch.log(variance)))


def inverse_softplus(value: float) -> float:
    """``alpha`` with ``softplus(alpha) = value`` (``log(exp(value) - 1)``)."""
    return math.log(math.exp(value) - 1.0)


def probe_feature_channels(model: nn.Module, input_size: Sequence[int]) -> list[int]:
    """Channels of each ``feats`` entry, from one eval-mode forward on zeros; restores the modes."""
    modes = {module: module.training for module in model.modules()}
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            _, feats = model(torch.zeros(1, 3, *input_size, device=device))
    finally:
        for module, mode in modes.items():
            module.training = mode
    return [f.shape[1] for f in feats["feats"]]


def _conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, padding=0, bias=False)


@register_distiller("VID")
class VID(FeatureDistiller):
    """Cross-entropy plus the variational information loss on every stage after the stem."""

    extra_modules = ("regressors",)

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg, "VID")
        self.eps = float(cfg.VID.EPS)
        init_pred_var = float(cfg.VID.INIT_PRED_VAR)
        if not init_pred_var > self.eps:
            raise ValueError(f"VID.INIT_PRED_VAR = {init_pred_var}; expected a variance > VID.EPS = {self.eps}")
        input_size = tuple(int(v) for v in cfg.VID.INPUT_SIZE)
        if len(input_size) != 2:
            raise ValueError(f"VID.INPUT_SIZE = {cfg.VID.INPUT_SIZE!r}; expected (height, width)")
        s_channels = probe_feature_channels(student, input_size)[1:]
        t_channels = probe_feature_channels(teacher, input_size)[1:]
        self.regressors = nn.ModuleList()
        alpha = inverse_softplus(init_pred_var - self.eps)
        for i, (s, t) in enumerate(zip(s_channels, t_channels)):
            self.regressors.append(
                nn.Sequential(_conv1x1(s, t), nn.ReLU(), _conv1x1(t, t), nn.ReLU(), _conv1x1(t, t))
            )
            self.register_buffer(f"log_scale_{i}", torch.full((t,), alpha), persistent=False)

    @property
    def log_scales(self) -> list[torch.Tensor]:
        return [getattr(self, f"log_scale_{i}") for i in range(len(self.regressors))]

    def vid_loss(self, feats_student: Sequence[torch.Tensor], feats_teacher: Sequence[torch.Tensor]) -> torch.Tensor:
        """Sum over stages of ``vid_nll`` (features paired from the first stage after the stem)."""
        total = feats_student[0].new_zeros(())
        for regressor, log_scale, f_s, f_t in zip(self.regressors, self.log_scales, feats_student, feats_teacher):
            f_s, f_t = match_spatial(f_s, f_t)
            total = total + vid_nll(regressor(f_s), f_t, log_scale, self.eps)
        return total

    def feature_loss(self, feats_student: dict[str, Any], feats_teacher: dict[str, Any], **kwargs: Any) -> torch.Tensor:
        return self.vid_loss(feats_student["feats"][1:], feats_teacher["feats"][1:])
