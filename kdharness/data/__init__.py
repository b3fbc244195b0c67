"""Datasets, transforms and loaders.

Importing this package registers the built-in datasets (``cifar100``, ``imagenet``,
``fashion_mnist``, ``tiny_imagenet``) in ``kdharness.registry.dataset_dict``.
"""
from kdharness.data import cifar100, fashion_mnist, imagenet, tiny_imagenet  # noqa: F401  (registration)
from kdharness.data.indexed import IndexedDataset
from kdharness.data.loaders import build_datasets, build_loaders, uses_crd
from kdharness.data.sampler import EpochSampler
from kdharness.data.transforms import build_transform

__all__ = [
    "EpochSampler",
    "IndexedDataset",
    "build_datasets",
    "build_loaders",
    "build_transform",
    "uses_crd",
]
