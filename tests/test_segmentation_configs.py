"""The Cityscapes and VOC GPU recipes load, build their models and read fixture data; one trains
a step on a fixture with an ImageNet backbone file; the scenes configs name the CPU pair."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import mobilenet_v2

from harness_utils import REPO, run_config, write_teacher_checkpoint
from seg_fixtures import write_cityscapes_fixture, write_voc_fixture
from kdharness.compose import load_config
from kdharness.data import build_datasets
from kdharness.models import create_model

GPU_CONFIGS = sorted((REPO / "configs" / "cityscapes").glob("*/*.yaml")) + sorted((REPO / "configs" / "voc").glob("*/*.yaml"))
SCENES_CONFIGS = sorted((REPO / "configs" / "fashion_mnist_scenes").glob("*/*.yaml"))
NUM_CLASSES = {"cityscapes": 19, "voc_aug": 21}


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    cityscapes = tmp_path_factory.mktemp("cityscapes")
    write_cityscapes_fixture(cityscapes)
    voc = tmp_path_factory.mktemp("voc")
    write_voc_fixture(voc, aug=True)
    return {"cityscapes": cityscapes, "voc_aug": voc}


_models: dict[tuple[str, int], torch.nn.Module] = {}


def _model(name: str, dataset: str) -> torch.nn.Module:
    key = (name, NUM_CLASSES[dataset])
    if key not in _models:
        _models[key] = create_model(name, dataset, NUM_CLASSES[dataset]).eval()
    return _models[key]


def test_every_method_has_both_students():
    for dataset in ("cityscapes", "voc"):
        names = {f"{p.parent.name}/{p.stem}" for p in GPU_CONFIGS if p.parts[-3] == dataset}
        assert names == {"teacher/deeplabv3_r101"} | {
            f"{method}/deeplabv3_r101_{student}" for method in ("vanilla", "pixel_kd", "cwd") for student in ("r18", "mbv2")
        }


@pytest.mark.parametrize("cfg_path", GPU_CONFIGS, ids=lambda p: f"{p.parts[-3]}/{p.parent.name}/{p.stem}")
def test_gpu_recipe_builds_its_models_and_reads_fixture_data(cfg_path, roots):
    cfg = load_config(str(cfg_path), ["DATASET.ROOT", str(roots[load_config(str(cfg_path)).DATASET.TYPE]),
                                      "DATASET.NUM_WORKERS", "0"])
    assert cfg.DATASET.TASK == "segmentation" and cfg.SOLVER.SCHEDULER == "poly" and cfg.SOLVER.LR == 0.02
    crop = list(cfg.DATASET.CROP_SIZE)
    steps_per_epoch = {"cityscapes": -(-2975 // 8), "voc_aug": -(-10582 // 16)}[cfg.DATASET.TYPE]
    assert 40_000 <= cfg.SOLVER.EPOCHS * steps_per_epoch < 40_000 + steps_per_epoch  # 40k iterations, as published
    assert crop == ([512, 1024] if cfg.DATASET.TYPE == "cityscapes" else [512, 512])
    train_set, val_set, num_classes = build_datasets(cfg, log=False)
    assert num_classes == NUM_CLASSES[cfg.DATASET.TYPE]
    image, mask, _ = train_set[(1, 0)]
    assert image.shape == (3, *crop) and mask.shape == tuple(crop)
    val_image, val_mask = val_set[0]
    student = _model(cfg.DISTILLER.STUDENT, cfg.DATASET.TYPE)
    with torch.no_grad():
        logits, _ = student(val_image[None])
    assert logits.shape == (1, num_classes, *val_mask.shape)
    if cfg.DISTILLER.TYPE != "NONE":
        assert _model(cfg.DISTILLER.TEACHER, cfg.DATASET.TYPE).get_stage_channels()[-1] == 2048
    assert cfg.DISTILLER.STUDENT_BACKBONE_WEIGHTS.endswith(".pth")


def test_a_gpu_recipe_trains_a_step_on_a_fixture(roots, tmp_path):
    """The VOC CWD recipe end to end on CPU: fixture data, an ImageNet backbone file for the
    student, a teacher checkpoint (a MobileNetV2 DeepLabV3 here, to keep the file small)."""
    backbone = tmp_path / "mobilenet_v2-imagenet.pth"
    torch.save(mobilenet_v2().state_dict(), backbone)
    teacher = write_teacher_checkpoint(tmp_path / "teacher.pth", "deeplabv3_mobilenetv2", "voc_aug", 21)
    summary = run_config(REPO / "configs" / "voc" / "cwd" / "deeplabv3_r101_mbv2.yaml", [
        "DATASET.ROOT", str(roots["voc_aug"]), "LOG.PREFIX", str(tmp_path), "DATASET.NUM_WORKERS", "0",
        "DATASET.PIN_MEMORY", "False", "DISTILLER.STUDENT_BACKBONE_WEIGHTS", str(backbone),
        "DISTILLER.TEACHER_WEIGHTS", str(teacher), "DISTILLER.TEACHER", "deeplabv3_mobilenetv2",
        "DATASET.CROP_SIZE", "[32, 32]", "SOLVER.BATCH_SIZE", "3", "SOLVER.EPOCHS", "1", "LOG.SAVE_STEP_FREQ", "0",
    ])
    assert summary["complete"] and summary["method"] == "CWD" and summary["dataset"] == "voc_aug"
    assert len(summary["last_per_class_iou"]) == 21


@pytest.mark.parametrize("cfg_path", SCENES_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_scenes_configs_name_the_cpu_pair(cfg_path):
    cfg = load_config(str(cfg_path))
    assert (cfg.DATASET.TYPE, cfg.DATASET.TASK) == ("fashion_mnist_scenes", "segmentation")
    assert cfg.DISTILLER.STUDENT in ("deeplabv3_cifar_resnet8", "deeplabv3_cifar_resnet14x2")
    assert cfg.EXPERIMENT.PROJECT == "fmnist_scenes"
    if cfg.DISTILLER.TYPE != "NONE":
        assert cfg.DISTILLER.TEACHER_WEIGHTS == "output/fmnist_scenes/teacher_r14x2/student_best"
