"""The zoo's feature helpers (get_stage_channels, get_bn_before_relu, get_feat_modules).

Expected values are read off mdistiller's model files (mdistiller/models/cifar/*.py and
imagenet/*.py at commit a08d46f): the ``stage_channels`` assignments and the modules each
``get_bn_before_relu`` returns, written here as the module paths they denote.
"""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

import kdharness.models  # noqa: F401  (registers the zoo)

NARROW, WIDE = [16, 16, 32, 64], [32, 64, 128, 256]
RESNETV2 = [256, 512, 1024, 2048]  # mdistiller reports these for BasicBlock ResNets too

STAGE_CHANNELS = {
    "cifar_resnet8": NARROW, "cifar_resnet14": NARROW, "cifar_resnet20": NARROW, "cifar_resnet32": NARROW,
    "cifar_resnet44": NARROW, "cifar_resnet56": NARROW, "cifar_resnet110": NARROW,
    "cifar_resnet8x4": WIDE, "cifar_resnet32x4": WIDE,
    "cifar_ResNet18": RESNETV2, "cifar_ResNet50": RESNETV2,
    "cifar_wrn_16_1": [16, 16, 32, 64], "cifar_wrn_16_2": [16, 32, 64, 128],
    "cifar_wrn_40_1": [16, 16, 32, 64], "cifar_wrn_40_2": [16, 32, 64, 128],
    "cifar_vgg8": [64, 128, 256, 512, 512], "cifar_vgg11": [64, 128, 256, 512, 512],
    "cifar_vgg13": [64, 128, 256, 512, 512], "cifar_vgg16": [64, 128, 256, 512, 512],
    "cifar_vgg19": [64, 128, 256, 512, 512],
    "cifar_MobileNetV2": [16, 12, 16, 48, 160],  # [32, 24, 32, 96, 320] x width 0.5
    "cifar_ShuffleV2": [24, 116, 232, 464],
    # mdistiller's ShuffleV1 has no get_stage_channels (its assignment is commented out);
    # ours reports the stem and stage widths, as ShuffleV2 does.
    "cifar_ShuffleV1": [24, 240, 480, 960],
    "imagenet_ResNet18": RESNETV2, "imagenet_ResNet34": RESNETV2, "imagenet_ResNet50": RESNETV2,
    "imagenet_MobileNetV1": [128, 256, 512, 1024],
    # Tiny-ImageNet: mdistiller's CIFAR ResNet18 / ShuffleV2; its own MobileNetV2 has no helpers
    # there, ours reports the widths of its five features.
    "tiny_imagenet_ResNet18": RESNETV2, "tiny_imagenet_ShuffleV2": [24, 116, 232, 464],
    "tiny_imagenet_MobileNetV2": [32, 24, 32, 64, 1280],
}

BN_BEFORE_RELU = {
    "cifar_resnet8": ["layer1.0.bn2", "layer2.0.bn2", "layer3.0.bn2"],
    "cifar_resnet32": ["layer1.4.bn2", "layer2.4.bn2", "layer3.4.bn2"],
    "cifar_resnet110": ["layer1.17.bn2", "layer2.17.bn2", "layer3.17.bn2"],
    "cifar_resnet32x4": ["layer1.4.bn2", "layer2.4.bn2", "layer3.4.bn2"],
    "cifar_ResNet18": ["layer1.1.bn2", "layer2.1.bn2", "layer3.1.bn2", "layer4.1.bn2"],
    "cifar_ResNet50": ["layer1.2.bn3", "layer2.3.bn3", "layer3.5.bn3", "layer4.2.bn3"],
    "cifar_wrn_40_2": ["block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"],
    "cifar_wrn_16_2": ["block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"],
    "cifar_vgg8": ["block1.1", "block2.1", "block3.1", "block4.1"],
    "cifar_vgg13": ["block1.4", "block2.4", "block3.4", "block4.4"],
    "cifar_vgg16": ["block1.4", "block2.7", "block3.7", "block4.7"],
    "cifar_MobileNetV2": ["blocks.1.1.conv.7", "blocks.2.2.conv.7", "blocks.4.2.conv.7", "blocks.6.0.conv.7"],
    "imagenet_ResNet18": ["layer2.1.bn2", "layer3.1.bn2", "layer4.1.bn2"],
    "imagenet_ResNet34": ["layer2.3.bn2", "layer3.5.bn2", "layer4.2.bn2"],
    "imagenet_ResNet50": ["layer2.3.bn3", "layer3.5.bn3", "layer4.2.bn3"],
    "imagenet_MobileNetV1": ["model.3.4", "model.5.4", "model.11.4", "model.13.4"],
}


def _model(name: str) -> nn.Module:
    return timm.create_model(name, num_classes=10)


def test_every_zoo_model_is_listed():
    zoo = set(timm.list_models("cifar_*")) | set(timm.list_models("imagenet_*")) | set(timm.list_models("tiny_imagenet_*"))
    assert set(STAGE_CHANNELS) == zoo


@pytest.mark.parametrize("name", sorted(STAGE_CHANNELS))
def test_stage_channels_match_mdistiller(name: str):
    model = _model(name)
    assert model.get_stage_channels() == STAGE_CHANNELS[name]
    # A copy: a caller slicing or editing the list must not change the model.
    model.get_stage_channels().append(0)
    assert model.get_stage_channels() == STAGE_CHANNELS[name]


@pytest.mark.parametrize("name", sorted(BN_BEFORE_RELU))
def test_bn_before_relu_are_mdistillers_modules(name: str):
    model = _model(name)
    bns = model.get_bn_before_relu()
    names = {id(module): path for path, module in model.named_modules()}
    assert [names[id(bn)] for bn in bns] == BN_BEFORE_RELU[name]
    assert all(isinstance(bn, nn.BatchNorm2d) for bn in bns)
    # Each BN's width is that of the pre-activation feature it ends (the last len(bns) of them).
    size = 32 if name.startswith("cifar_") else 64
    model.eval()
    with torch.no_grad():
        _, feats = model(torch.zeros(1, 3, size, size))
    assert [bn.num_features for bn in bns] == [f.shape[1] for f in feats["preact_feats"][-len(bns):]]


@pytest.mark.parametrize("name", ["cifar_ShuffleV1", "cifar_ShuffleV2"])
def test_shufflenets_have_no_bn_before_relu(name: str):
    with pytest.raises(NotImplementedError, match="OFD teacher"):
        _model(name).get_bn_before_relu()


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cifar_resnet8", ["conv1", "bn1", "relu", "layer1", "layer2", "layer3"]),
        ("cifar_ResNet18", ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]),
        ("cifar_wrn_16_1", ["conv1", "block1", "block2", "block3"]),
        ("cifar_vgg8", [f"{k}{i}" for i in range(5) for k in ("block", "pool")]),
        ("cifar_MobileNetV2", ["conv1", "blocks"]),
        ("cifar_ShuffleV1", ["conv1", "bn1", "layer1", "layer2", "layer3"]),
        ("cifar_ShuffleV2", ["conv1", "bn1", "layer1", "layer2", "layer3"]),
    ],
)
def test_feat_modules_are_the_models_own(name: str, expected: list[str]):
    model = _model(name)
    modules = model.get_feat_modules()
    assert isinstance(modules, nn.ModuleList)
    assert [m is model.get_submodule(n) for m, n in zip(modules, expected)] == [True] * len(expected)
    assert len(modules) == len(expected)
