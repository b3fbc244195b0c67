"""Cityscapes (Cordts et al., 2016) fine annotations, read from the official folder layout.

``DATASET.ROOT`` (or ``ROOT/cityscapes``) holds ``leftImg8bit/{train,val}/<city>/
<name>_leftImg8bit.png`` and ``gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png``, as
the two official archives unpack. The labelIds (0..33) are mapped to the 19 train ids of the
benchmark (cityscapesScripts' ``labels.py``); every other id, and the license plate, is the
ignore index 255. Train is the 2975 ``train`` images, validation the 500 ``val`` ones (the
test split has no public labels).
"""
from __future__ import annotations

import glob
import os
from typing import Any

import numpy as np

from kdharness.config import IGNORE_INDEX
from kdharness.data.seg_files import SegmentationFiles, first_existing, segmentation_subset
from kdharness.registry import register_dataset

CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
# labelId -> trainId of the 19 evaluated classes (cityscapesScripts, helpers/labels.py).
LABEL_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
_LOOKUP = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _label, _train_id in LABEL_TO_TRAIN_ID.items():
    _LOOKUP[_label] = _train_id

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
SPLITS = {True: "train", False: "val"}


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes labelIds -> the 19 train ids, 255 elsewhere."""
    return _LOOKUP[label_ids]


def find_root(root: str) -> str:
    """The folder holding ``leftImg8bit/`` and ``gtFine/``: DATASET.ROOT or ROOT/cityscapes."""
    candidates = [root, os.path.join(root, "cityscapes")]
    found = first_existing(candidates, lambda p: os.path.isdir(os.path.join(p, "leftImg8bit")) and os.path.isdir(os.path.join(p, "gtFine")))
    if found is None:
        raise FileNotFoundError(
            f"Cityscapes not found under DATASET.ROOT = {root!r}: looked for leftImg8bit/ and gtFine/ in "
            f"{', '.join(candidates)}; unpack leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip "
            "(www.cityscapes-dataset.com) there"
        )
    return found


def list_pairs(root: str, split: str) -> list[tuple[str, str]]:
    """(image, labelIds) paths of a split, sorted by city and name; every image needs its label file."""
    images = sorted(glob.glob(os.path.join(root, "leftImg8bit", split, "*", "*" + IMAGE_SUFFIX)))
    if not images:
        raise FileNotFoundError(
            f"Cityscapes {split} split: no {os.path.join(root, 'leftImg8bit', split, '<city>', '*' + IMAGE_SUFFIX)} files"
        )
    pairs = []
    for image in images:
        city = os.path.basename(os.path.dirname(image))
        name = os.path.basename(image)[: -len(IMAGE_SUFFIX)]
        label = os.path.join(root, "gtFine", split, city, name + LABEL_SUFFIX)
        if not os.path.isfile(label):
            raise FileNotFoundError(f"Cityscapes {split} split: {image} has no label file {label}")
        pairs.append((image, label))
    return pairs


@register_dataset("cityscapes", task="segmentation")
def build_cityscapes(cfg: Any, train: bool) -> SegmentationFiles:
    """The train (``train/``) or validation (``val/``) split; 19 classes."""
    root = find_root(os.path.expanduser(str(cfg.DATASET.ROOT)))
    split = SPLITS[train]
    dataset = SegmentationFiles(list_pairs(root, split), CLASSES, os.path.join(root, "leftImg8bit", split), to_train_ids)
    positions = segmentation_subset(cfg, train, len(dataset))
    if positions is not None:
        dataset.keep(positions)
    return dataset
