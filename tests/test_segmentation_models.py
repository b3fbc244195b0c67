"""The segmentation models' contract (what the dense distillers and the dense ICKD plugin rely
on), their output stride, and ImageNet backbones loaded from a file of torchvision's layout."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import mobilenet_v2, resnet18

from kdharness.compose import check_model_names, load_builtin_components
from kdharness.config import ConfigError, get_cfg_defaults
from kdharness.engine.checkpoint import CheckpointError
from kdharness.models import allowed_model_names, create_model
from kdharness.models.weights import load_backbone_weights

# name -> (stage channels, output stride of the decoder, input side used here)
MODELS = {
    "deeplabv3_resnet18": ([64, 64, 128, 256, 512], 8, 64),
    "deeplabv3_resnet50": ([64, 256, 512, 1024, 2048], 8, 64),
    "deeplabv3_resnet101": ([64, 256, 512, 1024, 2048], 8, 64),
    "deeplabv3_mobilenetv2": ([16, 24, 32, 96, 320], 8, 64),
    "deeplabv3_cifar_resnet14x2": ([32, 32, 64, 128], 4, 32),
    "deeplabv3_cifar_resnet8": ([16, 16, 32, 64], 4, 32),
}


def test_every_segmentation_model_is_registered_for_every_dense_dataset():
    for dataset in ("cityscapes", "voc", "voc_aug", "fashion_mnist_scenes"):
        assert set(MODELS) <= set(allowed_model_names(dataset))
    assert "deeplabv3_resnet18" not in allowed_model_names("cifar100")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_contract(name):
    channels, stride, side = MODELS[name]
    model = create_model(name, "cityscapes", 7).eval()
    image = torch.randn(2, 3, side, side + 16)
    with torch.no_grad():
        logits, feats = model(image)
    assert logits.shape == (2, 7, side, side + 16)  # at the input's resolution
    assert [f.shape[1] for f in feats["feats"]] == channels == model.get_stage_channels()
    decoder = feats["decoder"]
    assert decoder.dim() == 4 and decoder.shape[0] == 2
    assert decoder.shape[-2:] == (side // stride, (side + 16) // stride)  # dilated: output stride 8 (CPU pair: 4)
    classifier = model.get_dense_classifier()
    assert isinstance(classifier, nn.Conv2d) and classifier.kernel_size == (1, 1)
    assert (classifier.in_channels, classifier.out_channels) == (decoder.shape[1], 7)
    with torch.no_grad():
        dense = classifier(decoder)
    assert torch.equal(dense, feats["dense_logits"])
    assert torch.allclose(F.interpolate(dense, size=image.shape[-2:], mode="bilinear", align_corners=False), logits)


def test_contract_holds_in_training_mode_too():
    model = create_model("deeplabv3_cifar_resnet8", "fashion_mnist_scenes", 11).train()
    logits, feats = model(torch.randn(2, 3, 32, 32))
    upsampled = F.interpolate(model.get_dense_classifier()(feats["decoder"]), size=(32, 32), mode="bilinear",
                              align_corners=False)
    assert torch.allclose(upsampled, logits)


def test_dilated_backbones_keep_imagenet_shapes():
    """Dilation changes strides and padding, never weights: torchvision's state_dict keys and shapes."""
    ours = create_model("deeplabv3_resnet18", "cityscapes", 19).get_backbone().state_dict()
    theirs = {k: v for k, v in resnet18().state_dict().items() if not k.startswith("fc.")}
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    layer4 = create_model("deeplabv3_resnet18", "cityscapes", 19).get_backbone().layer4
    assert all(m.stride == (1, 1) for m in layer4.modules() if isinstance(m, nn.Conv2d))
    assert {m.dilation for m in layer4.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)} == {(4, 4)}


@pytest.mark.parametrize("name, reference", [("deeplabv3_resnet18", resnet18), ("deeplabv3_mobilenetv2", mobilenet_v2)])
def test_imagenet_backbone_loads_from_a_torchvision_file(name, reference, tmp_path):
    torch.manual_seed(1)
    imagenet = reference()
    path = tmp_path / "imagenet.pth"
    torch.save(imagenet.state_dict(), path)  # torchvision's published files are plain state_dicts
    model = create_model(name, "cityscapes", 19)
    head_before = model.get_dense_classifier().weight.clone()
    load_backbone_weights(model, str(path))
    backbone = model.get_backbone().state_dict()
    for key, value in backbone.items():
        assert torch.equal(value, imagenet.state_dict()[key]), key
    assert torch.equal(model.get_dense_classifier().weight, head_before)  # the head keeps its init


def test_backbone_file_errors_name_the_key(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save(mobilenet_v2().state_dict(), path)
    with pytest.raises(CheckpointError, match="DISTILLER.STUDENT_BACKBONE_WEIGHTS"):
        load_backbone_weights(create_model("deeplabv3_resnet18", "cityscapes", 19), str(path))
    with pytest.raises(FileNotFoundError, match="DISTILLER.STUDENT_BACKBONE_WEIGHTS"):
        load_backbone_weights(create_model("deeplabv3_resnet18", "cityscapes", 19), str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="no backbone"):
        load_backbone_weights(timm.create_model("cifar_resnet8", num_classes=10), str(path))


def test_model_names_are_checked_per_task():
    load_builtin_components()
    cfg = get_cfg_defaults()
    cfg.DATASET.TYPE, cfg.DATASET.TASK = "cityscapes", "segmentation"
    cfg.DISTILLER.STUDENT, cfg.DISTILLER.TEACHER = "resnet8", "deeplabv3_resnet101"
    with pytest.raises(ConfigError, match="DISTILLER.STUDENT = 'resnet8'.*deeplabv3_resnet18"):
        check_model_names(cfg)
