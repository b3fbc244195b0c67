"""Helpers for end-to-end tests: fixture datasets, tiny teacher checkpoints, in-process runs."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from kdharness.compose import load_config
from kdharness.engine.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]

# Overrides that shrink any CIFAR config to a few steps on the CIFAR-format fixture.
TINY_CIFAR = [
    "SOLVER.EPOCHS", "1",
    "SOLVER.BATCH_SIZE", "8",
    "DATASET.TEST.BATCH_SIZE", "16",
    "DATASET.NUM_WORKERS", "0",
    "DATASET.TRAIN_SUBSET", "24",
    "DATASET.DOWNLOAD", "False",
    "CRD.NCE.K", "16",
    "LOG.TENSORBOARD_FREQ", "0",
]


def write_teacher_checkpoint(path: Path, model_name: str, dataset: str, num_classes: int) -> Path:
    """A randomly initialised teacher saved the way mdistiller saves its teachers.

    Its BatchNorm running statistics are first set from a few random batches (train-mode
    forwards, no weight update), as any trained teacher's are: with the default statistics
    (mean 0, variance 1) a deep untrained network in eval mode amplifies its activations
    layer after layer (resnet110's reach ~1e8), which a feature loss such as VID squares to inf.
    """
    from kdharness.models import create_model

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(123)
    model = create_model(model_name, dataset, num_classes)
    size = 224 if dataset == "imagenet" else 64 if dataset == "tiny_imagenet" else 32
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, size, size))
    save_checkpoint({"model": model.state_dict(), "epoch": 240}, str(path))
    return path


def run_config(cfg_path: str | os.PathLike, opts: Sequence[str], resume: bool = False) -> dict:
    """Train in-process exactly as `tools/train.py` would; returns the run summary."""
    from kdharness.engine.build import build_trainer

    cfg = load_config(str(cfg_path), list(opts))
    trainer = build_trainer(cfg, list(opts), device="cpu")
    return trainer.train(resume=resume)


def sigkill_at_mid_epoch_checkpoint(proc, latest: Path, timeout: float = 120.0) -> tuple[int, int]:
    """Watch `latest` of the training process `proc` and `kill -9` it as soon as a checkpoint
    written in the middle of an epoch appears; returns that checkpoint's (epoch, step)."""
    import signal
    import time

    from kdharness.engine.checkpoint import load_checkpoint

    deadline, killed_at = time.time() + timeout, None
    while time.time() < deadline and proc.poll() is None:
        if latest.exists():
            try:
                state = load_checkpoint(str(latest))
            except Exception:  # caught between a write and its rename, or half written: look again
                state = None
            if state and state["step_in_epoch"] > 0:
                proc.send_signal(signal.SIGKILL)
                killed_at = (state["epoch"], state["step_in_epoch"])
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed_at is not None, f"never saw a mid-epoch checkpoint: {proc.stderr.read().decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    return killed_at
