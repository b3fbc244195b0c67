"""The training set as the bank sees it: without augmentation, item by item with its dataset
index, and read without consuming the run's random state.

The bank holds each training sample's feature as the network sees it at evaluation, so it is
built from a copy of the training set that applies the validation transform; that copy is
checked, not assumed, to be deterministic.
"""
from __future__ import annotations

import copy
import inspect
import random
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


class IndexedView(Dataset):
    """Items (image, target, dataset index) of `dataset` at `positions`; index = position if absent."""

    def __init__(self, dataset: Any, positions: Sequence[int]) -> None:
        self.dataset = dataset
        self.positions = positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple:
        position = self.positions[i]
        item = self.dataset[position]
        index = item[2] if len(item) > 2 else position
        return item[0], item[1], index


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without consuming torch's, numpy's or Python's global random state.

    A run that finds the bank cached and one that builds it must start training from the
    same random state, whatever the datasets read on the way.
    """
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _owns_attribute(dataset: Any, name: str) -> bool:
    """True when `name` lives on the object or its class, not behind a forwarding __getattr__."""
    if name in getattr(dataset, "__dict__", {}):
        return True
    return inspect.getattr_static(type(dataset), name, _MISSING) is not _MISSING


_MISSING = object()
# Switches of the hosts' training sets that add CRD's contrastive indices to each item
# (mdistiller's CIFAR100InstanceSample.is_sample, kdharness' IndexedDataset.crd_k): the bank
# pass needs only (image, target, index), and drawing K negatives per item is wasted work.
_CONTRASTIVE_SWITCHES = {"is_sample": False, "crd_k": None}


def _same_image(a: Any, b: Any) -> bool:
    if torch.is_tensor(a) and torch.is_tensor(b):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    return np.array_equal(np.asarray(a), np.asarray(b))


def no_augmentation_view(train_dataset: Any, val_dataset: Any) -> Any:
    """A shallow copy of the training set that applies the validation (no-augmentation) transform.

    Verified, not assumed: the copy must own its `transform` (a wrapper that forwards
    attribute reads to an inner dataset would keep augmenting), and two reads of its first
    item must be identical. CRD's contrastive sampling is switched off in the copy.
    """
    for name, dataset in (("train", train_dataset), ("val", val_dataset)):
        if not hasattr(dataset, "transform"):
            raise ValueError(
                f"ICKD builds its bank from the training set seen through the validation transform, "
                f"but the {name} loader's dataset ({type(dataset).__name__}) has no `transform` attribute"
            )
    if not _owns_attribute(train_dataset, "transform"):
        raise ValueError(
            f"ICKD builds its bank from the training set seen through the validation transform, but "
            f"{type(train_dataset).__name__} only forwards `transform` to a dataset inside it (through "
            f"__getattr__), so replacing it on a copy would leave the augmentation on; give the wrapper "
            f"a `transform` attribute of its own that it applies, or let the loader hold the inner dataset"
        )
    view = copy.copy(train_dataset)
    view.transform = val_dataset.transform
    for switch, off in _CONTRASTIVE_SWITCHES.items():
        if _owns_attribute(view, switch) and getattr(view, switch) not in (off, None, False):
            setattr(view, switch, off)
    if len(view):
        with preserved_rng():
            first, again = view[0][0], view[0][0]
        if not _same_image(first, again):
            raise ValueError(
                f"ICKD builds its bank from the training set seen through the validation transform, but "
                f"two reads of item 0 of {type(train_dataset).__name__} with `transform` set to "
                f"{type(val_dataset.transform).__name__} differ: the dataset still applies random "
                f"augmentation (from an inner dataset or its own __getitem__); the bank would hold "
                f"augmented features"
            )
    return view

