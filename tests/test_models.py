"""The zoo against mdistiller's recorded layouts (kdharness/reference/mdistiller_state_dicts).

Identical state_dict keys and shapes are what let mdistiller's published teacher checkpoints
load unchanged; identical feature shapes are what its distillers index into.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn

import kdharness.models as zoo
from kdharness.config import ConfigError

REFERENCE_DIR = Path(zoo.__file__).resolve().parent.parent / "reference" / "mdistiller_state_dicts"
REFERENCE_FILES = sorted(REFERENCE_DIR.glob("*.json"))
DATASET_OF_PREFIX = {"cifar100": "cifar_", "imagenet": "imagenet_"}


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _timm_name(reference: dict) -> str:
    dataset, name = reference["model"].split("_", 1)
    return DATASET_OF_PREFIX[dataset] + name


def _shapes(value):
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    return [list(t.shape) for t in value]


def test_reference_files_present():
    assert len(REFERENCE_FILES) == 27


def test_registry_is_exactly_the_reference_set():
    registered = set(timm.list_models("cifar_*")) | set(timm.list_models("imagenet_*"))
    assert registered == {_timm_name(_load(p)) for p in REFERENCE_FILES}


@pytest.mark.parametrize("path", REFERENCE_FILES, ids=[p.stem for p in REFERENCE_FILES])
def test_matches_mdistiller(path: Path):
    reference = _load(path)
    model = timm.create_model(_timm_name(reference), num_classes=reference["num_classes"]).eval()

    state = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = reference["state_dict"]
    assert sorted(set(expected) - set(state)) == [], "keys missing from our model"
    assert sorted(set(state) - set(expected)) == [], "keys mdistiller does not have"
    assert {k: v for k, v in state.items() if v != expected[k]} == {}, "shape mismatches"
    assert sum(p.numel() for p in model.parameters()) == reference["num_parameters"]

    with torch.no_grad():
        logits, feats = model(torch.randn(*reference["input_shape"]))
    assert list(logits.shape) == reference["logits_shape"]
    for key, shapes in reference["feats"].items():
        assert _shapes(feats[key]) == shapes, key
    # The harness contract: every model exposes all three keys (mdistiller's MobileNetV2
    # lacks "preact_feats"; ours returns it with the shapes of "feats").
    assert set(feats) == {"feats", "preact_feats", "pooled_feat"}
    assert _shapes(feats["preact_feats"]) == _shapes(feats["feats"])
    assert feats["pooled_feat"].shape == (logits.shape[0], model.get_classifier().in_features)


@pytest.mark.parametrize("name", timm.list_models("cifar_*") + timm.list_models("imagenet_*"))
def test_custom_num_classes_and_classifier(name: str):
    model = timm.create_model(name, num_classes=7)
    classifier = model.get_classifier()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and classifier is linears[-1]
    assert classifier.out_features == 7 == model.num_classes
    assert model.pretrained_cfg["architecture"] == name


@pytest.mark.parametrize(
    "name, size",
    [
        ("cifar_resnet8", 32),
        ("cifar_ResNet18", 16),
        ("cifar_wrn_16_1", 32),
        ("cifar_vgg8", 32),
        ("cifar_MobileNetV2", 32),
        ("cifar_ShuffleV1", 32),
        ("cifar_ShuffleV2", 32),
        # Global pooling lets the ImageNet models run on small inputs, which keeps this fast.
        ("imagenet_ResNet18", 64),
        ("imagenet_MobileNetV1", 64),
    ],
)
def test_train_mode_backward(name: str, size: int):
    """In-place ops must not break autograd, and every feature must be differentiable."""
    model = timm.create_model(name, num_classes=5).train()
    logits, feats = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 5)
    loss = logits.square().mean() + feats["pooled_feat"].mean()
    loss = loss + sum(f.mean() for f in feats["feats"][1:]) + sum(f.mean() for f in feats["preact_feats"][1:])
    loss.backward()
    assert all(p.grad is not None for p in model.get_classifier().parameters())


def test_pretrained_true_is_refused():
    with pytest.raises(ValueError, match="TEACHER_WEIGHTS"):
        timm.create_model("cifar_resnet8", pretrained=True)


def test_default_num_classes():
    assert timm.create_model("cifar_resnet8").get_classifier().out_features == 100
    assert timm.create_model("imagenet_MobileNetV1").get_classifier().out_features == 1000


def test_timm_name():
    assert zoo.timm_name("resnet8x4", "cifar100") == "cifar_resnet8x4"
    assert zoo.timm_name("resnet8x4", "fashion_mnist") == "cifar_resnet8x4"
    assert zoo.timm_name("ResNet18", "imagenet") == "imagenet_ResNet18"
    assert zoo.timm_name("cifar_vgg13", "cifar100") == "cifar_vgg13"


def test_create_model_resolves_bare_names():
    model = zoo.create_model("wrn_16_1", "fashion_mnist", num_classes=10)
    assert model.pretrained_cfg["architecture"] == "cifar_wrn_16_1"
    assert model.get_classifier().out_features == 10


def test_check_model_name_accepts_registered_names():
    zoo.check_model_name("resnet32x4", "cifar100", "DISTILLER.TEACHER")
    zoo.check_model_name("MobileNetV1", "imagenet", "DISTILLER.STUDENT")


def test_check_model_name_error_names_key_value_and_allowed():
    with pytest.raises(ConfigError) as info:
        zoo.check_model_name("resnet9", "cifar100", "DISTILLER.STUDENT")
    message = str(info.value)
    assert "DISTILLER.STUDENT" in message and "'resnet9'" in message
    assert "resnet8x4" in message and "ShuffleV2" in message and "MobileNetV1" not in message


def test_check_model_name_is_per_dataset():
    with pytest.raises(ConfigError, match="MobileNetV1"):
        zoo.check_model_name("resnet8x4", "imagenet", "DISTILLER.TEACHER")
    with pytest.raises(ConfigError, match="DATASET.TYPE"):
        zoo.check_model_name("resnet8x4", "svhn", "DISTILLER.TEACHER")


def test_allowed_names_come_from_the_registry():
    assert zoo.allowed_model_names("imagenet") == [n[len("imagenet_"):] for n in timm.list_models("imagenet_*")]
