"""torchrun support: process group from the environment, DDP wrapping, the run's device.

A run started by `torchrun --nproc_per_node=N tools/train.py ...` has WORLD_SIZE/RANK/
LOCAL_RANK set; a plain `python tools/train.py` has none and stays single-process.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn as nn


def init_from_env() -> tuple[int, int]:
    """Initialise the process group once if torchrun asked for one; returns (rank, world_size)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def wrap(distiller: nn.Module, device: torch.device) -> nn.Module:
    """DDP around the distiller when distributed; the bare distiller otherwise."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return distiller
    device_ids = [device.index] if device.type == "cuda" else None
    # Online teachers and unused heads make some parameters idle on some steps.
    return nn.parallel.DistributedDataParallel(distiller, device_ids=device_ids, find_unused_parameters=True)
