"""FitNet: Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015), as in mdistiller.

The student's intermediate feature ("guided layer") is mapped by a small learned
regressor onto the teacher's feature at the same stage ("hint layer") and pulled towards
it with a mean squared error. Which stage is ``FITNET.HINT_LAYER``, an index into
``feats["feats"]`` (mdistiller's default 2, the output of the second stage).

The regressor is mdistiller's ``ConvReg`` (key ``conv_reg``: ``conv`` then BatchNorm then
ReLU), with the convolution chosen from the two feature shapes so that the output has the
teacher's shape: a 3x3 stride-2 convolution when the student map is twice as large, a
4x4 stride-2 transposed convolution when it is half as large, otherwise a "valid"
convolution whose kernel absorbs the size difference. Same keys and shapes as
mdistiller's, so a FitNet checkpoint moves between the two harnesses.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdharness.distillers._base import FeatureDistiller
from kdharness.distillers._numerics import float32_loss
from kdharness.registry import register_distiller


@float32_loss
def fitnet_loss(regressed_student: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Mean over all elements of ``(regressor(f_s) - f_t)^2`` (unweighted)."""
    if regressed_student.shape != teacher_feat.shape:
        raise ValueError(
            f"FitNet: the regressed student feature has shape {tuple(regressed_student.shape)}, the teacher's "
            f"hint {tuple(teacher_feat.shape)}; they must match (was the regressor built for other models?)"
        )
    return F.mse_loss(regressed_student, teacher_feat)


class ConvReg(nn.Module):
    """Convolutional regressor from a student feature shape to a teacher feature shape.

    Shapes are ``(N, C, H, W)``; ``N`` is ignored. The layer is chosen as mdistiller does,
    in this order: ``H_s == 2 H_t`` -> Conv2d(3, stride 2, padding 1); ``2 H_s == H_t`` ->
    ConvTranspose2d(4, stride 2, padding 1); ``H_s >= H_t`` -> Conv2d with kernel
    ``(1 + H_s - H_t, 1 + W_s - W_t)``. A student map smaller than that cannot be regressed.
    """

    def __init__(self, s_shape: Sequence[int], t_shape: Sequence[int], use_relu: bool = True) -> None:
        super().__init__()
        self.use_relu = use_relu
        _, s_c, s_h, s_w = (int(v) for v in s_shape)
        _, t_c, t_h, t_w = (int(v) for v in t_shape)
        if s_h == 2 * t_h:
            self.conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ValueError(
                f"ConvReg: student feature {s_c}x{s_h}x{s_w} cannot be regressed onto teacher feature "
                f"{t_c}x{t_h}x{t_w}; supported: student size twice, half, or at least the teacher's"
            )
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.relu(x) if self.use_relu else x


@torch.no_grad()
def feature_shapes(model: nn.Module, input_size: Sequence[int]) -> list[torch.Size]:
    """Shapes of ``feats["feats"]`` for one all-zero ``3 x H x W`` sample.

    Measured in eval mode (BatchNorm statistics untouched; mdistiller probes in train mode,
    which moves the running statistics by one random batch) with zeros (no random numbers
    drawn, so the run's seeded stream is unchanged); the model's mode is restored.
    """
    reference = next(iter(model.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    was_training = model.training
    model.eval()
    try:
        _, feats = model(torch.zeros(1, 3, *(int(v) for v in input_size), device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return [f.shape for f in feats["feats"]]


@register_distiller("FITNET")
class FitNet(FeatureDistiller):
    """Cross-entropy plus ``FITNET.LOSS.FEAT_WEIGHT * MSE(conv_reg(f_s[h]), f_t[h])``."""

    extra_modules = ("conv_reg",)

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg, "FITNET")
        self.hint_layer = int(cfg.FITNET.HINT_LAYER)
        input_size = tuple(cfg.FITNET.INPUT_SIZE)
        s_shapes, t_shapes = feature_shapes(student, input_size), feature_shapes(teacher, input_size)
        if not -min(len(s_shapes), len(t_shapes)) <= self.hint_layer < min(len(s_shapes), len(t_shapes)):
            raise ValueError(
                f"FITNET.HINT_LAYER = {self.hint_layer}; the student has {len(s_shapes)} and the teacher "
                f"{len(t_shapes)} entries in feats['feats'], so expected 0..{min(len(s_shapes), len(t_shapes)) - 1}"
            )
        self.conv_reg = ConvReg(s_shapes[self.hint_layer], t_shapes[self.hint_layer])

    def feature_loss(self, feats_student: dict[str, Any], feats_teacher: dict[str, Any], **kwargs: Any) -> torch.Tensor:
        regressed = self.conv_reg(feats_student["feats"][self.hint_layer])
        return fitnet_loss(regressed, feats_teacher["feats"][self.hint_layer])
