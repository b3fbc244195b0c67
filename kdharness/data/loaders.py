"""From a config to the two DataLoaders the trainer iterates (mdistiller's ``get_dataset``).

mdistiller returns ``(train_loader, val_loader, num_data, num_classes)`` in one call; we
split it in two so that `tools/train.py` can build the datasets (and hand ``num_data`` to
CRD-like distillers) before it knows the rank and world size of a distributed run.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from kdharness.config import is_segmentation
from kdharness.data.indexed import IndexedDataset, mix_seed
from kdharness.data.sampler import EpochSampler
from kdharness.data.transforms import build_dataset_transform
from kdharness.engine.utils import log_msg
from kdharness.registry import dataset_dict

_LOADER_DOMAIN = 0x3C6EF372


def uses_crd(cfg: Any) -> bool:
    """Whether the train set must return CRD's contrastive indices.

    True for ``DISTILLER.TYPE == "CRD"`` and for methods that run on top of CRD and say so
    in their own node (``ICKD.BASE == "CRD"``); the host knows the plugin's node only by name.
    """
    if cfg.DISTILLER.TYPE == "CRD":
        return True
    return "ICKD" in cfg and cfg.ICKD.get("BASE", None) == "CRD"


def build_datasets(cfg: Any, log: bool = True) -> tuple[IndexedDataset, IndexedDataset, int]:
    """``(train_set, val_set, num_classes)`` for ``cfg.DATASET``.

    The train set is augmented and returns indices (plus CRD's when `uses_crd`); the val set
    returns ``(image, target)`` with the test transform, as mdistiller's. With ``log``, prints
    where each split was read from (a raw dataset's ``source``), so the log shows which copy
    of the data a run used.
    """
    builder = dataset_dict[cfg.DATASET.TYPE]
    raw_train, raw_val = builder(cfg, True), builder(cfg, False)
    if log:
        for split, raw in (("train", raw_train), ("val", raw_val)):
            source = getattr(raw, "source", type(raw).__name__)
            print(log_msg(f"{cfg.DATASET.TYPE} {split} split: {len(raw)} samples read from {source}", "INFO"))
    if raw_train.num_classes != raw_val.num_classes:
        raise ValueError(
            f"DATASET.TYPE = {cfg.DATASET.TYPE!r}: the train split has {raw_train.num_classes} classes "
            f"and the val split {raw_val.num_classes}; check DATASET.ROOT = {cfg.DATASET.ROOT!r}"
        )
    crd = uses_crd(cfg)
    train_set = IndexedDataset(
        raw_train,
        build_dataset_transform(cfg, train=True),
        seed=cfg.EXPERIMENT.SEED,
        with_index=True,
        crd_k=cfg.CRD.NCE.K if crd else None,
        crd_mode=cfg.CRD.MODE,
    )
    val_set = IndexedDataset(
        raw_val, build_dataset_transform(cfg, train=False), seed=cfg.EXPERIMENT.SEED, with_index=False
    )
    return train_set, val_set, train_set.num_classes


def _loader_generator(cfg: Any, tag: int) -> torch.Generator:
    """DataLoader draws a base seed per iterator; a private generator keeps that draw off the
    global RNG, so iterating a loader never shifts the model's random stream."""
    generator = torch.Generator()
    generator.manual_seed(mix_seed(_LOADER_DOMAIN, cfg.EXPERIMENT.SEED, tag))
    return generator


def build_loaders(
    cfg: Any,
    train_set: IndexedDataset,
    val_set: IndexedDataset,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[DataLoader, DataLoader]:
    """``(train_loader, val_loader)``; ``train_loader.sampler`` is the `EpochSampler`.

    Train batches are ``SOLVER.BATCH_SIZE`` per rank, the last one possibly smaller
    (mdistiller's ``shuffle=True`` loader does not drop it). Validation is sequential with
    ``DATASET.TEST.BATCH_SIZE`` over the whole val set on every rank.
    """
    workers = int(cfg.DATASET.NUM_WORKERS)
    common = dict(
        num_workers=workers,
        pin_memory=bool(cfg.DATASET.PIN_MEMORY) and torch.cuda.is_available(),
        persistent_workers=bool(cfg.DATASET.PERSISTENT_WORKERS) and workers > 0,
    )
    sampler = EpochSampler(
        len(train_set), seed=cfg.EXPERIMENT.SEED, shuffle=True, rank=rank, world_size=world_size, drop_last=False
    )
    train_loader = DataLoader(
        train_set,
        batch_size=int(cfg.SOLVER.BATCH_SIZE),
        sampler=sampler,
        drop_last=False,
        generator=_loader_generator(cfg, 0),
        **common,
    )
    val_loader = DataLoader(
        val_set,
        batch_size=int(cfg.DATASET.TEST.BATCH_SIZE),
        shuffle=False,
        drop_last=False,
        generator=_loader_generator(cfg, 1),
        collate_fn=eval_collate(cfg),
        **common,
    )
    return train_loader, val_loader


def eval_collate(cfg: Any):
    """The collate function of evaluation loaders: torch's default, which for segmentation
    first checks that a batch's images share one size (whole validation images of VOC do
    not), with an error naming ``DATASET.TEST.BATCH_SIZE``."""
    return collate_same_size if is_segmentation(cfg) else None


def collate_same_size(batch: list[tuple]) -> Any:
    sizes = sorted({tuple(sample[0].shape[-2:]) for sample in batch})
    if len(sizes) > 1:
        raise ValueError(
            f"a validation batch holds images of {len(sizes)} sizes ({', '.join(f'{h}x{w}' for h, w in sizes[:4])}); "
            "whole images are evaluated, so set DATASET.TEST.BATCH_SIZE 1 for a dataset whose images differ in size"
        )
    return torch.utils.data.default_collate(batch)


def build_train_eval_loader(cfg: Any, train_set: IndexedDataset, val_set: IndexedDataset) -> DataLoader:
    """The training samples through the test transform, in order, batched as the val loader.

    What `LOG.EVAL_TRAIN_SET` evaluates: how well the student fits the images it trains on,
    without augmentation. The running top-1 of an epoch is no substitute: it is measured on
    augmented images while the weights still change. It shares the raw data (no copy) and
    draws no random numbers (the test transform is deterministic), so turning it on does
    not change training.
    """
    view = IndexedDataset(train_set.raw, val_set.transform, seed=cfg.EXPERIMENT.SEED, with_index=False)
    workers = int(cfg.DATASET.NUM_WORKERS)
    return DataLoader(
        view,
        batch_size=int(cfg.DATASET.TEST.BATCH_SIZE),
        shuffle=False,
        drop_last=False,
        collate_fn=eval_collate(cfg),
        num_workers=workers,
        persistent_workers=bool(cfg.DATASET.PERSISTENT_WORKERS) and workers > 0,
        generator=_loader_generator(cfg, 2),
    )
