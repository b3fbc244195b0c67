"""CIFAR-100 from torchvision's python-pickle layout: ``DATASET.ROOT/cifar-100-python/``.

torchvision's loader verifies each file's md5 against the official archive. We check
only that the files exist: a re-packed copy (another pickle protocol, a mirror that
re-serialised the arrays) or a test fixture holds the same data with another checksum,
and the pickles are parsed and shape-checked anyway. The official download path still
checks the archive's md5 (torchvision's ``download_and_extract_archive``).
"""
from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np

from torchvision.datasets import CIFAR100 as _TorchvisionCIFAR100

from kdharness.data.indexed import train_subset_positions
from kdharness.registry import register_dataset

FOLDER = _TorchvisionCIFAR100.base_folder  # "cifar-100-python"
_BY_HAND = (
    f"download {_TorchvisionCIFAR100.url} (on any machine with network access) and extract it so that "
    f"DATASET.ROOT contains {FOLDER}/{{train,test,meta}}"
)
HOW_TO_GET = f"set DATASET.DOWNLOAD True on a machine with network access, or {_BY_HAND}"


class CIFAR100(_TorchvisionCIFAR100):
    """torchvision's CIFAR-100 with existence checks instead of md5 checks (see module doc).

    Attributes added for the harness: ``num_classes`` (100, from the meta file).
    """

    def _files(self) -> list[str]:
        names = [name for name, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        return [os.path.join(self.root, self.base_folder, name) for name in names]

    def _check_integrity(self) -> bool:
        return all(os.path.isfile(path) for path in self._files())

    def _load_meta(self) -> None:
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        with open(path, "rb") as infile:
            data = pickle.load(infile, encoding="latin1")
        self.classes = data[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def source(self) -> str:
        """The pickle this split was read from (logged at start-up)."""
        name = (self.train_list if self.train else self.test_list)[0][0]
        return os.path.join(self.root, self.base_folder, name)

    def keep(self, positions: list[int]) -> None:
        """Keep the samples at ``positions`` (``DATASET.TRAIN_SUBSET``), images and targets alike."""
        self.data = self.data[np.asarray(positions, dtype=np.int64)]
        self.targets = [self.targets[p] for p in positions]


def _missing(root: str) -> list[str]:
    folder = os.path.join(root, FOLDER)
    names = [name for name, _ in CIFAR100.train_list + CIFAR100.test_list] + [CIFAR100.meta["filename"]]
    return [name for name in names if not os.path.isfile(os.path.join(folder, name))]


@register_dataset("cifar100")
def build_cifar100(cfg: Any, train: bool) -> CIFAR100:
    """The raw CIFAR-100 split: ``(PIL RGB 32x32, fine label)`` items, ``num_classes`` 100."""
    root = os.path.expanduser(str(cfg.DATASET.ROOT))
    expected = os.path.join(root, FOLDER)
    if _missing(root) and cfg.DATASET.DOWNLOAD:
        try:
            os.makedirs(root, exist_ok=True)
            CIFAR100(root, train=train, download=True)
        except Exception as error:  # no network, proxy, disk: all mean "not here"
            raise FileNotFoundError(
                f"CIFAR-100 is not under DATASET.ROOT = {cfg.DATASET.ROOT!r} (expected {expected}/) "
                f"and downloading it failed ({type(error).__name__}: {error}); {_BY_HAND}"
            ) from error
    missing = _missing(root)
    if missing:
        raise FileNotFoundError(
            f"CIFAR-100 is not under DATASET.ROOT = {cfg.DATASET.ROOT!r}: expected {expected}/ "
            f"with {', '.join(missing)}; DATASET.DOWNLOAD is False. To get it: {HOW_TO_GET}"
        )
    try:
        dataset = CIFAR100(root, train=train, download=False)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:
        raise ValueError(
            f"CIFAR-100 files in {expected}/ are unreadable ({type(error).__name__}: {error}); "
            f"expected torchvision's python pickles with 'data' uint8 [N, 3072] and 'fine_labels'. "
            f"Delete the folder and {HOW_TO_GET}"
        ) from error
    positions = train_subset_positions(cfg, train, dataset.targets)
    if positions is not None:
        dataset.keep(positions)
    return dataset
