"""Fashion-MNIST from its original idx files, shaped like CIFAR (3x32x32) for CIFAR models.

We parse idx ourselves (no torchvision ``FashionMNIST``) because the files come from three
places with different layouts: a plain folder, torchvision's ``FashionMNIST/raw`` download,
and Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``), which
works offline. Each 28x28 grayscale image is zero-padded by 2 pixels to 32x32 and repeated
to 3 channels, so every CIFAR student and teacher runs unchanged.
"""
from __future__ import annotations

import gzip
import os
import zlib
from typing import Any

import numpy as np
from PIL import Image

from kdharness.config import CFG
from kdharness.data.indexed import train_subset_positions
from kdharness.registry import register_dataset

NUM_CLASSES = 10
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# The system copy, used when DATASET.ROOT is left at its default and holds no Fashion-MNIST;
# a module attribute so tests can redirect it.
SYSTEM_DIRS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)
PAD = 2
HOW_TO_GET = (
    "install Debian's package (apt-get install dataset-fashion-mnist), or run "
    "torchvision.datasets.FashionMNIST(DATASET.ROOT, download=True), or copy the four "
    "*-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist into DATASET.ROOT"
)

_IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: str) -> np.ndarray:
    """An idx file (gzip'd or not) as a numpy array, with its header checked.

    The header is two zero bytes, a dtype code (0x08 = uint8), the number of dimensions,
    then one big-endian uint32 per dimension. A bad magic or a payload shorter or longer
    than the dimensions say means a corrupt or wrong file; the error names it.
    """
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                raw = handle.read()
        else:
            with open(path, "rb") as handle:
                raw = handle.read()
    except (EOFError, OSError, zlib.error) as error:  # truncated / not gzip
        raise ValueError(f"{path}: cannot read ({type(error).__name__}: {error}); {HOW_TO_GET}") from error
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an idx header; {HOW_TO_GET}")
    zero, dtype_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or dtype_code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise ValueError(
            f"{path}: bad idx magic number 0x{int.from_bytes(raw[:4], 'big'):08x}; expected "
            "0x00000801 (labels) or 0x00000803 (images)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header ({len(raw)} bytes, expected {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise ValueError(
            f"{path}: idx dims {dims} need {expected} bytes, the file has {len(raw)} "
            f"({'truncated' if len(raw) < expected else 'trailing data'}); {HOW_TO_GET}"
        )
    return np.frombuffer(raw, dtype=_IDX_DTYPES[dtype_code], offset=header).reshape(dims)


def root_dirs(root: str) -> list[str]:
    """The layouts looked at under ``DATASET.ROOT``, in order."""
    root = os.path.expanduser(root)
    return [root, os.path.join(root, "fashion-mnist"), os.path.join(root, "FashionMNIST", "raw")]


def search_dirs(root: str) -> list[str]:
    """Every folder looked at, in order: ROOT's layouts, then (default ROOT only) the system copy."""
    return root_dirs(root) + (list(SYSTEM_DIRS) if is_default_root(root) else [])


def is_default_root(root: str) -> bool:
    """Whether ``root`` is ``DATASET.ROOT``'s default, the only root that may use the system copy."""
    return os.path.normpath(os.path.expanduser(root)) == os.path.normpath(CFG.DATASET.ROOT)


def _find(folder: str, stem: str) -> str | None:
    for name in (stem + ".gz", stem):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def _stems() -> list[str]:
    return [*FILES[True], *FILES[False]]


def find_files(root: str, train: bool) -> tuple[str, str]:
    """The (images, labels) paths of the split, both splits always from one folder.

    The folder is the first of ROOT's layouts holding any Fashion-MNIST file, and it must
    hold all four: a ROOT with the train files only is an error naming the missing ones,
    never a silent mix with another copy. Only the default ROOT (``./data``), when it holds
    no Fashion-MNIST file at all, falls back to the system copy; any other ROOT is the
    user's choice and a mistyped one is an error, never a run on other data.
    """
    for folder in root_dirs(root):
        found = {stem: _find(folder, stem) for stem in _stems()}
        if any(found.values()):
            missing = [stem + "[.gz]" for stem, path in found.items() if path is None]
            if missing:
                raise FileNotFoundError(
                    f"DATASET.ROOT = {root!r}: {folder} holds part of Fashion-MNIST but lacks "
                    f"{', '.join(missing)}; put all four files there, or point DATASET.ROOT to a "
                    f"complete copy. To get them: {HOW_TO_GET}"
                )
            return found[FILES[train][0]], found[FILES[train][1]]
    if is_default_root(root):
        for folder in SYSTEM_DIRS:
            found = {stem: _find(folder, stem) for stem in _stems()}
            if all(found.values()):
                return found[FILES[train][0]], found[FILES[train][1]]
    images_stem, labels_stem = FILES[train]
    complete = [d for d in SYSTEM_DIRS if all(_find(d, stem) for stem in _stems())]
    hint = f" A complete copy is in {complete[0]}: set DATASET.ROOT to it." if complete else ""
    raise FileNotFoundError(
        f"Fashion-MNIST {'train' if train else 'test'} files {images_stem}[.gz] and {labels_stem}[.gz] "
        f"not found under DATASET.ROOT = {root!r}; searched {', '.join(search_dirs(root))}.{hint} "
        f"To get them: {HOW_TO_GET}"
    )


class FashionMNIST:
    """Raw Fashion-MNIST split: ``(PIL RGB 32x32, label)`` items.

    Keeps the 28x28 uint8 array (47 MB for train) and pads per item: padding all of it
    up front would cost 3.5x the memory in every DataLoader worker.
    """

    num_classes = NUM_CLASSES
    classes = CLASSES

    def __init__(self, images_path: str, labels_path: str) -> None:
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(f"{images_path}: image dims {images.shape}; expected (N, 28, 28)")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(
                f"{labels_path}: {labels.shape} labels for {len(images)} images in {images_path}; "
                "expected one label per image"
            )
        if labels.size and labels.max() >= NUM_CLASSES:
            raise ValueError(f"{labels_path}: label {int(labels.max())} >= {NUM_CLASSES}")
        self.images_path, self.labels_path = images_path, labels_path
        self.data = images
        self.targets: list[int] = labels.astype(np.int64).tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        padded = np.pad(self.data[index], PAD)
        return Image.fromarray(np.repeat(padded[:, :, None], 3, axis=2)), self.targets[index]

    @property
    def source(self) -> str:
        """The files this split was read from (logged at start-up)."""
        return f"{self.images_path}, {self.labels_path}"

    def keep(self, positions: list[int]) -> None:
        """Keep the samples at ``positions`` (``DATASET.TRAIN_SUBSET``), in that order."""
        self.data = self.data[np.asarray(positions, dtype=np.int64)]
        self.targets = [self.targets[p] for p in positions]

    def __repr__(self) -> str:
        return f"FashionMNIST(n={len(self)}, images={self.images_path!r})"


@register_dataset("fashion_mnist")
def build_fashion_mnist(cfg: Any, train: bool) -> FashionMNIST:
    """The raw split found under ``DATASET.ROOT`` (or the system copy); 10 classes."""
    dataset = FashionMNIST(*find_files(str(cfg.DATASET.ROOT), train))
    positions = train_subset_positions(cfg, train, dataset.targets)
    if positions is not None:
        dataset.keep(positions)
    return dataset
