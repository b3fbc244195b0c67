"""torch.distributed helpers that both banks use: who this rank is, where collectives run,
and moving rows between ranks.

Without an initialised process group every helper is the identity of one process, so the
same code serves a single-process run and every rank of a distributed one.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist

from ickd_plugin.blocks import rows_per_block


def dist_world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (sizes may differ), in rank order; identity without distributed."""
    _, world = dist_world()
    if world == 1:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    padded = tensor.new_zeros((max(sizes),) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([chunk[:s] for chunk, s in zip(gathered, sizes)])


def shard_bounds(length: int, rank: int, world: int) -> tuple[int, int]:
    """Positions ``[start, stop)`` of rank ``rank``'s contiguous share of ``length`` samples."""
    return length * rank // world, length * (rank + 1) // world


def communication_device() -> torch.device:
    """Where collectives run: the current GPU under NCCL, the CPU otherwise (gloo)."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(tensor: torch.Tensor, op: Any) -> torch.Tensor:
    """In-place all-reduce on the communication device; identity without distributed."""
    if dist_world()[1] == 1:
        return tensor
    staged = tensor.to(communication_device())
    dist.all_reduce(staged, op=op)
    tensor.copy_(staged)
    return tensor


def broadcast_shards(tensors: Sequence[torch.Tensor], length: int) -> None:
    """Fill every rank's ``tensors`` (first dim ``length``) in place from each rank's shard.

    Rank ``r`` holds the rows `shard_bounds` gives it and broadcasts them; the others receive
    into the same rows. Nothing of full size is allocated: a tensor on the communication
    device is broadcast in place, any other (a CPU bank under NCCL) through a staging
    buffer of about 16 MiB.
    """
    _, world = dist_world()
    if world == 1:
        return
    comm = communication_device()
    for source in range(world):
        start, stop = shard_bounds(length, source, world)
        for tensor in tensors:
            shard = tensor[start:stop]
            if shard.numel() == 0:
                continue
            if tensor.device == comm:
                dist.broadcast(shard, src=source)
                continue
            step = rows_per_block(shard[0].numel() * shard.element_size())
            for first in range(0, shard.shape[0], step):
                piece = shard[first : first + step]
                staged = piece.to(comm)
                dist.broadcast(staged, src=source)
                piece.copy_(staged)

