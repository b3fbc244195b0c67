"""ImageNet as two ImageFolders, mdistiller's layout: ``DATASET.ROOT/{train,val}/<wnid>/*.JPEG``."""
from __future__ import annotations

import os
from typing import Any

from torchvision.datasets import ImageFolder

from kdharness.data.indexed import train_subset_positions
from kdharness.registry import register_dataset


class ImageNetFolder(ImageFolder):
    """torchvision's ImageFolder with ``num_classes`` and a consistent ``keep``."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def source(self) -> str:
        """The folder this split was read from (logged at start-up)."""
        return self.root

    def keep(self, positions: list[int]) -> None:
        """Keep the samples at ``positions``. ImageFolder sorts by class, so the first ``n``
        cover only the first classes (enough for smoke runs); DATASET.TRAIN_SUBSET_BALANCED
        takes every class."""
        self.samples = [self.samples[p] for p in positions]
        self.imgs = self.samples
        self.targets = [target for _, target in self.samples]


@register_dataset("imagenet")
def build_imagenet(cfg: Any, train: bool) -> ImageNetFolder:
    """The raw split: ``(PIL RGB of any size, class index)``; classes are sorted folder names."""
    split = "train" if train else "val"
    folder = os.path.join(os.path.expanduser(str(cfg.DATASET.ROOT)), split)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"ImageNet {split} folder {folder!r} does not exist (DATASET.ROOT = {cfg.DATASET.ROOT!r}); "
            f"expected DATASET.ROOT/{split}/<class>/<image> as in mdistiller (the val images must be "
            "sorted into class folders, e.g. with the usual valprep.sh)"
        )
    try:
        dataset = ImageNetFolder(folder)
    except FileNotFoundError as error:  # ImageFolder: no class folders / no images
        raise FileNotFoundError(f"ImageNet {split} folder {folder!r}: {error}") from error
    positions = train_subset_positions(cfg, train, dataset.targets)
    if positions is not None:
        dataset.keep(positions)
    return dataset
