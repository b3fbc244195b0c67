"""torchrun support: process group from the environment, DDP wrapping, the run's device.

A run started by `torchrun --nproc_per_node=N tools/train.py ...` has WORLD_SIZE/RANK/
LOCAL_RANK set; a plain `python tools/train.py` has none and stays single-process.

What a distributed run shares, and how:

* parameters: DDP broadcasts them from rank 0 once and all-reduces (averages) gradients, so
  with ``SOLVER.BATCH_SIZE`` samples per rank a step equals one single-process step on the
  ranks' union batch (for losses that are means over the batch and no BatchNorm);
* the networks' buffers (BatchNorm statistics of ``student.*`` and ``teacher.*``): DDP
  broadcasts rank 0's at the start of every forward, so all ranks evaluate the same model;
* a method's own state (CRD's memories, ICKD's memory bank, anything outside the two
  networks): NOT broadcast by DDP, which would copy the whole state every step (51 MB for
  CIFAR-100's CRD memories, 5.2 GB for an ImageNet bank of 1.28M x 2048 in float16). The
  owner keeps it consistent: ICKD builds its bank in shards and broadcasts them, and
  all-gathers each step's refresh; CRD all-gathers each step's memory update
  (`all_gather_batch`) and averages its Z estimate over the ranks (`mean_over_ranks`);
* decisions that change the control flow (stop on a signal, skip a non-finite batch): agreed
  by all ranks (`any_rank`), since a rank that leaves the loop alone leaves the others
  waiting in a collective forever.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn as nn

# Submodules whose buffers DDP keeps in sync: the networks (the Distiller protocol's names).
NETWORK_PREFIXES = ("student.", "teacher.")


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_from_env() -> tuple[int, int]:
    """Initialise the process group once if torchrun asked for one; returns (rank, world_size)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            # Before the group: NCCL binds each rank to the device current at its first collective.
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def method_state_buffers(distiller: nn.Module) -> list[str]:
    """Names of the buffers outside the student and teacher: the method's own state.

    A distiller without a ``student`` submodule (not the Distiller protocol) gets none: DDP
    then syncs all of its buffers, as it does by default.
    """
    if not isinstance(getattr(distiller, "student", None), nn.Module):
        return []
    return [name for name, _ in distiller.named_buffers() if not name.startswith(NETWORK_PREFIXES)]


def wrap(distiller: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """DDP around the distiller when distributed; the bare distiller otherwise.

    ``find_unused_parameters`` (``SOLVER.DDP_FIND_UNUSED_PARAMETERS``): let DDP walk the
    autograd graph every step to find parameters that got no gradient. Off by default, as in
    torch: the walk costs time every step, and every shipped method uses all its parameters.
    """
    if not is_distributed():
        return distiller
    ignored = method_state_buffers(distiller)
    if ignored:
        # Names, not tensors: a method may replace a buffer (ICKD fills its bank after this).
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(distiller, ignored)
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        distiller, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def any_rank(*flags: bool, device: torch.device | None = None) -> tuple[bool, ...]:
    """For each flag, whether it is True on at least one rank (one tiny all-reduce).

    Single-process: the flags themselves, no communication.
    """
    if not is_distributed():
        return tuple(bool(flag) for flag in flags)
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    values = torch.tensor([int(bool(flag)) for flag in flags], dtype=torch.int32, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in values.tolist())


def all_gather_batch(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order; the tensor itself when
    not distributed. All ranks must pass the same shape: the per-rank batches of a step are
    equal in size (the sampler pads every rank to the same count)."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of ``tensor`` over the ranks (a new tensor; itself when not distributed)."""
    if not is_distributed():
        return tensor
    total = tensor.clone()
    dist.all_reduce(total)  # SUM: gloo has no AVG
    return total / dist.get_world_size()


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()
