"""Teacher checkpoint resolution and loading, with small real .pth files."""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import pytest
import timm
import torch

import kdharness.models  # noqa: F401  (registers the zoo)
from kdharness.config import ConfigError, get_cfg_defaults
from kdharness.models.weights import (
    CheckpointError,
    extract_state_dict,
    load_teacher_weights,
    load_weights,
    resolve_teacher_path,
)

ARCH = "cifar_resnet8"  # the smallest model: ~0.3 MB checkpoints


@pytest.fixture
def trained():
    """A resnet8 whose weights differ from any fresh one, so a successful load is visible."""
    model = timm.create_model(ARCH, num_classes=100)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.uniform_(-1, 1)
    return model


def _fresh(name: str = ARCH, num_classes: int = 100):
    return timm.create_model(name, num_classes=num_classes)


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _save(obj, path):
    torch.save(obj, path)
    return str(path)


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: {"model": sd, "epoch": 240, "best_acc": torch.tensor(73.1)}, id="mdistiller"),
        pytest.param(lambda sd: {"state_dict": sd, "epoch": 3}, id="state_dict"),
        pytest.param(lambda sd: sd, id="plain"),
        pytest.param(lambda sd: OrderedDict(("module." + k, v) for k, v in sd.items()), id="module-prefix"),
        pytest.param(lambda sd: {"model": {"module.student." + k: v for k, v in sd.items()}}, id="module-student"),
        pytest.param(lambda sd: {"student." + k: v for k, v in sd.items()}, id="student-prefix"),
    ],
)
def test_load_accepted_formats(tmp_path, trained, wrap):
    path = _save(wrap(trained.state_dict()), tmp_path / "ckpt.pth")
    model = load_weights(_fresh(), path)
    _assert_same_weights(model, trained)


def test_preloaded_state_dict(tmp_path, trained):
    """tools/eval.py reads and filters a distiller checkpoint itself, then hands the weights over."""
    model = load_weights(_fresh(), "run/student_best", state_dict={"model": trained.state_dict()})
    _assert_same_weights(model, trained)
    with pytest.raises(CheckpointError, match="student_best"):
        load_weights(_fresh("cifar_resnet14"), "run/student_best", state_dict=trained.state_dict())


def test_checkpoint_without_bn_counters_loads(tmp_path, trained):
    """Pre-0.4.1 PyTorch checkpoints lack num_batches_tracked; it does not affect the model."""
    sd = {k: v for k, v in trained.state_dict().items() if not k.endswith("num_batches_tracked")}
    model = load_weights(_fresh(), _save({"model": sd}, tmp_path / "old.pth"))
    assert torch.equal(model.fc.weight, trained.fc.weight)


def test_missing_file_names_key_path_and_layout(tmp_path):
    path = str(tmp_path / "nope" / "ckpt_epoch_240.pth")
    with pytest.raises(FileNotFoundError) as info:
        load_weights(_fresh(), path, key_name="DISTILLER.TEACHER_WEIGHTS")
    message = str(info.value)
    assert "DISTILLER.TEACHER_WEIGHTS" in message and path in message
    assert os.path.join("download_ckpts", "cifar_teachers", "<TEACHER>_vanilla", "ckpt_epoch_240.pth") in message


def test_truncated_file(tmp_path, trained):
    path = tmp_path / "truncated.pth"
    _save({"model": trained.state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_weights(_fresh(), str(path))


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_weights(_fresh(), str(path))


def test_not_a_dict(tmp_path):
    path = _save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match="Tensor"):
        load_weights(_fresh(), path)


def test_directory_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="directory"):
        load_weights(_fresh(), str(tmp_path))


def test_wrong_architecture(tmp_path, trained):
    path = _save({"model": trained.state_dict()}, tmp_path / "resnet8.pth")
    with pytest.raises(CheckpointError) as info:
        load_weights(_fresh("cifar_resnet14"), path, key_name="DISTILLER.TEACHER_WEIGHTS")
    message = str(info.value)
    assert "DISTILLER.TEACHER_WEIGHTS" in message and "resnet8.pth" in message
    assert "missing keys" in message and "layer1.1.conv1.weight" in message
    assert "more)" in message  # long lists are cut, with a count
    assert "cifar_resnet14 with 100 classes" in message


