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
    """A randomly initialised teacher saved the way mdistiller saves its teachers."""
    from kdharness.models import create_model

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(123)
    model = create_model(model_name, dataset, num_classes)
    save_checkpoint({"model": model.state_dict(), "epoch": 240}, str(path))
    return path


def run_config(cfg_path: str | os.PathLike, opts: Sequence[str], resume: bool = False) -> dict:
    """Train in-process exactly as `tools/train.py` would; returns the run summary."""
    from kdharness.engine.build import build_trainer

    cfg = load_config(str(cfg_path), list(opts))
    trainer = build_trainer(cfg, list(opts), device="cpu")
    return trainer.train(resume=resume)
