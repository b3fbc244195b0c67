"""What the zoo's families share: the `pretrained` refusal, timm's extra kwargs, stage running, init.

Used by both `cifar` and `imagenet` families, so each entrypoint stays a one-liner in timm's
style. Kept free of model code so importing it registers nothing.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

import math

import torch
import torch.nn as nn

# What every model's forward returns beside the logits, as in mdistiller:
# {"feats": [Tensor, ...], "preact_feats": [Tensor, ...], "pooled_feat": Tensor[B, D]}.
FeatureDict = dict[str, Any]
ModelOutput = tuple[torch.Tensor, FeatureDict]

# timm.create_model always passes these; our models have no use for them.
_TIMM_FACTORY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")

M = TypeVar("M", bound=nn.Module)


def build_model(
    model_cls: Callable[..., M],
    variant: str,
    pretrained: bool,
    input_size: tuple[int, int, int],
    **kwargs: Any,
) -> M:
    """Instantiate ``model_cls(**kwargs)`` for the timm entrypoint ``variant``.

    Pretrained weights cannot be fetched (no network, and mdistiller's teachers are not on
    any hub), so ``pretrained=True`` fails loudly instead of silently training from scratch.
    """
    if pretrained:
        raise ValueError(
            f"{variant}: pretrained=True is not supported, weights are never downloaded. "
            "Build the model with pretrained=False and load a checkpoint: set "
            "DISTILLER.TEACHER_WEIGHTS (or call kdharness.models.weights.load_weights(model, path))."
        )
    for key in _TIMM_FACTORY_KWARGS:
        kwargs.pop(key, None)
    model = model_cls(**kwargs)
    # timm's convention: tools such as timm.data.resolve_data_config read this dict; our
    # checkpoint loader uses it to name the architecture in its error messages.
    model.pretrained_cfg = {
        "architecture": variant,
        "num_classes": model.num_classes,
        "input_size": input_size,
    }
    return model


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling to [B, C].

    mdistiller uses fixed-size average pools (AvgPool2d(8) on 8x8 maps, AvgPool2d(7) on 7x7
    ...), which average the whole map at the native input size; pooling globally gives the
    same values there and still works for other input sizes.
    """
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def run_stage(stage: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run blocks that return ``(out, preact)``; the stage's pre-activation is its last block's."""
    preact = x
    for block in stage:
        x, preact = block(x)
    return x, preact


def init_msra_(model: nn.Module) -> None:
    """mdistiller's init for VGG and MobileNetV2: He-normal convs (fan-out), unit BN, small linear."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            m.weight.data.normal_(0, 0.01)
            m.bias.data.zero_()


class FeatureHelpers:
    """mdistiller's feature helpers (``get_stage_channels``, ``get_bn_before_relu``,
    ``get_feat_modules``), implemented once for every family of the zoo.

    Feature-based distillers (OFD reads the teacher's BNs that precede each stage's final
    ReLU, and the stage widths of both networks) call these on any model, so each family
    only declares *which* modules they are, by their ``named_modules`` path, in ``__init__``:
    ``stage_channels``, ``bn_before_relu_names`` (None where mdistiller raises, e.g. the
    ShuffleNets) and ``feat_module_names``. Results equal mdistiller's models' (tested).
    """

    stage_channels: list[int]
    bn_before_relu_names: tuple[str, ...] | None = None
    feat_module_names: tuple[str, ...] = ()

    def get_stage_channels(self) -> list[int]:
        """Channels of each stage's output feature, stem first, as mdistiller reports them."""
        return list(self.stage_channels)

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm whose output (plus any shortcut) each stage's last ReLU sees."""
        if self.bn_before_relu_names is None:
            raise NotImplementedError(
                f"{type(self).__name__} has no BatchNorm directly before its stages' ReLU (mdistiller "
                "raises here too), so it cannot be an OFD teacher; choose another DISTILLER.TEACHER"
            )
        return [self.get_submodule(name) for name in self.bn_before_relu_names]  # type: ignore[attr-defined]

    def get_feat_modules(self) -> nn.ModuleList:
        """The stem and stage modules in forward order (shared with the model, not copies)."""
        return nn.ModuleList(self.get_submodule(name) for name in self.feat_module_names)  # type: ignore[attr-defined]
