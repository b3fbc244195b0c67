"""`EpochSampler`: a seeded, shardable, resumable sampler that yields ``(epoch, index)``.

Yielding the epoch with each index lets `IndexedDataset` derive the sample's augmentation
from ``(seed, epoch, index)`` inside whichever worker loads it. The order itself is a pure
function of ``(seed, epoch)``, and ``set_start`` skips what a checkpoint already consumed,
so a run stopped mid-epoch resumes on exactly the batches it would have seen.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler

from kdharness.data.indexed import SAMPLER_DOMAIN, mix_seed


class EpochSampler(Sampler[tuple[int, int]]):
    """Deterministic per-epoch permutation, sharded like ``DistributedSampler``.

    With ``world_size > 1`` the permutation is padded by repeating its head up to a
    multiple of ``world_size`` (or cut down with ``drop_last``) and rank ``r`` takes
    ``indices[r::world_size]``, exactly as torch's ``DistributedSampler``.

    Call ``set_epoch(e)`` before each epoch, then, when resuming inside that epoch,
    ``set_start(batches_done, batch_size)``; the next ``set_epoch`` starts from the top.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if num_samples <= 0:
            raise ValueError(f"num_samples = {num_samples}; expected a dataset with at least one sample")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank = {rank}, world_size = {world_size}; expected 0 <= rank < world_size")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0
        if drop_last and self.num_samples % world_size:
            self.per_rank = self.num_samples // world_size
        else:
            self.per_rank = math.ceil(self.num_samples / world_size)
        if self.per_rank == 0:
            raise ValueError(
                f"num_samples = {num_samples} with world_size = {world_size} and drop_last leaves "
                "no sample for a rank"
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation and forget any mid-epoch start."""
        self.epoch = int(epoch)
        self.start = 0

    def set_start(self, num_batches_done: int, batch_size: int) -> None:
        """Skip the ``num_batches_done * batch_size`` samples this rank already consumed."""
        if num_batches_done < 0 or batch_size <= 0:
            raise ValueError(
                f"set_start({num_batches_done}, {batch_size}); expected num_batches_done >= 0, batch_size > 0"
            )
        self.start = min(num_batches_done * batch_size, self.per_rank)

    def epoch_indices(self, epoch: int | None = None) -> list[int]:
        """This rank's full index list for ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(mix_seed(SAMPLER_DOMAIN, self.seed, epoch))
            indices = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            indices = list(range(self.num_samples))
        total = self.per_rank * self.world_size
        if total > len(indices):
            padding = total - len(indices)
            repeats = math.ceil(padding / len(indices))
            indices += (indices * repeats)[:padding]
        else:
            indices = indices[:total]
        return indices[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for index in self.epoch_indices(epoch)[self.start :]:
            yield epoch, index

    def __len__(self) -> int:
        return self.per_rank - self.start
