"""A memory bank sharded across the ranks of a torch.distributed run (``ICKD.BANK.SHARDED``).

A replicated bank costs every rank the whole ``[R, D]`` table (5.3 GB for ImageNet in
float16, 57 GB for 14M rows) and the whole filling pass. Sharded, rank ``r`` of ``W`` holds
only the contiguous rows ``shard_bounds(R, r, W)`` of the bank a single process would
build (rows in dataset-index order): their features, ``1/|h|``, labels, dataset indices and
a class table of those rows; the global class sizes (``[C]``) are the only global state.

* Building: each rank runs the no-grad pass over its own rows (`teacher_pass.extract_shard`)
  and keeps them; nothing is broadcast.
* Retrieval: `ickd_plugin.sharded_retrieval` (per-shard candidates, exact merge).
* Refresh (online, teacher-free): a rank writes only the rows it owns; the global batch it
  needs was already gathered for retrieval, so a refresh communicates nothing (with
  ``ICKD.SIMILARITY centered``, one all-reduce of the ``[D]`` change of the rows' sum, so
  every rank keeps the same centre).
* Centre and ties: the centre is the mean of all ranks' rows (an all-reduce of their sums);
  tie groups (`ickd_plugin.ties`) are found over the whole bank, so equal rows in different
  shards also tie exactly, and are recomputed whenever the rows are set (fill or load).
* Offline cache: one file per shard, ``bank_<key>.shard<r>of<W>.pt`` (`ickd_plugin.bank_cache`
  writes and reads them, with the offline cache's key and checks); a run with the same
  world size reads its own file only, another world size reads the overlapping parts of
  the files it finds (memory-mapped, so only those rows are copied).
* Checkpoints (online, teacher-free): the host's checkpoint is written by rank 0 alone, so
  it cannot hold the other ranks' rows. Before each checkpoint every rank writes its rows
  to ``<run dir>/ickd_bank_shards/step<global step>/`` (same file format as the cache) and
  the checkpoint records that step; loading the checkpoint reads them back (re-sliced for
  another world size).
"""
from __future__ import annotations

import os
import re
import shutil
import warnings
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from ickd_plugin.bank_cache import load_shard_rows, save_cache_or_warn, save_shard_rows, shard_path
from ickd_plugin.distributed import all_reduce, communication_device, dist_world, shard_bounds
from ickd_plugin.memory_bank import (
    CenteredSimilarity, MemoryBank, class_row_table, describe_bank, feature_sum, inverse_norms, report,
)
from ickd_plugin.retrieval import TieGroups
from ickd_plugin.ties import find_tie_groups
from ickd_plugin.teacher_pass import extract_shard

CHECKPOINT_SUBDIR = "ickd_bank_shards"
# Checkpoint shard sets kept on disk: those of the newest two checkpoints ("latest", "latest.prev").
CHECKPOINT_SETS_KEPT = 2


