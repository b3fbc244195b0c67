"""The model zoo: mdistiller's models, registered in timm, and the names configs use for them.

Configs keep mdistiller's bare names (``DISTILLER.STUDENT: resnet8x4``); the dataset picks
the timm prefix (``cifar_resnet8x4``, ``imagenet_ResNet18``; segmentation datasets ``seg_``:
``seg_deeplabv3_resnet18``). The timm registry is the only
list of models: allowed names are read from it, never from a table kept beside it.
"""
from __future__ import annotations

import timm
import torch.nn as nn

from kdharness.config import ConfigError

# Importing the families is what registers them in timm.
from kdharness.models import cifar, imagenet, segmentation, tiny_imagenet  # noqa: F401  (registration side effect)
from kdharness.models.weights import load_teacher_weights, load_weights, resolve_teacher_path

MODEL_PREFIX = {
    "cifar100": "cifar_", "fashion_mnist": "cifar_", "imagenet": "imagenet_", "tiny_imagenet": "tiny_imagenet_",
    # segmentation: every DeepLabV3 of kdharness/models/segmentation/ for every dense dataset
    "cityscapes": "seg_", "voc": "seg_", "voc_aug": "seg_", "fashion_mnist_scenes": "seg_",
}

__all__ = [
    "MODEL_PREFIX",
    "allowed_model_names",
    "check_model_name",
    "create_model",
    "load_teacher_weights",
    "load_weights",
    "resolve_teacher_path",
    "timm_name",
]


def _prefix(dataset_type: str) -> str:
    try:
        return MODEL_PREFIX[dataset_type]
    except KeyError:
        raise ConfigError(
            f"DATASET.TYPE = {dataset_type!r} has no model zoo; "
            f"datasets with models: {', '.join(sorted(MODEL_PREFIX))}"
        ) from None


def timm_name(name: str, dataset_type: str) -> str:
    """mdistiller's name for ``dataset_type`` -> timm's (``resnet8x4`` -> ``cifar_resnet8x4``).

    A name that already carries the dataset's prefix is returned unchanged.
    """
    prefix = _prefix(dataset_type)
    return name if name.startswith(prefix) else prefix + name


def allowed_model_names(dataset_type: str) -> list[str]:
    """The bare (mdistiller) names registered in timm for ``dataset_type``."""
    prefix = _prefix(dataset_type)
    return [name[len(prefix):] for name in timm.list_models(prefix + "*")]


def check_model_name(name: str, dataset_type: str, key: str) -> None:
    """Raise ConfigError naming ``key``, the value and the allowed names unless ``name`` is registered."""
    if not isinstance(name, str) or not name or timm_name(name, dataset_type) not in timm.list_models(
        _prefix(dataset_type) + "*"
    ):
        raise ConfigError(
            f"{key} = {name!r} is not a model for DATASET.TYPE {dataset_type!r}; "
            f"allowed: {', '.join(allowed_model_names(dataset_type))}"
        )


def create_model(name: str, dataset_type: str, num_classes: int, key: str = "model") -> nn.Module:
    """Build mdistiller's model ``name`` for ``dataset_type`` with ``num_classes`` outputs (untrained)."""
    check_model_name(name, dataset_type, key)
    return timm.create_model(timm_name(name, dataset_type), num_classes=num_classes)
