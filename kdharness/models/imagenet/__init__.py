"""mdistiller's ImageNet models, registered in timm as ``imagenet_<mdistiller name>``.

Importing this package imports every family, which is what registers them.
"""
from kdharness.models.imagenet import mobilenetv1, resnet

__all__ = ["mobilenetv1", "resnet"]
