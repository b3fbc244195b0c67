"""`IndexedDataset`: what the loaders iterate, with reproducible per-sample randomness.

mdistiller draws its augmentation from each worker's global RNG, so a run cannot be
resumed exactly and depends on the worker count. Here a sample requested as
``(epoch, index)`` seeds its own RNGs from ``(seed, epoch, index)``: the crop, the flip
and CRD's negatives are the same whichever worker, process or resume produced them.
The global RNG states are restored afterwards, so nothing else in the process notices.

It also carries mdistiller's ``CIFAR100InstanceSample`` semantics (the index and CRD's
contrastive indices) for every dataset, not only CIFAR-100.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from kdharness.config import SEGMENTATION, ConfigError

CRD_MODES = ("exact", "relax")

# Domain tags keep the seeds of the different consumers apart: the sampler's permutation
# for (seed, epoch) must not equal a sample's augmentation seed for some (epoch, index).
_AUGMENT_DOMAIN = 0x6A09E667
SAMPLER_DOMAIN = 0xBB67AE85


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from several non-negative integers.

    ``seed + epoch`` (DistributedSampler's choice) collides across runs: seed 0 at
    epoch 1 equals seed 1 at epoch 0. numpy's SeedSequence hashes the whole tuple.
    """
    words = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


@contextmanager
def _isolated_rng(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator and ``random``; restore both afterwards.

    ``torch.default_generator.manual_seed`` rather than ``torch.manual_seed``: the latter
    also (lazily) seeds every accelerator, ~0.45 ms per call, and transforms draw from the
    CPU generator only. numpy's legacy global RNG is deliberately left alone: saving and
    restoring its state costs ~0.17 ms per sample and torchvision never draws from it; CRD
    uses its own ``numpy.random.Generator`` seeded from the same number.
    """
    torch_state = torch.get_rng_state()
    random_state = random.getstate()
    try:
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(random_state)


def train_subset_positions(cfg: Any, train: bool, targets: Sequence[int]) -> list[int] | None:
    """Which samples a raw dataset keeps under ``DATASET.TRAIN_SUBSET``; None keeps all.

    Only the training split is cut; the validation split always stays whole, so accuracy
    stays comparable across subset sizes. By default the subset is the first N samples;
    with ``DATASET.TRAIN_SUBSET_BALANCED`` it is the first N / C samples of each of the C
    classes, in dataset order (a small subset of a dataset whose order is not shuffled, or
    a converged-regime study, needs every class equally). A subset larger than the split, or
    a balanced one that is not a multiple of the class count or that a class cannot fill, is
    refused rather than clamped: it is almost always a typo or a wrong ROOT.
    """
    wanted = int(cfg.DATASET.TRAIN_SUBSET)
    total = len(targets)
    if not train or wanted <= 0:
        return None
    where = f"the {cfg.DATASET.TYPE} training set under DATASET.ROOT = {cfg.DATASET.ROOT!r}"
    if wanted > total:
        raise ConfigError(
            f"DATASET.TRAIN_SUBSET = {wanted}, but {where} has only {total} samples; expected 0 (all) or <= {total}"
        )
    if not cfg.DATASET.get("TRAIN_SUBSET_BALANCED", False):
        return list(range(wanted))
    labels = np.asarray(targets, dtype=np.int64)
    classes = np.unique(labels)
    if wanted % len(classes):
        raise ConfigError(
            f"DATASET.TRAIN_SUBSET = {wanted} with DATASET.TRAIN_SUBSET_BALANCED True: {where} has "
            f"{len(classes)} classes; expected a multiple of {len(classes)}"
        )
    per_class = wanted // len(classes)
    counts = np.bincount(labels)
    short = [int(c) for c in classes if counts[c] < per_class]
    if short:
        raise ConfigError(
            f"DATASET.TRAIN_SUBSET = {wanted} with DATASET.TRAIN_SUBSET_BALANCED True needs {per_class} samples "
            f"per class, but class {short[0]} of {where} has only {int(counts[short[0]])}"
        )
    # the first `per_class` positions of each class, then back in dataset order
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    chosen = np.concatenate([order[starts[c] : starts[c] + per_class] for c in classes])
    return sorted(int(p) for p in chosen)


class IndexedDataset(torch.utils.data.Dataset):
    """A raw dataset plus transform, returning indices and (optionally) CRD's samples.

    A segmentation raw dataset (``raw.task == "segmentation"``: ``__getitem__(i) -> (PIL
    image, PIL mask)``, no ``targets``) gives ``(image, mask, index)`` instead, ``mask`` an
    int64 ``[H, W]`` tensor: the trainer's batches keep their shape, the target is a mask.

    Args:
        raw: ``__getitem__(i) -> (PIL image, int)``, ``targets``, ``num_classes``; or a
            segmentation dataset (above).
        transform: applied to the PIL image (segmentation: to the image and mask together,
            `kdharness.data.seg_transforms`); a plain attribute, so ``copy.copy(ds)``
            followed by ``view.transform = test_transform`` is an un-augmented view that
            shares everything else.
        seed: the run's seed; with an ``(epoch, index)`` key the randomness is a pure
            function of ``(seed, epoch, index)``.
        with_index: also return the sample index (mdistiller's CRD and memory banks need it).
        crd_k: number of CRD negatives; ``None`` returns no contrastive indices.
        crd_mode: ``"exact"`` (the positive is the sample itself) or ``"relax"`` (a random
            sample of the same class), as mdistiller's ``CIFAR100InstanceSample``.
    """

    def __init__(
        self,
        raw: Any,
        transform: Callable[[Any], Any] | None,
        seed: int = 0,
        with_index: bool = True,
        crd_k: int | None = None,
        crd_mode: str = "exact",
    ) -> None:
        self.raw = raw
        self.transform = transform
        self.seed = int(seed)
        self.with_index = with_index
        self.crd_k = None if crd_k is None else int(crd_k)
        self.crd_mode = crd_mode
        self.segmentation = getattr(raw, "task", "classification") == SEGMENTATION
        # segmentation: no class per image (the masks are the targets)
        self.targets: list[int] = [] if self.segmentation else [int(t) for t in raw.targets]
        self.num_classes: int = int(raw.num_classes)
        self._length = len(raw)
        if not self.segmentation and len(self.targets) != self._length:
            raise ValueError(f"raw dataset has {len(raw)} samples but {len(self.targets)} targets")
        if self.segmentation and self.crd_k is not None:
            raise ConfigError(
                "CRD's contrastive samples need one class per image; a segmentation dataset has none "
                "(DISTILLER.TYPE CRD, or ICKD.BASE CRD, with DATASET.TASK segmentation)"
            )
        if self.crd_k is not None:
            self._build_class_index()

    def _build_class_index(self) -> None:
        """Sort indices by class once, so sampling "any sample of another class" is O(k).

        mdistiller keeps, per class, a Python list of every sample of the other classes
        (num_classes x N entries, ~5M for CIFAR-100); a stable class-sorted order with
        per-class ranges gives the same uniform distribution in O(N) memory.
        """
        if self.crd_mode not in CRD_MODES:
            raise ConfigError(f"CRD.MODE = {self.crd_mode!r}; allowed: {', '.join(CRD_MODES)}")
        if self.crd_k <= 0:
            raise ConfigError(f"CRD.NCE.K = {self.crd_k}; expected a number > 0")
        targets = np.asarray(self.targets, dtype=np.int64)
        if targets.size and (targets.min() < 0 or targets.max() >= self.num_classes):
            raise ValueError(
                f"targets must lie in [0, {self.num_classes}); saw {targets.min()}..{targets.max()}"
            )
        self._order = np.argsort(targets, kind="stable")
        counts = np.bincount(targets, minlength=self.num_classes)
        self._class_start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self._class_count = counts.astype(np.int64)
        if len(targets) and (counts == len(targets)).any():
            raise ValueError(
                "CRD needs negatives from other classes, but every sample has the same class "
                f"({int(targets[0])}); check DATASET.TRAIN_SUBSET / DATASET.ROOT"
            )

    def __len__(self) -> int:
        return self._length

    def contrastive_index(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """``[positive, k negatives]`` as int64, mdistiller's ``sample_idx``.

        Negatives are uniform over the samples of other classes, without replacement
        unless k exceeds their number (as mdistiller).
        """
        target = self.targets[index]
        start = int(self._class_start[target])
        count = int(self._class_count[target])
        if self.crd_mode == "exact":
            positive = index
        else:
            positive = int(self._order[start + rng.integers(count)])
        pool = len(self.targets) - count
        picks = rng.choice(pool, size=self.crd_k, replace=self.crd_k > pool)
        # positions in the class-sorted order, skipping this class's block [start, start+count)
        picks = np.where(picks < start, picks, picks + count)
        return np.concatenate([[positive], self._order[picks]]).astype(np.int64)

    def _parse_key(self, key: Any) -> tuple[int | None, int]:
        if isinstance(key, (tuple, list)):
            if len(key) != 2:
                raise TypeError(f"key must be an int or an (epoch, index) pair; got {key!r}")
            epoch, index = int(key[0]), int(key[1])
        else:
            epoch, index = None, int(key)
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range for a dataset of {self._length} samples")
        return epoch, index

    def __getitem__(self, key: int | tuple[int, int]) -> tuple:
        epoch, index = self._parse_key(key)
        if epoch is None:
            # no reproducibility requested: draw from the global torch RNG, which
            # DataLoader seeds differently in each worker
            return self._load(index, None)
        seed = mix_seed(_AUGMENT_DOMAIN, self.seed, epoch, index)
        with _isolated_rng(seed):
            return self._load(index, seed)

    def _load(self, index: int, seed: int | None) -> tuple:
        if self.segmentation:
            image, mask = self.raw[index]
            if self.transform is not None:
                image, mask = self.transform(image, mask)
            return (image, mask, index) if self.with_index else (image, mask)
        image, target = self.raw[index]
        if self.transform is not None:
            image = self.transform(image)
        target = int(target)
        if not self.with_index:
            return image, target
        if self.crd_k is None:
            return image, target, index
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        return image, target, index, self.contrastive_index(index, np.random.default_rng(seed))

    def __repr__(self) -> str:
        extra = f", crd_k={self.crd_k}, crd_mode={self.crd_mode!r}" if self.crd_k is not None else ""
        return (
            f"{type(self).__name__}(n={len(self)}, num_classes={self.num_classes}, seed={self.seed}, "
            f"with_index={self.with_index}{extra}, raw={type(self.raw).__name__})"
        )

