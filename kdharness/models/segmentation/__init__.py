"""Segmentation models, registered in timm as ``seg_<name>``: DeepLabV3 over dilated backbones.

Configs name them bare (``DISTILLER.STUDENT: deeplabv3_resnet18``) with a segmentation
``DATASET.TYPE`` (cityscapes, voc, voc_aug, fashion_mnist_scenes), which picks the ``seg_``
prefix. Every model keeps the contract in `_deeplab.py` (and docs/architecture.md):
``logits, feats = model(x)`` with logits at the input's resolution, ``feats["feats"]``,
``feats["decoder"]``, ``feats["dense_logits"]`` and ``model.get_dense_classifier()``.
Importing this package registers the families.
"""
from kdharness.models.segmentation import cifar_deeplabv3, deeplabv3  # noqa: F401  (registration)
from kdharness.models.segmentation._deeplab import DeepLabV3

__all__ = ["DeepLabV3", "cifar_deeplabv3", "deeplabv3"]
