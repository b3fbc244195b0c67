"""ReviewKD: Chen et al., "Distilling Knowledge via Knowledge Review" (CVPR 2021), as in mdistiller.

A stage of the teacher is taught not by the student's same stage alone but by a fusion of
it with all the student's deeper stages: starting from the deepest (the pooled feature as a
1x1 map), each attention-based fusion block (ABF) projects its student feature to a common
width, blends it with the fused result coming from below (upsampled; the blend weights are
two per-pixel sigmoid maps computed from both), passes the blend up, and maps it to the
teacher's width with a 3x3 conv. Each output is compared to the teacher's pre-ReLU feature
with the hierarchical context loss (HCL): the MSE of the full maps plus the MSEs of their
4x4, 2x2 and 1x1 average pools (those smaller than the map) weighted 1/2, 1/4, 1/8, all
divided by the sum of the weights used. The term ramps up linearly over WARMUP_EPOCHS.

Config (mdistiller's ``CFG.REVIEWKD``): ``IN_CHANNELS[i]`` / ``OUT_CHANNELS[i]`` are the
student / teacher widths of stage ``i`` (shallowest first, the pooled feature last);
``SHAPES`` / ``OUT_SHAPES`` the side of the maps, deepest first. mdistiller's defaults are
resnet32x4 -> resnet8x4's; ours too, but a list left at its default that does not fit the
two models is replaced by what the models' features have (one eval-mode forward on zeros at
the model's input size), and channel lists set to other values that do not fit are refused
before training, naming the keys and the models' channels. The ABFs' common width is
``min(512, IN_CHANNELS[-1])``; ``MAX_MID_CHANNEL`` is read but, as in mdistiller, not
used, so that mdistiller's checkpoints (e.g. ImageNet ResNet50 -> MobileNetV1, which sets
it to 256) load. Keys: ``abfs.<i>.conv1``, ``.conv2`` (conv + BN), ``.att_conv.0`` (every
ABF but ``abfs.0``, the deepest's), ``abfs.0`` the deepest stage.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdharness.config import CFG
from kdharness.distillers._base import FeatureDistiller
from kdharness.distillers._numerics import float32_loss
from kdharness.registry import register_distiller

MID_CHANNEL_CAP = 512  # mdistiller's hard-coded cap on the ABFs' common width
HCL_POOL_SIDES = (4, 2, 1)  # the pyramid levels of the hierarchical context loss


@float32_loss
def hcl_loss(feats_student: Sequence[torch.Tensor], feats_teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Hierarchical context loss summed over stage pairs (see the module docstring)."""
    total = feats_student[0].new_zeros(())
    for f_s, f_t in zip(feats_student, feats_teacher):
        loss = F.mse_loss(f_s, f_t, reduction="mean")
        weight, weight_sum = 1.0, 1.0
        for side in HCL_POOL_SIDES:
            if side >= f_s.shape[2]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(
                F.adaptive_avg_pool2d(f_s, (side, side)), F.adaptive_avg_pool2d(f_t, (side, side)), reduction="mean"
            )
            weight_sum += weight
        total = total + loss / weight_sum
    return total


def probe_review_lists(student: nn.Module, teacher: nn.Module, stu_preact: bool = False) -> dict[str, list[int]]:
    """The four ``REVIEWKD`` lists that fit the two models, read from one eval-mode forward of
    each on a zero image at its ``pretrained_cfg`` input size (32x32 without one); the models'
    modes are restored. Teacher: its stages after the stem and its pooled feature; student: as
    many of its deepest stages, and its pooled feature."""
    t_stages, t_pooled = _probe(teacher, "preact_feats")
    t_stages = t_stages[1:]
    s_stages, s_pooled = _probe(student, "preact_feats" if stu_preact else "feats")
    s_stages = s_stages[len(s_stages) - len(t_stages):] if len(s_stages) >= len(t_stages) else s_stages
    return {
        "IN_CHANNELS": [f[0] for f in s_stages] + [s_pooled],
        "OUT_CHANNELS": [f[0] for f in t_stages] + [t_pooled],
        "SHAPES": [1] + [f[1] for f in reversed(s_stages)],
        "OUT_SHAPES": [1] + [f[1] for f in reversed(t_stages)],
    }


def _probe(model: nn.Module, key: str) -> tuple[list[tuple[int, int]], int]:
    """(channels, side) of each ``feats[key]`` entry and the pooled feature's width."""
    size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 32, 32)))
    modes = {module: module.training for module in model.modules()}
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            _, feats = model(torch.zeros(1, *size, device=device))
    finally:
        for module, mode in modes.items():
            module.training = mode
    return [(f.shape[1], f.shape[-1]) for f in feats[key]], feats["pooled_feat"].reshape(1, -1).shape[1]


def review_lists(student: nn.Module, teacher: nn.Module, node: Any) -> dict[str, list[int]]:
    """``node``'s SHAPES, OUT_SHAPES, IN_CHANNELS and OUT_CHANNELS, each left at mdistiller's
    default replaced by the models' own when that default does not fit them; ValueError for
    channel lists set to values that do not fit. Sides set by hand are kept (they follow the
    training resolution, which the probe cannot know)."""
    configured = {key: [int(v) for v in node[key]] for key in ("SHAPES", "OUT_SHAPES", "IN_CHANNELS", "OUT_CHANNELS")}
    models = probe_review_lists(student, teacher, bool(node.STU_PREACT))
    defaults = CFG.REVIEWKD
    lists = {key: models[key] if value == [int(v) for v in defaults[key]] else value for key, value in configured.items()}
    wrong = [key for key in ("IN_CHANNELS", "OUT_CHANNELS") if lists[key] != models[key]]
    if wrong:
        raise ValueError(
            f"{' and '.join(f'REVIEWKD.{key} = {lists[key]}' for key in wrong)} {'does' if len(wrong) == 1 else 'do'} not fit the models: the "
            f"student's stages and pooled feature have {models['IN_CHANNELS']} channels (REVIEWKD.IN_CHANNELS), "
            f"the teacher's {models['OUT_CHANNELS']} (REVIEWKD.OUT_CHANNELS); set these, or leave the keys at "
            "their defaults to take them from the models"
        )
    return lists


