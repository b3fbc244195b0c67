"""Tiny-ImageNet (200 classes of 64x64 images) in mdistiller's layout.

mdistiller reads ``data/tiny-imagenet-200/{train,val}`` with torchvision's ImageFolder; here
that is ``DATASET.ROOT/tiny-imagenet-200/{train,val}`` (``DATASET.ROOT`` defaults to
``./data``). ``train`` is the official layout, ``train/<wnid>/images/*.JPEG`` (ImageFolder
finds images in sub-folders). For ``val``, mdistiller needs the images sorted into
``val/<wnid>/``; the official layout, ``val/images/*.JPEG`` listed in
``val/val_annotations.txt``, is read too (ours), so the downloaded archive works unpacked.
Class indices are the sorted wnids of ``train`` in both splits.
"""
from __future__ import annotations

import os
from typing import Any

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader

from kdharness.data.imagenet import ImageNetFolder
from kdharness.data.indexed import train_subset_positions
from kdharness.registry import register_dataset

FOLDER = "tiny-imagenet-200"
ANNOTATIONS = "val_annotations.txt"


class TinyImageNetVal(ImageNetFolder):
    """The official val split: ``images/*.JPEG`` labelled by ``val_annotations.txt``.

    An ImageFolder in all but the file walk, so it has the same attributes (``samples``,
    ``targets``, ``classes``, ``class_to_idx``) and ``keep``.
    """

    def __init__(self, folder: str, classes: list[str]) -> None:
        # Not ImageFolder.__init__: the class list comes from train, the samples from the file.
        self.root, self.loader = folder, default_loader
        self.transform = self.target_transform = self.transforms = None
        self.classes = list(classes)
        self.class_to_idx = {wnid: i for i, wnid in enumerate(self.classes)}
        samples = []
        with open(os.path.join(folder, ANNOTATIONS)) as handle:
            for line_number, line in enumerate(handle, 1):
                fields = line.split("\t")
                if len(fields) < 2:
                    continue
                image, wnid = fields[0], fields[1].strip()
                if wnid not in self.class_to_idx:
                    raise ValueError(
                        f"{os.path.join(folder, ANNOTATIONS)}:{line_number}: class {wnid!r} is not a train class folder"
                    )
                samples.append((os.path.join(folder, "images", image), self.class_to_idx[wnid]))
        self.samples = self.imgs = sorted(samples)
        self.targets = [target for _, target in self.samples]


def _split_folder(cfg: Any, split: str) -> str:
    folder = os.path.join(os.path.expanduser(str(cfg.DATASET.ROOT)), FOLDER, split)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"Tiny-ImageNet {split} folder {folder!r} does not exist (DATASET.ROOT = {cfg.DATASET.ROOT!r}); "
            f"expected DATASET.ROOT/{FOLDER}/{{train,val}} as in mdistiller (unpack tiny-imagenet-200.zip there)"
        )
    return folder


@register_dataset("tiny_imagenet")
def build_tiny_imagenet(cfg: Any, train: bool) -> ImageFolder:
    """The raw split: ``(PIL RGB 64x64, class index)``, classes the sorted train wnids."""
    train_folder = _split_folder(cfg, "train")
    if train:
        dataset = ImageNetFolder(train_folder)
    else:
        classes = sorted(entry.name for entry in os.scandir(train_folder) if entry.is_dir())
        val_folder = _split_folder(cfg, "val")
        if os.path.isfile(os.path.join(val_folder, ANNOTATIONS)) and os.path.isdir(os.path.join(val_folder, "images")):
            dataset = TinyImageNetVal(val_folder, classes)
        else:
            dataset = ImageNetFolder(val_folder)
            if dataset.classes != classes:
                raise ValueError(
                    f"Tiny-ImageNet val folder {val_folder!r} has {len(dataset.classes)} class folders that differ "
                    f"from train's {len(classes)}; both splits need the same wnid folders"
                )
    positions = train_subset_positions(cfg, train, dataset.targets)
    if positions is not None:
        dataset.keep(positions)
    return dataset
