"""mdistiller's CIFAR-100 models, registered in timm as ``cifar_<mdistiller name>``.

Importing this package imports every family, which is what registers them.
"""
from kdharness.models.cifar import mobilenetv2, resnet, resnetv2, shufflenetv1, shufflenetv2, vgg, wrn

__all__ = ["mobilenetv2", "resnet", "resnetv2", "shufflenetv1", "shufflenetv2", "vgg", "wrn"]
