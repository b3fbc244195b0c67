"""What every timm entrypoint of the zoo shares: the `pretrained` refusal and timm's extra kwargs.

Used by both `cifar` and `imagenet` families, so each entrypoint stays a one-liner in timm's
style. Kept free of model code so importing it registers nothing.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

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
