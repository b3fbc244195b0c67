"""Fashion-MNIST scenes: a segmentation set made from real images, small enough for a CPU.

Nothing here may download Cityscapes or VOC, so segmentation must also run, end to end and
measurably, on a set we can make: each scene is a ``SIZE x SIZE`` black canvas holding
``MIN_ITEMS..MAX_ITEMS`` Fashion-MNIST items (``DATASET.SCENES``), each resized (bilinear)
to ``round(28 * s)`` pixels with ``s ~ U(MIN_SCALE, MAX_SCALE)`` and pasted at a uniformly
random position where it fits whole. Eleven classes: 0 is background, ``c + 1`` is
Fashion-MNIST class ``c``.

Our choices:
- a pixel belongs to an item where the resized item's intensity is above ``THRESHOLD``
  (0.1 of the 0..255 range by default: Fashion-MNIST's background is 0, and its faint halo
  is not the garment); there it gets the item's label and the item's intensity, so a later
  item occludes earlier ones, in the image and in the mask alike. Below the threshold the
  item is drawn by ``max`` with what is there (no black square over earlier items) and the
  label is unchanged;
- no pixel is ignored: every pixel of a scene has a true label;
- train scenes draw their items from Fashion-MNIST's train split only, test scenes from its
  test split only; ``NUM_TRAIN`` / ``NUM_TEST`` scenes per split;
- scene ``i`` of a split is a pure function of ``(SEED, split, i)`` (numpy's SeedSequence),
  so it does not depend on how many scenes are made, on workers or on the run's seed;
- the canvases are made once when the split is built (2000 scenes: under a second) and
  kept as uint8 arrays; items are grayscale, repeated to 3 channels like ``fashion_mnist``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from kdharness.data.fashion_mnist import CLASSES as ITEM_CLASSES
from kdharness.data.fashion_mnist import FashionMNIST, find_files
from kdharness.data.seg_files import segmentation_subset
from kdharness.registry import register_dataset

CLASSES = ("background",) + ITEM_CLASSES
NUM_CLASSES = len(CLASSES)  # 11
_SPLIT_TAG = {True: 0, False: 1}  # train / test, part of every scene's seed


@dataclass(frozen=True)
class SceneSpec:
    """``DATASET.SCENES`` as plain values (see kdharness/config.py)."""

    size: int = 64
    min_items: int = 2
    max_items: int = 4
    min_scale: float = 0.75
    max_scale: float = 1.5
    threshold: float = 0.1
    seed: int = 0

    @classmethod
    def from_cfg(cls, cfg: Any) -> "SceneSpec":
        node = cfg.DATASET.SCENES
        return cls(int(node.SIZE), int(node.MIN_ITEMS), int(node.MAX_ITEMS), float(node.MIN_SCALE),
                   float(node.MAX_SCALE), float(node.THRESHOLD), int(node.SEED))


def make_scene(
    images: np.ndarray, labels: np.ndarray, spec: SceneSpec, train: bool, index: int
) -> tuple[np.ndarray, np.ndarray, list[dict[str, int]]]:
    """Scene ``index`` of a split: ``(canvas uint8 [S, S], mask uint8 [S, S], items)``.

    ``images`` ``[N, 28, 28]`` uint8 and ``labels`` ``[N]`` are the split's Fashion-MNIST
    items; ``items`` lists what was pasted, in paint order (``source`` index, ``label``,
    ``top``, ``left``, ``side``), for tests and figures.
    """
    rng = np.random.default_rng([spec.seed, _SPLIT_TAG[train], index])
    canvas = np.zeros((spec.size, spec.size), dtype=np.uint8)
    mask = np.zeros((spec.size, spec.size), dtype=np.uint8)
    threshold = spec.threshold * 255.0
    items = []
    for _ in range(int(rng.integers(spec.min_items, spec.max_items + 1))):
        source = int(rng.integers(len(images)))
        side = max(1, round(28 * float(rng.uniform(spec.min_scale, spec.max_scale))))
        top = int(rng.integers(0, spec.size - side + 1))
        left = int(rng.integers(0, spec.size - side + 1))
        item = np.asarray(Image.fromarray(images[source]).resize((side, side), Image.BILINEAR))
        region = (slice(top, top + side), slice(left, left + side))
        foreground = item > threshold
        canvas[region] = np.where(foreground, item, np.maximum(canvas[region], item))
        mask[region] = np.where(foreground, int(labels[source]) + 1, mask[region])
        items.append({"source": source, "label": int(labels[source]), "top": top, "left": left, "side": side})
    return canvas, mask, items


class FashionMNISTScenes:
    """A split of scenes: ``(PIL RGB canvas, PIL L mask)`` items, 11 classes."""

    task = "segmentation"
    classes = CLASSES
    num_classes = NUM_CLASSES

    def __init__(self, images: np.ndarray, labels: np.ndarray, spec: SceneSpec, train: bool, count: int, source: str = "") -> None:
        if len(images) == 0:
            raise ValueError(f"Fashion-MNIST scenes: no items to draw from ({source})")
        made = [make_scene(images, labels, spec, train, i) for i in range(count)]
        self.canvases = np.stack([scene[0] for scene in made]) if made else np.zeros((0, spec.size, spec.size), np.uint8)
        self.masks = np.stack([scene[1] for scene in made]) if made else np.zeros((0, spec.size, spec.size), np.uint8)
        self.spec, self.train = spec, train
        self._source = f"{count} {'train' if train else 'test'} scenes of {spec.size}x{spec.size} from {source}"

    def __len__(self) -> int:
        return len(self.canvases)

    def __getitem__(self, index: int) -> tuple[Image.Image, Image.Image]:
        canvas = self.canvases[index]
        return Image.fromarray(np.repeat(canvas[:, :, None], 3, axis=2)), Image.fromarray(self.masks[index])

    @property
    def source(self) -> str:
        return self._source

    def keep(self, positions: list[int]) -> None:
        """Keep the scenes at ``positions`` (``DATASET.TRAIN_SUBSET``), in that order."""
        self.canvases, self.masks = self.canvases[positions], self.masks[positions]

    def __repr__(self) -> str:
        return f"FashionMNISTScenes(n={len(self)}, train={self.train}, spec={self.spec})"


@register_dataset("fashion_mnist_scenes", task="segmentation")
def build_fashion_mnist_scenes(cfg: Any, train: bool) -> FashionMNISTScenes:
    """``DATASET.SCENES.NUM_TRAIN`` scenes from Fashion-MNIST's train split, or ``NUM_TEST``
    from its test split (found as ``fashion_mnist`` finds them, under ``DATASET.ROOT``)."""
    items = FashionMNIST(*find_files(str(cfg.DATASET.ROOT), train))
    count = int(cfg.DATASET.SCENES.NUM_TRAIN if train else cfg.DATASET.SCENES.NUM_TEST)
    labels = np.asarray(items.targets, dtype=np.int64)
    dataset = FashionMNISTScenes(items.data, labels, SceneSpec.from_cfg(cfg), train, count, items.source)
    positions = segmentation_subset(cfg, train, len(dataset))
    if positions is not None:
        dataset.keep(positions)
    return dataset
