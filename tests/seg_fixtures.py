"""Tiny segmentation datasets written in the real on-disk formats (PNG/JPEG through PIL).

- Cityscapes: ``leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png`` (RGB) and
  ``gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png`` (grayscale labelIds 0..33);
- Pascal VOC 2012: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNGs,
  255 on borders), ``ImageSets/Segmentation/{train,val}.txt``; with ``aug`` also
  ``SegmentationClassAug/<id>.png`` (grayscale) and ``train_aug.txt``.

Each image is painted by its labels (one colour per label, plus noise), so a model can
learn it, and every writer returns the labels it wrote, to check the loaders against.
Deterministic (seeded numpy Generators).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Cityscapes labelIds the fixture paints: some of the 19 evaluated classes and some that map
# to the ignore index (0 unlabeled, 1 ego vehicle, 4 static, 9 parking).
CITYSCAPES_IDS = (0, 1, 4, 7, 8, 9, 11, 21, 23, 24, 26, 33)


def _paint(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[H, W, 3]`` uint8: a colour per label value, plus mild noise."""
    hue = (labels.astype(np.int64) * 37) % 256
    image = np.stack([hue, (hue * 3) % 256, 255 - hue], axis=-1).astype(np.int16)
    image += rng.integers(-10, 11, size=image.shape, dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def _blocks(height: int, width: int, values: np.ndarray, rng: np.random.Generator, block: int = 8) -> np.ndarray:
    """A label map of ``block x block`` tiles, each a random choice of ``values``."""
    tiles = rng.choice(values, size=(-(-height // block), -(-width // block)))
    return np.kron(tiles, np.ones((block, block), dtype=tiles.dtype))[:height, :width].astype(np.uint8)


def write_cityscapes_fixture(root: str | Path, size: tuple[int, int] = (32, 64), seed: int = 0,
                             per_city: int = 2, cities: dict[str, tuple[str, ...]] | None = None) -> dict[str, list[np.ndarray]]:
    """Cityscapes under ``root``; returns the labelId maps per split, in the loader's order (sorted paths)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    cities = cities or {"train": ("aachen", "bochum"), "val": ("frankfurt",)}
    written: dict[str, list[np.ndarray]] = {}
    for split, names in cities.items():
        written[split] = []
        for city in sorted(names):
            for i in range(per_city):
                stem = f"{city}_{i:06d}_000019"
                labels = _blocks(*size, np.asarray(CITYSCAPES_IDS), rng)
                image_dir = root / "leftImg8bit" / split / city
                label_dir = root / "gtFine" / split / city
                image_dir.mkdir(parents=True, exist_ok=True)
                label_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_paint(labels, rng)).save(image_dir / f"{stem}_leftImg8bit.png")
                Image.fromarray(labels).save(label_dir / f"{stem}_gtFine_labelIds.png")
                # the other gtFine files of the real archive, which the loader must leave alone
                Image.fromarray(labels).save(label_dir / f"{stem}_gtFine_instanceIds.png")
                written[split].append(labels)
    return written


def voc_palette() -> list[int]:
    """VOC's colour map (bit-interleaved), 256 RGB entries flattened, as its PNGs carry it."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(8):
            r |= ((c >> 0) & 1) << (7 - shift)
            g |= ((c >> 1) & 1) << (7 - shift)
            b |= ((c >> 2) & 1) << (7 - shift)
            c >>= 3
        palette += [r, g, b]
    return palette


def write_voc_fixture(root: str | Path, sizes: dict[str, list[tuple[int, int]]] | None = None, seed: int = 0,
                      aug: bool = False) -> dict[str, list[np.ndarray]]:
    """A VOC2012 folder at ``root`` (``JPEGImages``, ``SegmentationClass``, lists); returns the class
    maps per list (``train``, ``val``, and ``train_aug`` with ``aug``), in list order."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    sizes = sizes or {"train": [(40, 48)] * 4, "val": [(40, 48), (36, 52)]}
    if aug:
        sizes = {**sizes, "train_aug": [(40, 48)] * 6}
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    written: dict[str, list[np.ndarray]] = {}
    for split, shapes in sizes.items():
        ids, written[split] = [], []
        for i, (height, width) in enumerate(shapes):
            image_id = f"2007_{split}_{i:04d}"
            labels = _blocks(height, width, np.arange(21), rng)
            labels[0, :] = 255  # VOC's object borders: the ignore index
            Image.fromarray(_paint(labels, rng)).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
            if split == "train_aug":
                Image.fromarray(labels).save(root / "SegmentationClassAug" / f"{image_id}.png")
            else:
                mask = Image.new("P", (width, height))  # a palette PNG whose indices are the classes
                mask.putpalette(voc_palette())
                mask.putdata(labels.reshape(-1).tolist())
                mask.save(root / "SegmentationClass" / f"{image_id}.png")
            ids.append(image_id)
            written[split].append(labels)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return written