class ShardedMemoryBank(CenteredSimilarity, nn.Module):
    """This rank's rows of the bank: ``features [R_r, D]``, ``inv_norms``, ``labels``, ``indices``
    (dataset index of each row, ascending), ``class_rows [C, M_r]`` (local rows per class) and
    the global ``class_counts [C]``.

    ``num_rows`` is the whole bank's row count; ``start``/``stop`` are this rank's global rows.
    """

    sharded = True

    def __init__(self, dtype: torch.dtype = torch.float32, persistent: bool = False, centered: bool = False) -> None:
        super().__init__()
        self.dtype = dtype
        self.centered = centered
        self._ties: TieGroups | None = None
        self.key: str | None = None
        self.total_rows = 0
        self.start = self.stop = 0
        self.world = 1
        self.checkpoint_dir: str | None = None  # where the online bank's rows go at each checkpoint
        self._last_batch: tuple[torch.Tensor, torch.Tensor] | None = None  # global (index, query)
        self.loaded_from = "none"  # "build", "cache" or "checkpoint": how the rows were last set
        self._rows_step = -1  # the checkpoint step whose rows the bank holds (-1: none)
        for name, dtype_ in (("inv_norms", torch.float32), ("labels", torch.long), ("indices", torch.long),
                             ("class_counts", torch.long), ("feature_sum", torch.float64), ("center", torch.float32)):
            self.register_buffer(name, torch.empty(0, dtype=dtype_), persistent=False)
        self.register_buffer("features", torch.empty(0, 0, dtype=dtype), persistent=False)
        self.register_buffer("class_rows", torch.empty(0, 0, dtype=torch.long), persistent=False)
        # The only bank state in a checkpoint: the global step whose shard files hold the rows.
        self.register_buffer("checkpoint_step", torch.tensor(-1), persistent=persistent)

    @property
    def is_built(self) -> bool:
        return self.total_rows > 0

    @property
    def num_rows(self) -> int:
        return self.total_rows

    def class_sizes(self) -> list[int]:
        return self.class_counts.tolist()

    def check_capacity(self, k: int, n: int, all_same_class: bool) -> None:
        """The replicated bank's rule, on the global class sizes."""
        MemoryBank.check_capacity(self, k, n, all_same_class)  # type: ignore[arg-type]  # reads class_sizes, num_rows

    def local_bytes(self) -> int:
        """Bytes this rank holds for the bank (features, norms, labels, indices, class table)."""
        return sum(t.numel() * t.element_size() for t in self._buffers.values() if t is not None)

    # ------------------------------------------------------------------ filling

    def fill_shard(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        num_classes: int,
        total_rows: int,
        device: torch.device | str,
        key: str | None = None,
    ) -> None:
        """Set this rank's rows ``shard_bounds(total_rows, rank, world)`` (ascending dataset indices).

        Collective: the ranks agree on the class count and sum their class sizes, and check that
        the shards follow each other in dataset-index order (rank r's indices below rank r+1's).
        """
        rank, world = dist_world()
        start, stop = shard_bounds(total_rows, rank, world)
        if features.shape[0] != stop - start:
            raise ValueError(
                f"ICKD.BANK.SHARDED: rank {rank} of {world} holds bank rows [{start}, {stop}) of {total_rows}, "
                f"but got {features.shape[0]} rows"
            )
        indices = indices.to(device=device, dtype=torch.long)
        labels = labels.to(device=device, dtype=torch.long)
        self._check_order(indices, rank, world)
        classes = torch.tensor([max(int(num_classes), int(labels.max()) + 1 if labels.numel() else 0)])
        num_classes = int(all_reduce(classes, dist.ReduceOp.MAX).item())
        counts = torch.bincount(labels.cpu(), minlength=num_classes)
        self.features = features.to(device=device, dtype=self.dtype)
        self.labels = labels
        self.indices = indices
        self.class_rows = class_row_table(labels, num_classes)
        self.class_counts = all_reduce(counts, dist.ReduceOp.SUM).to(device)
        self.total_rows, self.start, self.stop, self.world = int(total_rows), start, stop, world
        self.key = key
        self._derive()

    @property
    def ties(self) -> TieGroups | None:
        """The groups of equal rows that have members in this shard, in local rows (for `retrieve`)."""
        return self._ties

    def _derive(self) -> None:
        """Centre, norms and tie groups from the rows (collective: every rank calls it)."""
        if self.centered:
            self.feature_sum = all_reduce(feature_sum(self.features), dist.ReduceOp.SUM)
            self.center = (self.feature_sum / max(1, self.total_rows)).float()
        self.inv_norms = inverse_norms(self.features, self.similarity_center)
        rows, groups, representatives = find_tie_groups(self.features, self.start)
        mine = (rows >= self.start) & (rows < self.stop)
        self._ties = None if not bool(mine.any()) else TieGroups(
            representatives, inverse_norms(representatives, self.similarity_center), rows[mine] - self.start, groups[mine]
        )

    @staticmethod
    def _check_order(indices: torch.Tensor, rank: int, world: int) -> None:
        if indices.numel() > 1 and not bool((indices[1:] > indices[:-1]).all()):
            raise ValueError(
                "ICKD.BANK.SHARDED needs each rank's rows in ascending dataset-index order, as the "
                "training set's positions (IndexedDataset's index is its position); this rank's are not"
            )
        ends = torch.tensor([[int(indices[0]), int(indices[-1])] if indices.numel() else [-1, -1]])
        if world > 1:
            parts = [torch.empty_like(ends) for _ in range(world)]
            staged = ends.to(communication_device())
            gathered = [p.to(staged.device) for p in parts]
            dist.all_gather(gathered, staged)
            ends = torch.cat([g.cpu() for g in gathered])
        last = -1
        for first, final in ends.tolist():
            if first < 0:
                continue
            if first <= last:
                raise ValueError(
                    "ICKD.BANK.SHARDED: the ranks' shards of the training set do not follow each other in "
                    f"dataset-index order (a shard starts at index {first} after one that ended at {last}); "
                    "the sharded bank needs dataset indices that increase with position"
                )
            last = final

    @torch.no_grad()
    def build(
        self,
        model: nn.Module,
        classifier: nn.Linear,
        dataset: Any,
        batch_size: int,
        num_workers: int,
        device: torch.device,
        key: str | None = None,
        cache_dir: str | None = None,
        resume_state: dict | None = None,
    ) -> None:
        """Fill this rank's rows: from the rows saved with the checkpoint being resumed
        (``resume_state``, the host's; online), else from the shard cache in ``cache_dir`` if
        every rank finds a valid one for ``key``, else by one pass over this rank's part of
        ``dataset`` (and write this rank's cache file)."""
        rank, world = dist_world()
        total = len(dataset)
        start, stop = shard_bounds(total, rank, world)
        step = _checkpoint_step_of(resume_state)
        if step >= 0 and self.checkpoint_dir:
            saved = load_shard_rows(os.path.join(self.checkpoint_dir, f"step{step}"), _step_key(step), total, start, stop,
                                    warn=False)
            found = all_reduce(torch.tensor([int(saved is not None)]), dist.ReduceOp.MIN)
            if int(found.item()):  # otherwise a pass, and loading the checkpoint says what is missing
                self.fill_shard(*saved, classifier.out_features, total, device, key=key)  # type: ignore[misc]
                self.checkpoint_step.fill_(step)
                self.loaded_from, self._rows_step = "checkpoint", step
                self._report()
                return
        cached = load_shard_rows(cache_dir, key, total, start, stop) if cache_dir and key else None
        if world > 1 and cache_dir and key:  # every rank must take the same branch (filling is collective)
            found = all_reduce(torch.tensor([int(cached is not None)]), dist.ReduceOp.MIN)
            cached = cached if int(found.item()) else None
        if cached is not None:
            features, labels, indices = cached
            self.loaded_from = "cache"
        else:
            with torch.random.fork_rng(devices=[]):  # the pass must not consume the global RNG
                features, labels, indices = extract_shard(
                    model, classifier, dataset, start, stop, batch_size, num_workers, self.dtype, device
                )
            self.loaded_from = "build"
        self.fill_shard(features, labels, indices, classifier.out_features, total, device, key=key)
        if cached is None and cache_dir and key:
            save_cache_or_warn(shard_path(cache_dir, key, rank, world), save_shard_rows, key, total, start, stop,
                               self.features, self.labels, self.indices)
            if world > 1:
                dist.barrier()  # the set is complete before any rank looks for it again
        self._report()

    def _report(self) -> None:
        how = {"build": "filled by a pass over its rows", "cache": "read from the shard cache",
               "checkpoint": "read from the checkpoint's shard files"}[self.loaded_from]
        report(f"memory bank: sharded over {self.world} rank(s), {self.total_rows} rows; rank 0 holds rows "
               f"[{self.start}, {self.stop}), {how}: {describe_bank(self.features)}")

    # ------------------------------------------------------------------ rows

    def local_rows_for(self, index: torch.Tensor) -> torch.Tensor:
        """This rank's row of each dataset index, -1 where another rank (or no rank) holds it."""
        index = index.to(self.indices.device).long()
        if self.indices.numel() == 0:
            return torch.full_like(index, -1)
        position = torch.searchsorted(self.indices, index.contiguous()).clamp_(max=self.indices.numel() - 1)
        return torch.where(self.indices[position] == index, position, torch.full_like(position, -1))

    def remember_batch(self, index: torch.Tensor, queries: torch.Tensor) -> None:
        """Keep the step's global (index, query), gathered for retrieval, for the refresh after the step."""
        self._last_batch = (index, queries)

    @torch.no_grad()
    def refresh_last_batch(self, momentum: float) -> None:
        """``h <- m h + (1 - m) h_new`` for the rows of the last retrieved global batch that this rank holds."""
        if self._last_batch is None:
            return
        index, queries = self._last_batch
        self._last_batch = None
        rows = self.local_rows_for(index)
        owned = rows >= 0
        rows, new = rows[owned], queries.to(self.features.device)[owned]
        if self.centered:  # every rank takes part in the centre's update, rows or not
            change = torch.zeros_like(self.feature_sum)
        if rows.numel():
            self._rows_step = -1  # the rows no longer are those of a saved checkpoint
            updated = (momentum * self.features[rows].float() + (1.0 - momentum) * new.float()).to(self.dtype)
            if self.centered:
                change = updated.double().sum(dim=0) - self.features[rows].double().sum(dim=0)
            self.features[rows] = updated
            if not self.centered:
                self.inv_norms[rows] = inverse_norms(updated)
            if self._ties is not None:
                kept = ~torch.isin(self._ties.member_rows, rows)
                self._ties = TieGroups(self._ties.features, self._ties.inv_norms, self._ties.member_rows[kept],
                                       self._ties.member_group[kept])
        if self.centered:  # the centre moved: every row's 1/|h - c| changes
            self.feature_sum += all_reduce(change, dist.ReduceOp.SUM)
            self.center = (self.feature_sum / max(1, self.total_rows)).float()
            self.inv_norms = inverse_norms(self.features, self.center)
            if self._ties is not None:
                self._ties.inv_norms = inverse_norms(self._ties.features, self.center)

    # ------------------------------------------------------------------ checkpoints

    def save_for_checkpoint(self, step: int) -> None:
        """Write this rank's rows for the checkpoint of global step ``step`` (collective: ends
        with a barrier, so the rows are on disk before rank 0 writes the checkpoint)."""
        if self.checkpoint_dir is None:
            raise RuntimeError("ICKD.BANK.SHARDED: the bank has no checkpoint directory (build it first)")
        rank, world = dist_world()
        directory = os.path.join(self.checkpoint_dir, f"step{step}")
        save_shard_rows(shard_path(directory, _step_key(step), rank, world), _step_key(step), self.total_rows,
                        self.start, self.stop, self.features, self.labels, self.indices)
        self.checkpoint_step.fill_(step)
        if world > 1:
            dist.barrier()
        # Rank 0 drops the shard sets of older checkpoints (after the barrier: no rank writes
        # them any more); the newest CHECKPOINT_SETS_KEPT remain.
        if rank == 0:
            names = (re.fullmatch(r"step(\d+)", name) for name in os.listdir(self.checkpoint_dir))
            for old in sorted(int(m.group(1)) for m in names if m)[:-CHECKPOINT_SETS_KEPT]:
                shutil.rmtree(os.path.join(self.checkpoint_dir, f"step{old}"), ignore_errors=True)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        step = int(self.checkpoint_step.item())
        if prefix + "checkpoint_step" not in state_dict or step < 0 or step == self._rows_step:
            return  # no rows to read, or already read by `build` from the checkpoint being resumed
        if self.checkpoint_dir is None or not self.is_built:  # e.g. a tool loading the networks' weights
            warnings.warn(
                f"ICKD.BANK.SHARDED: this checkpoint's bank rows (global step {step}) are in its run directory "
                f"({CHECKPOINT_SUBDIR}/step{step}/) and are read when the trainer builds the bank; a bank built "
                "otherwise comes from a filling pass", stacklevel=2,
            )
            return
        directory = os.path.join(self.checkpoint_dir, f"step{step}")
        rows = load_shard_rows(directory, _step_key(step), self.total_rows, self.start, self.stop, warn=False)
        if rows is None:
            raise RuntimeError(
                f"ICKD.BANK.SHARDED: the checkpoint's bank rows (global step {step}) are missing or corrupt "
                f"in {directory!r}; only the newest {CHECKPOINT_SETS_KEPT} checkpoints keep theirs"
            )
        features, labels, indices = rows
        if not torch.equal(indices.to(self.indices.device), self.indices):
            raise RuntimeError(f"ICKD.BANK.SHARDED: the bank rows in {directory!r} belong to another training set")
        device = self.features.device
        self.features = features.to(device=device, dtype=self.dtype)
        self.labels = labels.to(device)
        self._derive()
        self.loaded_from, self._rows_step = "checkpoint", step


def checkpoint_dir_for(trainer: Any) -> str | None:
    """``<run dir>/ickd_bank_shards`` of a trainer with a ``log_path`` (kdharness', mdistiller's), else None."""
    log_path = getattr(trainer, "log_path", None)
    return os.path.join(log_path, CHECKPOINT_SUBDIR) if log_path else None


def _checkpoint_step_of(state: Any) -> int:
    """The sharded bank's ``checkpoint_step`` in a host checkpoint's ``model`` state (-1 if none)."""
    model = state.get("model") if isinstance(state, dict) else None
    if isinstance(model, dict):
        for name, value in model.items():
            if name.endswith("bank.checkpoint_step") and torch.is_tensor(value):
                return int(value)
    return -1


def _step_key(step: int) -> str:
    return f"checkpoint-step{step}".ljust(32, "-")
