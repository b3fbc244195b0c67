"""Small training utilities: meters, accuracy, learning-rate schedule, seeding, RNG state."""
from __future__ import annotations

import math
import os
import random
import sys
from typing import Any, Iterable

import numpy as np
import torch


class AverageMeter:
    """Running mean; its state is saved in checkpoints so a mid-epoch resume logs the same."""

    def __init__(self) -> None:
        self.sum = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.sum += float(value) * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def state_dict(self) -> dict[str, float]:
        return {"sum": self.sum, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.sum, self.count = float(state["sum"]), int(state["count"])


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: Iterable[int] = (1,)) -> list[float]:
    """Top-k accuracies in percent; k larger than the class count counts as the class count."""
    with torch.no_grad():
        num_classes = output.size(1)
        maxk = min(max(topk), num_classes)
        _, pred = output.topk(maxk, 1, True, True)
        correct = pred.t().eq(target.reshape(1, -1).expand_as(pred.t()))
        batch_size = target.size(0)
        return [
            correct[: min(k, num_classes)].reshape(-1).float().sum().item() * 100.0 / batch_size
            for k in topk
        ]


def shows_progress() -> bool:
    """Whether progress bars are drawn: only on a terminal (tqdm writes to stderr). In a log
    file or a pipe (sweeps, CI) every redraw would be a line; the per-epoch line says enough."""
    return sys.stderr.isatty()


def learning_rate(epoch: int, cfg: Any, step_fraction: float = 0.0) -> float:
    """LR for `epoch` (1-based) after `step_fraction` of its steps. "step" is mdistiller's
    schedule; "cosine" decays to 0; "poly" (segmentation's, DeepLab's) is
    ``LR * (1 - progress) ** SOLVER.POLY_POWER``. Cosine and poly are set before every step,
    so with a fixed number of steps per epoch poly equals the per-iteration schedule of
    iteration-based trainers (progress = iteration / total iterations)."""
    progress = (epoch - 1 + step_fraction) / cfg.SOLVER.EPOCHS
    if cfg.SOLVER.SCHEDULER == "cosine":
        return 0.5 * cfg.SOLVER.LR * (1.0 + math.cos(math.pi * progress))
    if cfg.SOLVER.SCHEDULER == "poly":
        return cfg.SOLVER.LR * max(0.0, 1.0 - progress) ** float(cfg.SOLVER.POLY_POWER)
    steps = int(np.sum(epoch > np.asarray(cfg.SOLVER.LR_DECAY_STAGES)))
    return cfg.SOLVER.LR * (cfg.SOLVER.LR_DECAY_RATE ** steps)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; on CPU this makes runs bit-for-bit reproducible."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def log_msg(msg: str, mode: str = "INFO") -> str:
    """mdistiller's coloured log prefix; plain text when not writing to a terminal."""
    colors = {"INFO": 36, "TRAIN": 32, "EVAL": 31, "WARN": 33}
    if not os.isatty(1):
        return f"[{mode}] {msg}"
    return f"\033[{colors.get(mode, 0)}m[{mode}] {msg}\033[0m"
