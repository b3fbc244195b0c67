"""What the segmentation datasets read from disk share: a list of (image, mask) files.

A raw segmentation dataset (the contract in docs/architecture.md) has ``task =
"segmentation"``, ``num_classes``, ``classes``, ``source`` and ``__getitem__(i) ->
(PIL RGB image, PIL mask of train ids, mode L)``; pixels that count nowhere hold
``IGNORE_INDEX`` (255). It has no per-image ``targets``: `IndexedDataset` tells it apart by
its ``task``.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from kdharness.config import SEGMENTATION, ConfigError


def segmentation_subset(cfg: Any, train: bool, total: int) -> list[int] | None:
    """The positions a segmentation training split keeps under ``DATASET.TRAIN_SUBSET``: the
    first N images; None keeps all (and the validation split always stays whole).

    ``DATASET.TRAIN_SUBSET_BALANCED`` needs one class per image, which segmentation has not:
    refused with the key named.
    """
    wanted = int(cfg.DATASET.TRAIN_SUBSET)
    if not train or wanted <= 0:
        return None
    if cfg.DATASET.get("TRAIN_SUBSET_BALANCED", False):
        raise ConfigError(
            f"DATASET.TRAIN_SUBSET_BALANCED True: {cfg.DATASET.TYPE} is a segmentation dataset, whose images have no "
            "single class to balance; set it False (TRAIN_SUBSET then keeps the first N images)"
        )
    if wanted > total:
        raise ConfigError(
            f"DATASET.TRAIN_SUBSET = {wanted}, but the {cfg.DATASET.TYPE} training set under DATASET.ROOT = "
            f"{cfg.DATASET.ROOT!r} has only {total} images; expected 0 (all) or <= {total}"
        )
    return list(range(wanted))


def read_label_image(path: str) -> np.ndarray:
    """A PNG of class indices (palette ``P`` or grayscale ``L``, as VOC and Cityscapes ship
    them) as a uint8 ``[H, W]`` array; an RGB rendering of the labels is refused."""
    with Image.open(path) as label:
        if label.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(
                f"{path}: a {label.mode} image; expected a label PNG of class indices (palette P or grayscale L), "
                "not a colour rendering of the labels"
            )
        values = np.array(label)
    if values.dtype != np.uint8:
        if values.size and (values.min() < 0 or values.max() > 255):
            raise ValueError(f"{path}: label values {values.min()}..{values.max()}; expected 0..255")
        values = values.astype(np.uint8)
    return values


class SegmentationFiles:
    """(image file, mask file) pairs; each item is read, and its mask mapped to train ids, on access.

    ``map_labels`` turns the file's label values into train ids (Cityscapes' labelIds -> 19
    train ids); None keeps them (VOC's PNGs hold the train ids already).
    """

    task = SEGMENTATION

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        classes: Sequence[str],
        source: str,
        map_labels: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.pairs = list(pairs)
        self.classes = tuple(classes)
        self.num_classes = len(self.classes)
        self._source = source
        self.map_labels = map_labels

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Image.Image, Image.Image]:
        image_path, mask_path = self.pairs[index]
        with Image.open(image_path) as image:
            image = image.convert("RGB")
        labels = read_label_image(mask_path)
        if self.map_labels is not None:
            labels = self.map_labels(labels)
        if labels.shape != (image.size[1], image.size[0]):
            raise ValueError(
                f"{mask_path}: mask of {labels.shape[1]}x{labels.shape[0]} pixels for the "
                f"{image.size[0]}x{image.size[1]} image {image_path}; expected the same size"
            )
        return image, Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))  # uint8 [H, W]: mode L

    @property
    def source(self) -> str:
        """Where the split was read from (logged at start-up)."""
        return self._source

    def keep(self, positions: Sequence[int]) -> None:
        """Keep the images at ``positions`` (``DATASET.TRAIN_SUBSET``), in that order."""
        self.pairs = [self.pairs[p] for p in positions]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, source={self._source!r})"


def first_existing(candidates: Sequence[str], what: Callable[[str], bool]) -> str | None:
    """The first of ``candidates`` for which ``what(path)`` holds, or None."""
    for path in candidates:
        if what(os.path.expanduser(path)):
            return os.path.expanduser(path)
    return None