def warmup_scale(epoch: int | None, warmup_epochs: int) -> float:
    """``min(epoch / warmup_epochs, 1)``: the loss weight's linear ramp."""
    if epoch is None:
        raise ValueError("REVIEWKD ramps its loss up by epoch: call the distiller with epoch=<current epoch>")
    return min(epoch / warmup_epochs, 1.0)


class ABF(nn.Module):
    """Attention-based fusion: 1x1 conv+BN to ``mid``, optional fusion with the deeper result, 3x3 conv+BN to ``out``."""

    def __init__(self, in_channel: int, mid_channel: int, out_channel: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False), nn.BatchNorm2d(mid_channel))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channel, out_channel, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(out_channel),
        )
        self.att_conv = (
            nn.Sequential(nn.Conv2d(mid_channel * 2, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        )
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None, shape: int | None = None, out_shape: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(output at the teacher's width, fused map passed to the next-shallower ABF)``."""
        x = self.conv1(x)
        if self.att_conv is not None:
            if residual is None or shape is None:
                raise ValueError("a fusing ABF needs the deeper stage's result and its target side")
            residual = F.interpolate(residual, (shape, shape), mode="nearest")
            attention = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * attention[:, 0:1] + residual * attention[:, 1:2]
        if out_shape is not None and x.shape[-1] != out_shape:
            x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
        return self.conv2(x), x


@register_distiller("REVIEWKD")
class ReviewKD(FeatureDistiller):
    """Cross-entropy plus HCL between the ABF outputs and the teacher's pre-ReLU stage features."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg, "REVIEWKD", ce_weight="CE_WEIGHT", feat_weight="REVIEWKD_WEIGHT")
        node = cfg.REVIEWKD
        lists = review_lists(student, teacher, node)
        self.shapes, self.out_shapes = lists["SHAPES"], lists["OUT_SHAPES"]
        in_channels, out_channels = lists["IN_CHANNELS"], lists["OUT_CHANNELS"]
        lengths = {len(self.shapes), len(self.out_shapes), len(in_channels), len(out_channels)}
        if len(lengths) != 1:
            raise ValueError(
                "REVIEWKD.SHAPES, OUT_SHAPES, IN_CHANNELS and OUT_CHANNELS need one entry per stage; got lengths "
                f"{len(self.shapes)}, {len(self.out_shapes)}, {len(in_channels)}, {len(out_channels)}"
            )
        self.warmup_epochs = int(node.WARMUP_EPOCHS)
        if self.warmup_epochs < 1:
            raise ValueError(f"REVIEWKD.WARMUP_EPOCHS = {self.warmup_epochs}; expected >= 1")
        self.stu_preact = bool(node.STU_PREACT)
        mid_channel = min(MID_CHANNEL_CAP, in_channels[-1])
        last = len(in_channels) - 1
        # Built shallowest first (the order of the RNG draws), kept deepest first.
        abfs = [ABF(c_in, mid_channel, c_out, fuse=i < last) for i, (c_in, c_out) in enumerate(zip(in_channels, out_channels))]
        self.abfs = nn.ModuleList(abfs[::-1])

    def get_learnable_parameters(self) -> list[nn.Parameter]:
        return super().get_learnable_parameters() + list(self.abfs.parameters())

    def get_extra_parameters(self) -> int:
        return sum(p.numel() for p in self.abfs.parameters())

    def review(self, feats_student: dict[str, Any]) -> list[torch.Tensor]:
        """The ABF outputs, shallowest first, from the student's features (deepest fused first)."""
        stages = feats_student["preact_feats" if self.stu_preact else "feats"]
        pooled = feats_student["pooled_feat"]
        x = list(stages) + [pooled.reshape(pooled.shape[0], -1, 1, 1)]
        x = x[::-1]
        out, residual = self.abfs[0](x[0], out_shape=self.out_shapes[0])
        results = [out]
        for feature, abf, shape, out_shape in zip(x[1:], self.abfs[1:], self.shapes[1:], self.out_shapes[1:]):
            out, residual = abf(feature, residual, shape, out_shape)
            results.insert(0, out)
        return results

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, **kwargs: Any):
        logits_student, feats_student = self.student(image)
        with torch.no_grad():
            _, feats_teacher = self.teacher(image)
        results = self.review(feats_student)
        pooled_t = feats_teacher["pooled_feat"]
        targets = list(feats_teacher["preact_feats"][1:]) + [pooled_t.reshape(pooled_t.shape[0], -1, 1, 1)]
        loss_ce = self.ce_loss_weight * self.ce_loss(logits_student, target)
        scale = warmup_scale(kwargs.get("epoch"), self.warmup_epochs)
        loss_reviewkd = self.feat_loss_weight * scale * hcl_loss(results, targets)
        return logits_student, {"loss_ce": loss_ce, "loss_kd": loss_reviewkd}
