"""End to end: every shipped CIFAR-100 config trains on a CIFAR-format fixture; runs resume exactly.

The fixture is written in CIFAR-100's real pickle format, and teachers are randomly
initialised networks saved as mdistiller saves its teachers, so the whole path a user takes
(config -> data -> teacher checkpoint -> distiller -> trainer -> summary) is exercised.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fixtures_data import write_cifar100_fixture, write_fashion_mnist_fixture
from harness_utils import REPO, TINY_CIFAR, run_config, sigkill_at_mid_epoch_checkpoint, write_teacher_checkpoint
from kdharness.compose import load_config
from kdharness.engine.checkpoint import load_checkpoint

CIFAR_CONFIGS = sorted(p for p in (REPO / "configs" / "cifar100").glob("*/*.yaml"))
# Every model pair trains in the default run through these methods; every other method trains
# its resnet32x4 -> resnet8x4 config (or its first) by default and its other pairs as slow tests.
EVERY_PAIR_BY_DEFAULT = {"kd", "ickd"}


def _representative(cfg_path: Path) -> bool:
    siblings = sorted(p for p in CIFAR_CONFIGS if p.parent == cfg_path.parent)
    preferred = cfg_path.parent / "res32x4_res8x4.yaml"
    return cfg_path == (preferred if preferred in siblings else siblings[0])


def _trained_config(cfg_path: Path):
    default = cfg_path.parent.name in EVERY_PAIR_BY_DEFAULT or _representative(cfg_path)
    return pytest.param(cfg_path, marks=() if default else pytest.mark.slow, id=f"{cfg_path.parent.name}/{cfg_path.stem}")


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar100_fixture(root, n_train=40, n_test=16)
    return root


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("teachers")


def _teacher_for(cfg_path: Path, teacher_dir: Path) -> Path:
    teacher = yaml.safe_load(cfg_path.read_text())["DISTILLER"]["TEACHER"]
    path = teacher_dir / f"{teacher}.pth"
    if not path.exists():
        write_teacher_checkpoint(path, teacher, "cifar100", 100)
    return path


def test_every_cifar100_config_is_covered():
    methods = {p.parent.name for p in CIFAR_CONFIGS}
    assert {"vanilla", "kd", "dkd", "crd"} <= methods
    for method in ("vanilla", "kd", "dkd", "crd"):
        assert len([p for p in CIFAR_CONFIGS if p.parent.name == method]) == 11


@pytest.mark.parametrize("cfg_path", CIFAR_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_cifar100_config_loads_and_validates(cfg_path: Path):
    cfg = load_config(str(cfg_path), [])
    assert cfg.DATASET.TYPE == "cifar100" and cfg.DISTILLER.TYPE


@pytest.mark.parametrize("cfg_path", [_trained_config(p) for p in CIFAR_CONFIGS])
def test_config_trains_a_few_steps(cfg_path: Path, cifar_root: Path, teacher_dir: Path, tmp_path: Path):
    opts = TINY_CIFAR + [
        "DATASET.ROOT", str(cifar_root),
        "DISTILLER.TEACHER_WEIGHTS", str(_teacher_for(cfg_path, teacher_dir)),
        "LOG.PREFIX", str(tmp_path),
    ]
    if "ICKD" in cfg_path.read_text():
        # TRAIN_SUBSET 0: all 40 fixture images (4 per class); the first 24 leave a class with 1 < K + 1
        opts += ["ICKD.K", "2", "ICKD.N", "2", "ICKD.BANK.CACHE_DIR", str(tmp_path / "bank"), "DATASET.TRAIN_SUBSET", "0"]
    summary = run_config(cfg_path, opts)
    assert summary["complete"] and summary["epochs"] == 1
    assert 0.0 <= summary["best_top1"] <= 100.0
    run_dir = Path(summary["log_path"])
    for name in ("latest", "student_best", "summary.json", "worklog.txt"):
        assert (run_dir / name).exists(), name
    student = load_checkpoint(str(run_dir / "student_best"))["model"]
    assert all(torch.isfinite(v).all() for v in student.values() if v.is_floating_point())


def _fashion_opts(root: Path, prefix: Path, extra=()):
    return [
        "DATASET.ROOT", str(root), "DATASET.NUM_WORKERS", "0", "LOG.PREFIX", str(prefix),
        "LOG.TENSORBOARD_FREQ", "0", *extra,
    ]


@pytest.fixture(scope="module")
def fashion_fixture(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fashion")
    write_fashion_mnist_fixture(root, n_train=240, n_test=80)
    return root


RESUME_CFG = REPO / "configs" / "fashion_mnist" / "kd" / "res14_res8.yaml"


def _kd_resume_opts(fashion_fixture: Path, prefix: Path, teacher: Path):
    return _fashion_opts(
        fashion_fixture, prefix,
        ["SOLVER.EPOCHS", "2", "SOLVER.BATCH_SIZE", "16", "LOG.SAVE_STEP_FREQ", "3",
         "DATASET.TRAIN_SUBSET", "0", "DISTILLER.TEACHER_WEIGHTS", str(teacher), "EXPERIMENT.NAME", "resume"],
    )


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(fashion_fixture: Path, tmp_path: Path):
    """A real `kill -9` while training, then `--resume`: same weights and metrics as no kill."""
    teacher = write_teacher_checkpoint(tmp_path / "teacher.pth", "resnet14", "fashion_mnist", 10)
    straight = run_config(RESUME_CFG, _kd_resume_opts(fashion_fixture, tmp_path / "a", teacher))

    opts = _kd_resume_opts(fashion_fixture, tmp_path / "b", teacher)
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), "--cfg", str(RESUME_CFG), *opts]
    # the killed run must sum in the same order as the straight one: same thread count
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = Path(straight["log_path"].replace(str(tmp_path / "a"), str(tmp_path / "b"))) / "latest"
    sigkill_at_mid_epoch_checkpoint(proc, latest)

    resumed = run_config(RESUME_CFG, opts, resume=True)
    assert [h["test_acc"] for h in resumed["history"]] == [h["test_acc"] for h in straight["history"]]
    assert [h["train_loss"] for h in resumed["history"]] == pytest.approx([h["train_loss"] for h in straight["history"]], rel=1e-6)
    a = load_checkpoint(os.path.join(straight["log_path"], "student_latest"))["model"]
    b = load_checkpoint(os.path.join(resumed["log_path"], "student_latest"))["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
