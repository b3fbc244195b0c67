"""Pascal VOC 2012 segmentation, plain (``voc``) and with the augmented training set (``voc_aug``).

``DATASET.ROOT`` (or ``ROOT/VOCdevkit/VOC2012``, ``ROOT/VOC2012``) is the devkit's VOC2012
folder: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNGs whose indices
are the 21 classes, 255 on object borders: the ignore index) and
``ImageSets/Segmentation/{train,val}.txt`` (one id per line).

``voc_aug`` trains on the 10 582 images of the augmented set (Hariharan et al.'s SBD masks
merged with VOC's, the set CIRKD and the field publish on): the common layout adds
``SegmentationClassAug/<id>.png`` (grayscale PNGs of class indices) and
``ImageSets/Segmentation/train_aug.txt``. Its validation split is VOC's 1449 ``val`` images
with their ``SegmentationClass`` masks, the same as ``voc``'s. Validation images differ in
size: evaluate them one per batch (``DATASET.TEST.BATCH_SIZE 1``).
"""
from __future__ import annotations

import os
from typing import Any

from kdharness.data.seg_files import SegmentationFiles, first_existing, segmentation_subset
from kdharness.registry import register_dataset

CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
LISTS = os.path.join("ImageSets", "Segmentation")


def find_root(root: str) -> str:
    """The VOC2012 folder: DATASET.ROOT, ROOT/VOCdevkit/VOC2012 or ROOT/VOC2012 (the first holding JPEGImages/)."""
    candidates = [root, os.path.join(root, "VOCdevkit", "VOC2012"), os.path.join(root, "VOC2012")]
    found = first_existing(candidates, lambda p: os.path.isdir(os.path.join(p, "JPEGImages")))
    if found is None:
        raise FileNotFoundError(
            f"Pascal VOC not found under DATASET.ROOT = {root!r}: looked for JPEGImages/ in {', '.join(candidates)}; "
            "unpack VOCtrainval_11-May-2012.tar there (and SegmentationClassAug/ with train_aug.txt for voc_aug)"
        )
    return found


def read_ids(path: str) -> list[str]:
    """Image ids, one per line (blank lines skipped); the file must exist and name at least one."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Pascal VOC image list {path} does not exist")
    with open(path, encoding="utf-8") as handle:
        ids = [line.split()[0] for line in handle if line.strip()]
    if not ids:
        raise ValueError(f"Pascal VOC image list {path} names no image")
    return ids


def list_pairs(root: str, list_name: str, mask_dir: str) -> list[tuple[str, str]]:
    """(JPEG, mask PNG) paths of the ids in ``ImageSets/Segmentation/<list_name>``; each must exist."""
    pairs = []
    for image_id in read_ids(os.path.join(root, LISTS, list_name)):
        image = os.path.join(root, "JPEGImages", image_id + ".jpg")
        mask = os.path.join(root, mask_dir, image_id + ".png")
        for path in (image, mask):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Pascal VOC: {path} (listed in {os.path.join(LISTS, list_name)}) does not exist")
        pairs.append((image, mask))
    return pairs


def _build(cfg: Any, train: bool, train_list: str, train_masks: str) -> SegmentationFiles:
    root = find_root(os.path.expanduser(str(cfg.DATASET.ROOT)))
    list_name, mask_dir = (train_list, train_masks) if train else ("val.txt", "SegmentationClass")
    dataset = SegmentationFiles(list_pairs(root, list_name, mask_dir), CLASSES, os.path.join(root, LISTS, list_name))
    positions = segmentation_subset(cfg, train, len(dataset))
    if positions is not None:
        dataset.keep(positions)
    return dataset


@register_dataset("voc", task="segmentation")
def build_voc(cfg: Any, train: bool) -> SegmentationFiles:
    """VOC 2012: train.txt (1464 images) or val.txt (1449), SegmentationClass masks; 21 classes."""
    return _build(cfg, train, "train.txt", "SegmentationClass")


@register_dataset("voc_aug", task="segmentation")
def build_voc_aug(cfg: Any, train: bool) -> SegmentationFiles:
    """The augmented set: train_aug.txt with SegmentationClassAug masks; validation as ``voc``."""
    return _build(cfg, train, "train_aug.txt", "SegmentationClassAug")
