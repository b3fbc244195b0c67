"""Datasets, transforms and loaders.

Importing this package registers the built-in datasets in ``kdharness.registry.dataset_dict``:
for classification ``cifar100``, ``imagenet``, ``fashion_mnist``, ``tiny_imagenet``; for
segmentation ``cityscapes``, ``voc``, ``voc_aug``, ``fashion_mnist_scenes``.
"""
from kdharness.data import cifar100, fashion_mnist, imagenet, tiny_imagenet  # noqa: F401  (registration)
from kdharness.data import cityscapes, fashion_mnist_scenes, voc  # noqa: F401  (registration)
from kdharness.data.indexed import IndexedDataset
from kdharness.data.loaders import build_datasets, build_loaders, uses_crd
from kdharness.data.sampler import EpochSampler
from kdharness.data.transforms import build_dataset_transform, build_transform

__all__ = [
    "EpochSampler",
    "IndexedDataset",
    "build_datasets",
    "build_dataset_transform",
    "build_loaders",
    "build_transform",
    "uses_crd",
]
