"""ICKD end to end through the real host: config -> build_trainer -> train -> summary.

Every run goes through `kdharness.engine.build.build_trainer` (what `tools/train.py` runs) on
the Fashion-MNIST fixture (real idx files), so the plugin is exercised exactly as a user's
command line does: the entry-point registration, the `ickd` trainer, the hooks that fill and
refresh the bank, the on-disk bank cache, the loss dict the trainer logs, the run summary.

(a) each configs/fashion_mnist/ickd*/ config trains an epoch and logs PICD/NICD; (b)+(e) the
documented ``python tools/train.py --cfg ...`` distils a trained teacher far above chance
(on the texture fixture of learning_setups.py, calibrated across seeds, threads and float kernels);
(c) the offline bank cache is reused and rebuilt; (d) bad ICKD values fail before any step.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ickd_plugin.distiller as ickd_distiller
from fixtures_data import write_fashion_mnist_fixture
from harness_utils import REPO, run_config, write_teacher_checkpoint
import learning_setups as learning
from kdharness.compose import load_config
from kdharness.engine.checkpoint import load_checkpoint, save_checkpoint
from kdharness.engine.trainer import unwrap

FASHION = REPO / "configs" / "fashion_mnist"
ICKD_KD_CFG = FASHION / "ickd_kd" / "res14_res8.yaml"

# config -> (summary method, extra loss terms the paradigm adds beside the base's and PICD/NICD)
CONFIGS = {
    "ickd/res14_res8.yaml": ("ICKD", {"loss_ce"}),
    "ickd_kd/res14_res8.yaml": ("ICKD+KD", {"loss_ce", "loss_kd"}),
    "ickd_dkd/res14_res8.yaml": ("ICKD+DKD", {"loss_ce", "loss_kd"}),
    "ickd_crd/res14_res8.yaml": ("ICKD+CRD", {"loss_ce", "loss_kd"}),
    "ickd_online/res14_res8.yaml": ("ICKD(online)+KD", {"loss_ce", "loss_kd", "loss_teacher_ce", "loss_teacher_kd"}),
    "ickd_teacher_free/res8.yaml": ("ICKD(teacher_free)", {"loss_ce"}),
}


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory) -> Path:
    """200 training images, exactly 20 per class (so ICKD.K <= 19 and ICKD.N <= 180)."""
    return write_fashion_mnist_fixture(tmp_path_factory.mktemp("fashion"), n_train=200, n_test=100)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return write_teacher_checkpoint(tmp_path_factory.mktemp("teacher") / "res14.pth", "resnet14", "fashion_mnist", 10)


def _opts(root: Path, tmp_path: Path, teacher: Path, *extra: str) -> list[str]:
    return [
        "DATASET.ROOT", str(root), "DATASET.NUM_WORKERS", "0", "DATASET.TRAIN_SUBSET", "0",
        "DATASET.TEST.BATCH_SIZE", "100", "SOLVER.EPOCHS", "1", "SOLVER.BATCH_SIZE", "32",
        "LOG.PREFIX", str(tmp_path / "runs"), "LOG.TENSORBOARD_FREQ", "1",
        "DISTILLER.TEACHER_WEIGHTS", str(teacher), "ICKD.BANK.CACHE_DIR", str(tmp_path / "bank"),
        "ICKD.K", "4", "ICKD.N", "4", "CRD.NCE.K", "16", *extra,
    ]


class StepRecorder:
    """A trainer hook that keeps the loss dict of every step (what the trainer logs)."""

    def __init__(self) -> None:
        self.losses: list[dict[str, float]] = []

    def after_step(self, trainer, step, losses) -> None:
        self.losses.append(dict(losses))


def _build(cfg_path: Path, opts: list[str]):
    from kdharness.engine.build import build_trainer

    cfg = load_config(str(cfg_path), opts)
    return build_trainer(cfg, opts, device="cpu")


# -- (a) every Fashion-MNIST ICKD config trains, names its method, logs PICD and NICD ----------
@pytest.mark.parametrize("name", sorted(CONFIGS), ids=lambda n: n.split("/")[0])
def test_fashion_ickd_config_trains_and_logs_picd_nicd(name, fashion_root, teacher, tmp_path):
    method, base_terms = CONFIGS[name]
    paradigm_needs_no_weights = "online" in name or "teacher_free" in name
    # online / teacher-free must never read a teacher checkpoint: point at one that does not exist
    weights = tmp_path / "no_such_teacher.pth" if paradigm_needs_no_weights else teacher
    trainer = _build(FASHION / name, _opts(fashion_root, tmp_path, weights))
    recorder = StepRecorder()
    trainer.register_hook(recorder)
    summary = trainer.train()

    assert summary["complete"] and summary["method"] == method
    assert summary["distiller"] == "ICKD"
    assert len(recorder.losses) == len(trainer.train_loader) == 7  # ceil(200 / 32)
    for losses in recorder.losses:
        assert set(losses) == base_terms | {"loss_picd", "loss_nicd"}, sorted(losses)
        assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    # PICD is a KL to a softened target: positive on an untrained student (the warm-up factor is > 0 at epoch 1)
    assert recorder.losses[0]["loss_picd"] > 0
    bound = trainer.cfg.ICKD.NICD_WEIGHT * trainer.cfg.ICKD.BETA2  # NICD is a hinge in [0, beta_2]
    assert all(0.0 <= step["loss_nicd"] <= bound + 1e-6 for step in recorder.losses)

    run_dir = Path(summary["log_path"])
    events = b"".join(Path(p).read_bytes() for p in glob.glob(str(run_dir / "train.events" / "*")))
    assert b"train/loss_picd" in events and b"train/loss_nicd" in events
    assert "best_acc" in (run_dir / "worklog.txt").read_text()
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["method"] == method and on_disk["complete"]
    student = load_checkpoint(str(run_dir / "student_latest"))["model"]
    assert all(torch.isfinite(v).all() for v in student.values() if v.is_floating_point())
    distiller = unwrap(trainer.distiller)
    assert distiller.bank.num_rows == 200
    assert (distiller.teacher is None) == ("teacher_free" in name)


# -- (b) + (e) the documented command line distils: far above chance, on every CPU -----------
@pytest.fixture(scope="module")
def learn_root(tmp_path_factory) -> Path:
    return learning.write_texture_fixture(tmp_path_factory.mktemp("fashion_learn"))


@pytest.mark.numerics
def test_documented_command_line_ickd_kd_learns_far_above_chance(learn_root, tmp_path):
    """The documented pipeline in miniature: vanilla/res14 trains the teacher (in-process, through
    build_trainer), then ``python tools/train.py --cfg configs/fashion_mnist/ickd_kd/res14_res8.yaml
    KEY VALUE ...`` distils it in a subprocess, which must exit 0 and write a summary.

    Fixture, budget and thresholds are tests/learning_setups.py's; the thresholds sit far below
    the minimum that scripts/calibrate_learning_tests.py measured over seeds x {1, 2} threads x
    {default, portable} float kernels (docs/reliability.md, "Test calibration"). Chance is 10 %.
    """
    teacher_run = run_config(learning.TEACHER_CFG, learning.teacher_opts(learn_root, tmp_path / "teacher"))
    assert teacher_run["best_top1"] > learning.TEACHER_MIN_TOP1, teacher_run["history"]
    teacher_weights = os.path.join(teacher_run["log_path"], "student_best")

    opts = learning.student_opts(learn_root, tmp_path / "runs", teacher_weights, tmp_path / "bank")
    cmd = [sys.executable, "tools/train.py", "--cfg", learning.ICKD_KD_CFG_REL, *opts]
    # the subprocess gets this process's thread count, so a 2-thread test run trains with 2 threads
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = glob.glob(str(tmp_path / "runs" / "**" / "summary.json"), recursive=True)
    assert len(summaries) == 1, summaries
    summary = json.loads(Path(summaries[0]).read_text())
    accuracies = learning.accuracies(summary)
    assert summary["complete"] and summary["method"] == "ICKD+KD" and len(accuracies) == learning.STUDENT_EPOCHS
    assert summary["last_top1"] > learning.STUDENT_MIN_TOP1, accuracies
    assert glob.glob(str(tmp_path / "bank" / "bank_*.pt"))  # the offline bank was cached


# -- (c) the offline bank cache: reused with the same teacher, rebuilt when it changes --------
class _TeacherRows:
    """Counts the images the teacher sees (training steps + any pass over the training set)."""

    def __init__(self, teacher: torch.nn.Module) -> None:
        self.rows = 0
        teacher.register_forward_pre_hook(self._count)

    def _count(self, module, args) -> None:
        self.rows += args[0].shape[0]


def test_bank_cache_reused_for_same_teacher_and_rebuilt_when_it_changes(fashion_root, tmp_path, monkeypatch):
    teacher_path = write_teacher_checkpoint(tmp_path / "teacher.pth", "resnet14", "fashion_mnist", 10)
    passes = []
    real_extract = ickd_distiller.extract_features

    def counting_extract(*args, **kwargs):
        passes.append(1)
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(ickd_distiller, "extract_features", counting_extract)

    def run(name: str) -> int:
        trainer = _build(ICKD_KD_CFG, _opts(fashion_root, tmp_path, teacher_path, "EXPERIMENT.NAME", name))
        seen = _TeacherRows(unwrap(trainer.distiller).teacher)
        assert trainer.train()["complete"]
        return seen.rows

    assert run("first") == 200 + 200  # the bank pass over the 200 training images + 1 epoch of steps
    assert len(passes) == 1
    cache_files = sorted(glob.glob(str(tmp_path / "bank" / "bank_*.pt")))
    assert len(cache_files) == 1
    written = os.path.getmtime(cache_files[0])

    assert run("second") == 200  # training steps only: the bank came from the cache
    assert len(passes) == 1
    assert sorted(glob.glob(str(tmp_path / "bank" / "bank_*.pt"))) == cache_files
    assert os.path.getmtime(cache_files[0]) == written

    # Same path, new weights (a retrained teacher): the key changes, the bank is rebuilt.
    state = load_checkpoint(str(teacher_path))
    state["model"]["fc.weight"] = state["model"]["fc.weight"] + 0.01
    save_checkpoint(state, str(teacher_path))
    assert run("third") == 200 + 200
    assert len(passes) == 2
    assert len(glob.glob(str(tmp_path / "bank" / "bank_*.pt"))) == 2


# -- (d) ICKD config errors: ValueError naming the key, before any training step --------------
@pytest.mark.parametrize(
    "extra, expected",
    [
        (["ICKD.K", "20"], r"ICKD\.K = 20 .*smallest class"),  # 20 images per class: K <= 19
        (["ICKD.N", "181"], r"ICKD\.N = 181 .*at most 180"),  # 200 - 20 other-class images
        (["ICKD.TAU", "0.0"], r"ICKD\.TAU = 0\.0; expected a number > 0"),
        (["ICKD.PICD_WEIGHT", "-1.0"], r"ICKD\.PICD_WEIGHT = -1\.0; expected a number >= 0"),
        (["ICKD.PARADIGM", "semi"], r"ICKD\.PARADIGM = 'semi'; allowed: offline, online, teacher_free"),
        (["ICKD.BASE", "ICKD"], r"ICKD\.BASE = 'ICKD'"),
        (["ICKD.PARADIGM", "teacher_free"], r"ICKD\.BASE = 'KD'.*teacher_free"),  # the config's BASE is KD
    ],
    ids=["K", "N", "TAU", "PICD_WEIGHT", "PARADIGM", "BASE_ICKD", "BASE_KD_teacher_free"],
)
def test_ickd_config_error_names_key_before_training(extra, expected, fashion_root, teacher, tmp_path):
    opts = _opts(fashion_root, tmp_path, teacher, *extra)
    recorder = StepRecorder()
    trainer = None
    with pytest.raises(ValueError, match=expected):
        trainer = _build(ICKD_KD_CFG, opts)
        trainer.register_hook(recorder)
        trainer.train()
    if trainer is not None:  # the error came from the bank check in before_train
        trainer._release_lock()
        trainer.tf_writer.close()
    assert recorder.losses == []
    assert not glob.glob(str(tmp_path / "runs" / "**" / "latest"), recursive=True)
