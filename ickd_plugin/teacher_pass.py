"""The pass that fills a bank: the network, in eval mode and without gradients, over the
training set seen without augmentation, keeping each sample's pooled feature.

The feature is the classifier's input, read by a forward hook (`ClassifierTap`), so one
forward pass per batch gives it whatever the model zoo. Features are written batch by batch
into one preallocated tensor: the pass holds the bank plus one batch, never a staging copy.
`extract_features` fills a whole (replicated) bank, every rank passing over its share and
broadcasting it; `extract_shard` fills the rows one rank of a sharded bank keeps.
"""
from __future__ import annotations

import sys
from typing import Any, Iterable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ickd_plugin.distributed import broadcast_shards, dist_world, shard_bounds
from ickd_plugin.features import ClassifierTap
from ickd_plugin.memory_bank import check_representable
from ickd_plugin.training_view import IndexedView


def progress_bar(loader: DataLoader, show: bool) -> Iterable:
    """The loader, wrapped in a tqdm bar when `show`, stderr is a terminal and tqdm is installed.

    Off a terminal (a sweep's log, CI) a bar's redraws are noise: the bank's one report line
    after the pass says what was built and how long it took."""
    if not show or not sys.stderr.isatty():
        return loader
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but the pass must not need it
        return loader
    return tqdm(loader, desc="[ICKD] memory bank pass", unit="batch", leave=False)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    classifier: nn.Module,
    dataset: Any,
    batch_size: int,
    num_workers: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One no-grad eval-mode pass: (pooled features [R, D], labels [R], dataset indices [R]).

    Rows are in dataset-position order; features are written batch by batch into one
    preallocated ``[R, D]`` tensor of ``dtype`` on ``device`` (default: the model's), so
    the pass never holds more than the bank plus one batch (an ImageNet bank of
    1.28M x 2048 in float16 is 5.2 GB; a float32 staging copy would be 10.5 GB more).
    In a distributed run each rank passes over a contiguous shard and `broadcast_shards`
    gives every rank the whole set. `progress` shows a bar on rank 0 (tqdm, on stderr).
    """
    rank, world = dist_world()
    model_device = next(model.parameters()).device
    device = torch.device(device) if device is not None else model_device
    length = len(dataset)
    start, stop = shard_bounds(length, rank, world)
    loader = DataLoader(
        IndexedView(dataset, range(start, stop)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=model_device.type == "cuda",
    )
    # empty, not zeros: every row is written once, by its rank's pass or by the broadcast.
    features = torch.empty(length, classifier.in_features, dtype=dtype, device=device)
    labels = torch.empty(length, dtype=torch.long, device=device)
    indices = torch.empty(length, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    row = start
    try:
        with ClassifierTap(classifier) as tap:
            for image, target, index in progress_bar(loader, progress and rank == 0):
                model(image.to(model_device, non_blocking=True))
                batch = tap.features
                if batch.shape[1] != features.shape[1]:
                    raise ValueError(
                        f"the classifier's input has {batch.shape[1]} features per sample, but its "
                        f"in_features is {features.shape[1]}"
                    )
                check_representable(batch, dtype, "filling the bank")
                features[row : row + batch.shape[0]].copy_(batch)
                labels[row : row + batch.shape[0]].copy_(torch.as_tensor(target))
                indices[row : row + batch.shape[0]].copy_(torch.as_tensor(index))
                row += batch.shape[0]
    finally:
        model.train(was_training)
    if row != stop:
        raise RuntimeError(
            f"the bank pass read {row - start} samples from {type(dataset).__name__}, but its "
            f"shard holds {stop - start} (len(dataset) = {length})"
        )
    broadcast_shards((features, labels, indices), length)
    return features, labels, indices


@torch.no_grad()
def extract_shard(
    model: nn.Module,
    classifier: nn.Linear,
    dataset: Any,
    start: int,
    stop: int,
    batch_size: int,
    num_workers: int,
    dtype: torch.dtype,
    device: torch.device | str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One no-grad eval-mode pass over positions ``[start, stop)``: (features, labels, dataset indices),
    written batch by batch into preallocated tensors of ``dtype`` on ``device``."""
    model_device = next(model.parameters()).device
    loader = DataLoader(IndexedView(dataset, range(start, stop)), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=model_device.type == "cuda")
    features = torch.empty(stop - start, classifier.in_features, dtype=dtype, device=device)
    labels = torch.empty(stop - start, dtype=torch.long, device=device)
    indices = torch.empty(stop - start, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    row = 0
    try:
        with ClassifierTap(classifier) as tap:
            for image, target, index in loader:
                model(image.to(model_device, non_blocking=True))
                count = tap.features.shape[0]
                features[row : row + count].copy_(tap.features)
                labels[row : row + count].copy_(torch.as_tensor(target))
                indices[row : row + count].copy_(torch.as_tensor(index))
                row += count
    finally:
        model.train(was_training)
    if row != stop - start:
        raise RuntimeError(f"the bank pass read {row} samples of {type(dataset).__name__}, expected {stop - start}")
    return features, labels, indices
