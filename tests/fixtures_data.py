"""Small datasets written in the real on-disk formats, for tests that read them back.

Each writer is deterministic (a seeded numpy Generator), takes milliseconds, and draws
class-dependent images a small network learns in a few epochs: the trainer's end-to-end
tests rely on accuracy rising above chance. Every writer returns the directory to put in
``DATASET.ROOT``. Import it as ``from fixtures_data import ...``: pytest puts ``tests/`` on
``sys.path`` (there is no ``tests/__init__.py``), whether run as ``pytest`` or ``python -m pytest``.
"""
from __future__ import annotations

import colorsys
import gzip
import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def class_colours(num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` uint8 RGB colours, spread over hue and two brightness levels."""
    colours = []
    for c in range(num_classes):
        hue = (c * 0.618033988749895) % 1.0  # golden-ratio steps keep neighbours apart
        value = 0.95 if c % 2 == 0 else 0.55
        colours.append([round(255 * x) for x in colorsys.hsv_to_rgb(hue, 0.85, value)])
    return np.asarray(colours, dtype=np.uint8)


def _colour_images(labels: np.ndarray, colours: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``[N, size, size, 3]`` uint8: the class colour plus mild noise, on a dark border."""
    base = colours[labels][:, None, None, :].astype(np.int16)
    noise = rng.integers(-20, 21, size=(len(labels), size, size, 3), dtype=np.int16)
    images = np.clip(base + noise, 0, 255).astype(np.uint8)
    images[:, :2, :, :] = images[:, -2:, :, :] = 0
    return images


def write_cifar100_fixture(
    root: str | os.PathLike,
    n_train: int = 200,
    n_test: int = 100,
    seed: int = 0,
    num_classes: int = 10,
) -> Path:
    """``root/cifar-100-python/{train,test,meta}`` as torchvision's CIFAR100 reads them.

    Labels cycle through the first ``num_classes`` of the 100 fine classes (default 10, so
    200 training images give 20 per class, enough to learn); the meta file still lists all
    100 names, so ``num_classes`` of the dataset is 100 as for the real one.
    """
    if not 1 <= num_classes <= 100:
        raise ValueError(f"num_classes = {num_classes}; expected 1..100")
    root = Path(root)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = class_colours(num_classes)
    for name, count in (("train", n_train), ("test", n_test)):
        labels = np.arange(count) % num_classes
        labels = labels[rng.permutation(count)]
        images = _colour_images(labels, colours, 32, rng)
        entry = {
            "filenames": [f"fixture_{name}_{i}.png" for i in range(count)],
            "batch_label": f"{name} fixture",
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(),
            # CIFAR's row layout: 1024 red, 1024 green, 1024 blue values per image
            "data": images.transpose(0, 3, 1, 2).reshape(count, 3072),
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle, protocol=2)
    meta = {
        "fine_label_names": [f"class_{i:02d}" for i in range(100)],
        "coarse_label_names": [f"superclass_{i:02d}" for i in range(20)],
    }
    with open(folder / "meta", "wb") as handle:
        pickle.dump(meta, handle, protocol=2)
    return root


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file's bytes for a uint8 array: magic 0x0000 08 <ndim>, big-endian dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def fashion_pattern(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[N, 28, 28]`` uint8: class c is a bright bar whose height and brightness grow with c.

    Horizontal bars survive the horizontal flip and the 4-pixel crop; the brightness step
    alone separates the classes after global pooling.
    """
    images = rng.integers(0, 30, size=(len(labels), 28, 28), dtype=np.int16)
    for i, c in enumerate(labels):
        top = 4 + c
        images[i, top : top + 6 + c, 4:24] += 60 + 18 * int(c)
    return np.clip(images, 0, 255).astype(np.uint8)


def write_fashion_mnist_fixture(
    root: str | os.PathLike,
    n_train: int = 300,
    n_test: int = 100,
    seed: int = 0,
    compressed: bool = True,
) -> Path:
    """The four Fashion-MNIST idx files in ``root`` (gzip'd, or the plain names)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, count in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(count) % 10)[rng.permutation(count)].astype(np.uint8)
        for kind, array in (("images-idx3", fashion_pattern(labels, rng)), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            data = idx_bytes(array)
            if compressed:
                # mtime=0: identical bytes on every run
                with open(root / (name + ".gz"), "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
                    handle.write(data)
            else:
                (root / name).write_bytes(data)
    return root


def write_imagefolder_fixture(
    root: str | os.PathLike,
    classes: int = 3,
    per_class: int = 4,
    size: int = 40,
    seed: int = 0,
) -> Path:
    """``root/{train,val}/class_<i>/<j>.png``: the ImageNet layout, with tiny colour images."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    colours = class_colours(classes)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            images = _colour_images(np.full(per_class, c), colours, size, rng)
            for j, image in enumerate(images):
                Image.fromarray(image).save(folder / f"{j:03d}.png")
    return root