def test_wrong_class_count(tmp_path):
    ten_classes = _fresh(num_classes=10)
    path = _save({"model": ten_classes.state_dict()}, tmp_path / "c10.pth")
    with pytest.raises(CheckpointError) as info:
        load_weights(_fresh(num_classes=100), path)
    message = str(info.value)
    assert "2 shape mismatches" in message
    assert "fc.weight: checkpoint (10, 64) vs model (100, 64)" in message
    assert "cifar_resnet8 with 100 classes" in message
    assert "missing keys" not in message and "unexpected keys" not in message


def test_unexpected_keys_are_listed(tmp_path, trained):
    sd = dict(trained.state_dict(), **{"extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"1 unexpected keys: extra\.weight"):
        load_weights(_fresh(), _save(sd, tmp_path / "extra.pth"))


def test_whole_distiller_checkpoint_gets_a_hint(tmp_path, trained):
    sd = {f"{role}.{k}": v for role in ("student", "teacher") for k, v in trained.state_dict().items()}
    with pytest.raises(CheckpointError, match="whole-distiller"):
        load_weights(_fresh(), _save({"model": sd}, tmp_path / "distiller.pth"))


class Opaque:
    """An arbitrary pickled object: loading it would mean running unpickling code."""


def test_pickled_objects_are_not_executed(tmp_path, trained):
    path = _save({"model": trained.state_dict(), "extra": Opaque()}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match=r"(?s)DISTILLER.TEACHER_WEIGHTS = .*pickled.pth.*could run code.*Opaque"):
        load_weights(_fresh(), path)


def test_a_runs_own_checkpoint_with_numpy_rng_state_loads_as_teacher(tmp_path, trained):
    """`latest` of a finished teacher run holds numpy's RNG state beside the weights."""
    from kdharness.engine.checkpoint import save_checkpoint

    path = str(tmp_path / "latest")
    save_checkpoint({"model": trained.state_dict(), "rng": {"numpy": np.random.get_state()}, "epoch": 3}, path)
    _assert_same_weights(load_weights(_fresh(), path), trained)


def test_extract_state_dict_rejects_empty():
    with pytest.raises(CheckpointError, match="no weights"):
        extract_state_dict({"epoch": 3}, "x.pth")


def _cfg(**overrides):
    cfg = get_cfg_defaults()
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return cfg


def test_resolve_default_is_mdistiller_layout():
    cfg = _cfg(DISTILLER__TEACHER="resnet32x4")
    expected = os.path.join("download_ckpts", "cifar_teachers", "resnet32x4_vanilla", "ckpt_epoch_240.pth")
    assert resolve_teacher_path(cfg) == expected


def test_resolve_explicit_path_wins():
    cfg = _cfg(DISTILLER__TEACHER_WEIGHTS="/ckpts/t.pth", DATASET__TYPE="imagenet")
    assert resolve_teacher_path(cfg) == "/ckpts/t.pth"


@pytest.mark.parametrize("dataset", ["imagenet", "fashion_mnist"])
def test_resolve_requires_weights_outside_cifar100(dataset):
    with pytest.raises(ConfigError, match="DISTILLER.TEACHER_WEIGHTS"):
        resolve_teacher_path(_cfg(DATASET__TYPE=dataset, DISTILLER__TEACHER="ResNet34"))


def test_load_teacher_weights_from_mdistiller_layout(tmp_path, monkeypatch, trained):
    folder = tmp_path / "download_ckpts" / "cifar_teachers" / "resnet8_vanilla"
    folder.mkdir(parents=True)
    _save({"model": trained.state_dict(), "epoch": 240}, folder / "ckpt_epoch_240.pth")
    monkeypatch.chdir(tmp_path)
    teacher = _fresh()
    path = load_teacher_weights(teacher, _cfg(DISTILLER__TEACHER="resnet8"))
    assert path.endswith("ckpt_epoch_240.pth")
    _assert_same_weights(teacher, trained)


def test_load_teacher_weights_missing_default_explains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar_teachers"):
        load_teacher_weights(_fresh(), _cfg(DISTILLER__TEACHER="resnet8"))
