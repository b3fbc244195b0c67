"""Exact resume, for every distiller and every ICKD paradigm.

For each method: one run trains 2 epochs uninterrupted; a second run "dies" in the middle of
epoch 2 (a trainer hook raises at a chosen global step, after a periodic `latest` checkpoint
was written and before the next one: nothing else is saved, the exception leaves train());
a fresh trainer then resumes it with ``train(resume=True)``. The resumed run must end where
the uninterrupted one ends: the same per-epoch history, bitwise-identical student weights,
and the same full distiller state (teacher, CRD memory, online / teacher-free memory bank)
and optimizer state. (A real SIGKILL variant for KD is in test_train_e2e.py.)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from fixtures_data import write_fashion_mnist_fixture
from harness_utils import REPO, write_teacher_checkpoint
from kdharness.compose import load_config
from kdharness.engine.checkpoint import load_checkpoint
from kdharness.engine.trainer import unwrap

FASHION = REPO / "configs" / "fashion_mnist"

# method (as the summary names it) -> config
CASES = {
    "KD": "kd/res14_res8.yaml",
    "DKD": "dkd/res14_res8.yaml",
    "CRD": "crd/res14_res8.yaml",
    "ICKD+KD": "ickd_kd/res14_res8.yaml",
    "ICKD(online)+KD": "ickd_online/res14_res8.yaml",
    "ICKD(teacher_free)": "ickd_teacher_free/res8.yaml",
}

N_TRAIN, BATCH, SAVE_EVERY = 80, 16, 2  # 5 steps per epoch; `latest` after steps 2 and 4 of each
STEPS_PER_EPOCH = N_TRAIN // BATCH
CRASH_AT = STEPS_PER_EPOCH + 3  # global step 8 = epoch 2, step 3: one step after the step-2 checkpoint


class SimulatedCrash(Exception):
    """Stands for the process dying: raised from a hook, nothing is saved on the way out."""


class CrashAt:
    def __init__(self, global_step: int) -> None:
        self.global_step = global_step

    def after_step(self, trainer, step, losses) -> None:
        if step == self.global_step:
            raise SimulatedCrash(f"simulated crash after global step {step}")


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory) -> Path:
    """80 training images, 8 per class (ICKD.K 4 and N 4 fit), 40 test images."""
    return write_fashion_mnist_fixture(tmp_path_factory.mktemp("fashion"), n_train=N_TRAIN, n_test=40)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return write_teacher_checkpoint(tmp_path_factory.mktemp("teacher") / "res14.pth", "resnet14", "fashion_mnist", 10)


def _opts(root: Path, prefix: Path, teacher: Path, bank_dir: Path) -> list[str]:
    return [
        "EXPERIMENT.SEED", "3", "DATASET.ROOT", str(root), "DATASET.NUM_WORKERS", "0",
        "DATASET.TRAIN_SUBSET", "0", "DATASET.TEST.BATCH_SIZE", "40", "SOLVER.EPOCHS", "2",
        "SOLVER.BATCH_SIZE", str(BATCH), "LOG.SAVE_STEP_FREQ", str(SAVE_EVERY), "LOG.TENSORBOARD_FREQ", "0",
        "LOG.PREFIX", str(prefix), "DISTILLER.TEACHER_WEIGHTS", str(teacher), "CRD.NCE.K", "16",
        "ICKD.K", "4", "ICKD.N", "4", "ICKD.BANK.CACHE_DIR", str(bank_dir),
    ]


def _build(cfg_path: Path, opts: list[str]):
    from kdharness.engine.build import build_trainer

    return build_trainer(load_config(str(cfg_path), opts), opts, device="cpu")


def _assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key} differs"


def _optimizer_tensors(state: dict) -> dict:
    return {
        f"{param}.{name}": value
        for param, slots in state["state"].items()
        for name, value in slots.items()
        if torch.is_tensor(value)
    }


@pytest.mark.parametrize("method", list(CASES))
def test_crash_mid_epoch_then_resume_is_exact(method, fashion_root, teacher, tmp_path):
    cfg_path = FASHION / CASES[method]
    bank_dir = tmp_path / "bank"  # shared: the crashed and resumed runs reuse the offline bank cache

    straight = _build(cfg_path, _opts(fashion_root, tmp_path / "straight", teacher, bank_dir))
    assert len(straight.train_loader) == STEPS_PER_EPOCH
    expected = straight.train()
    assert expected["method"] == method and expected["complete"]

    opts = _opts(fashion_root, tmp_path / "crashed", teacher, bank_dir)
    crashed = _build(cfg_path, opts)
    crashed.register_hook(CrashAt(CRASH_AT))
    with pytest.raises(SimulatedCrash):
        crashed.train()
    crashed._release_lock()  # the OS would release it when the process dies
    crashed.tf_writer.close()
    left = load_checkpoint(os.path.join(crashed.log_path, "latest"))
    assert (left["epoch"], left["step_in_epoch"], left["global_step"]) == (2, SAVE_EVERY, STEPS_PER_EPOCH + SAVE_EVERY)
    partial = json.loads(Path(crashed.log_path, "summary.json").read_text())  # written after epoch 1
    assert not partial["complete"] and len(partial["history"]) == 1

    resumed_trainer = _build(cfg_path, opts)
    assert resumed_trainer.log_path == crashed.log_path
    resumed = resumed_trainer.train(resume=True)
    assert resumed_trainer.global_step == expected_steps(2)

    assert resumed["complete"] and resumed["method"] == method
    assert resumed["history"] == expected["history"]  # test_acc, test_loss, train_loss, lr: all exact
    _assert_same_tensors(
        load_checkpoint(os.path.join(expected["log_path"], "student_latest"))["model"],
        load_checkpoint(os.path.join(resumed["log_path"], "student_latest"))["model"],
        "student weights",
    )
    final_a = load_checkpoint(os.path.join(expected["log_path"], "latest"))
    final_b = load_checkpoint(os.path.join(resumed["log_path"], "latest"))
    assert final_a["global_step"] == final_b["global_step"] == expected_steps(2)
    # the whole distiller: teacher (trained online), CRD's memory, the persistent ICKD bank
    _assert_same_tensors(final_a["model"], final_b["model"], "distiller state_dict")
    _assert_same_tensors(_optimizer_tensors(final_a["optimizer"]), _optimizer_tensors(final_b["optimizer"]), "optimizer")

    distiller_a, distiller_b = unwrap(straight.distiller), unwrap(resumed_trainer.distiller)
    if hasattr(distiller_a, "bank"):
        # online / teacher-free: refreshed every step, restored from the checkpoint;
        # offline: rebuilt from the cache, identical to the one built from the teacher
        bank_a, bank_b = dict(distiller_a.bank.named_buffers()), dict(distiller_b.bank.named_buffers())
        _assert_same_tensors(bank_a, bank_b, "memory bank")
        paradigm = distiller_a.opts.paradigm
        persistent = any(key.startswith("bank.") for key in final_a["model"])
        assert persistent == (paradigm != "offline")
        if paradigm != "offline":
            # the bank really moved during training (else this comparison would prove little)
            fresh = _build(cfg_path, _opts(fashion_root, tmp_path / "fresh", teacher, bank_dir))
            fresh._call_hooks("before_train")
            fresh._release_lock()
            fresh.tf_writer.close()
            assert not torch.equal(unwrap(fresh.distiller).bank.features, distiller_a.bank.features)


def expected_steps(epochs: int) -> int:
    return epochs * STEPS_PER_EPOCH
