"""mdistiller's augmentation per dataset, plus Fashion-MNIST's (which mdistiller lacks).

The CIFAR-100, ImageNet and Tiny-ImageNet pipelines and constants are copied from mdistiller
(``mdistiller/dataset/{cifar100,imagenet,tiny_imagenet}.py``) so that published
numbers stay comparable. All randomness comes from torch's global RNG, which
`IndexedDataset` seeds per sample.
"""
from __future__ import annotations

from typing import Any, Callable

from torchvision import transforms as T

from kdharness.config import ConfigError, is_segmentation
from kdharness.data.seg_transforms import SegmentationEval, SegmentationTrain

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# mdistiller/dataset/tiny_imagenet.py's constants.
TINY_IMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINY_IMAGENET_STD = (0.2302, 0.2265, 0.2262)

# Computed once from the real training set (/usr/share/datasets/fashion-mnist,
# train-images-idx3-ubyte.gz, 60000 images, pixels / 255, float64) *after* the 2-pixel
# zero padding to 32x32 that `kdharness.data.fashion_mnist` applies, i.e. over the images
# the model actually sees at test time. (The unpadded 28x28 values are 0.2860 / 0.3530.)
# Grayscale repeated to 3 channels, so each channel has the same statistics.
FASHION_MNIST_MEAN = (0.2190,) * 3
FASHION_MNIST_STD = (0.3318,) * 3


# Fashion-MNIST scenes (kdharness/data/fashion_mnist_scenes.py): computed once from the 2000
# train scenes of the default DATASET.SCENES keys (seed 0, 64x64, 2-4 items), pixels / 255,
# float64; mostly background, hence the low mean. Grayscale repeated to 3 channels.
FASHION_MNIST_SCENES_MEAN = (0.1650,) * 3
FASHION_MNIST_SCENES_STD = (0.2929,) * 3

# Segmentation datasets: (mean, std) of the normalisation. Cityscapes and VOC use ImageNet's,
# as every ImageNet-pretrained backbone expects (CIRKD, mmsegmentation).
SEGMENTATION_NORMALIZATION = {
    "cityscapes": (IMAGENET_MEAN, IMAGENET_STD),
    "voc": (IMAGENET_MEAN, IMAGENET_STD),
    "voc_aug": (IMAGENET_MEAN, IMAGENET_STD),
    "fashion_mnist_scenes": (FASHION_MNIST_SCENES_MEAN, FASHION_MNIST_SCENES_STD),
}


def _cifar_style(mean: tuple[float, ...], std: tuple[float, ...], train: bool) -> Callable:
    if train:
        return T.Compose(
            [
                T.RandomCrop(32, padding=4),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(mean, std),
            ]
        )
    return T.Compose([T.ToTensor(), T.Normalize(mean, std)])


def _imagenet(train: bool) -> Callable:
    normalize = T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if train:
        return T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize])


def _tiny_imagenet(train: bool) -> Callable:
    normalize = T.Normalize(TINY_IMAGENET_MEAN, TINY_IMAGENET_STD)
    if train:
        return T.Compose([T.RandomRotation(20), T.RandomHorizontalFlip(0.5), T.ToTensor(), normalize])
    return T.Compose([T.ToTensor(), normalize])


def build_transform(dataset_type: str, train: bool) -> Callable:
    """The PIL -> normalized tensor pipeline for ``DATASET.TYPE`` (train: augmented)."""
    if dataset_type == "cifar100":
        return _cifar_style(CIFAR100_MEAN, CIFAR100_STD, train)
    if dataset_type == "fashion_mnist":
        return _cifar_style(FASHION_MNIST_MEAN, FASHION_MNIST_STD, train)
    if dataset_type == "imagenet":
        return _imagenet(train)
    if dataset_type == "tiny_imagenet":
        return _tiny_imagenet(train)
    raise ConfigError(
        f"DATASET.TYPE = {dataset_type!r} has no transform; known: cifar100, fashion_mnist, imagenet, tiny_imagenet "
        "(a plugin dataset must pass its own transform to IndexedDataset)"
    )


def build_segmentation_transform(cfg: Any, train: bool) -> Callable:
    """The (image, mask) pipeline of a segmentation ``DATASET.TYPE`` (`kdharness.data.seg_transforms`):
    training with ``DATASET.SCALE_RANGE`` and ``DATASET.CROP_SIZE``, validation whole images."""
    try:
        mean, std = SEGMENTATION_NORMALIZATION[cfg.DATASET.TYPE]
    except KeyError:
        raise ConfigError(
            f"DATASET.TYPE = {cfg.DATASET.TYPE!r} has no segmentation normalisation; known: "
            f"{', '.join(sorted(SEGMENTATION_NORMALIZATION))} (kdharness/data/transforms.py)"
        ) from None
    if train:
        return SegmentationTrain(cfg.DATASET.CROP_SIZE, cfg.DATASET.SCALE_RANGE, mean, std)
    return SegmentationEval(mean, std)


def build_dataset_transform(cfg: Any, train: bool) -> Callable:
    """The transform of a config's dataset, whatever its task: `build_transform` for
    classification, `build_segmentation_transform` for segmentation."""
    if is_segmentation(cfg):
        return build_segmentation_transform(cfg, train)
    return build_transform(cfg.DATASET.TYPE, train)
