"""The memory bank: one pooled feature per training sample, its norms, labels and class table.

Offline, the bank is a function of the frozen teacher and the training set only: it is filled
once by the teacher pass (`ickd_plugin.teacher_pass`) over the training set seen without
augmentation (`ickd_plugin.training_view`), and cached on disk (`ickd_plugin.bank_cache`).

Online and teacher-free, the bank changes every step; it lives in registered buffers so a
checkpoint carries it and a resumed run continues from exactly the same bank.

Rows are ordered by dataset index, so ties in retrieval ("lower bank row") mean "lower
dataset index" and the bank is identical on every rank of a distributed run. Rows that are
equal bit for bit form tie groups (`ickd_plugin.ties`), found when the bank is filled, so
they tie exactly whatever the chunking; a refreshed row leaves its group.

With ``ICKD.SIMILARITY centered`` the bank also keeps the sum of its rows (float64) and their
mean ``c``; ``inv_norms`` are then ``1 / |H_r - c|``, and a refresh, which moves ``c``,
recomputes them all (one pass over the bank, 1/B of a step's retrieval).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ickd_plugin.blocks import rows_per_block
from ickd_plugin.distributed import dist_world
from ickd_plugin.retrieval import TieGroups
from ickd_plugin.ties import find_tie_groups

# Buffers a checkpoint written before centred retrieval and tie groups lacks: recomputed on load.
_DERIVED = ("feature_sum", "center", "tie_rows", "tie_groups", "tie_features", "tie_inv_norms")


class CenteredSimilarity:
    """What every bank (`MemoryBank`, `ShardedMemoryBank`) tells retrieval about ICKD.SIMILARITY.

    The bank sets ``centered`` (from the config) and keeps ``center``, the mean of all its rows
    (of every rank's rows when it is sharded).
    """

    centered: bool
    center: torch.Tensor

    @property
    def similarity_center(self) -> torch.Tensor | None:
        """``c`` of the centred cosine (ICKD.SIMILARITY centered), None for the plain cosine."""
        return self.center if self.centered else None


class MemoryBank(CenteredSimilarity, nn.Module):
    """Features ``H [R, D]``, ``1/|H_r|``, labels, dataset-index -> row map, class -> rows table.

    All state is in buffers (persistent or not, as the paradigm needs). They start empty;
    `fill` sets them, and loading a state dict resizes them to the checkpoint's shapes.
    """

    def __init__(self, dtype: torch.dtype = torch.float32, persistent: bool = False, centered: bool = False) -> None:
        super().__init__()
        self.dtype = dtype
        self.centered = centered
        self.key: str | None = None  # what the bank was built from (offline cache key)
        self.register_buffer("features", torch.empty(0, 0, dtype=dtype), persistent=persistent)
        self.register_buffer("inv_norms", torch.empty(0), persistent=persistent)
        self.register_buffer("labels", torch.empty(0, dtype=torch.long), persistent=persistent)
        self.register_buffer("row_of_index", torch.empty(0, dtype=torch.long), persistent=persistent)
        self.register_buffer("class_rows", torch.empty(0, 0, dtype=torch.long), persistent=persistent)
        self.register_buffer("feature_sum", torch.empty(0, dtype=torch.float64), persistent=persistent)
        self.register_buffer("center", torch.empty(0), persistent=persistent)
        self.register_buffer("tie_rows", torch.empty(0, dtype=torch.long), persistent=persistent)
        self.register_buffer("tie_groups", torch.empty(0, dtype=torch.long), persistent=persistent)
        self.register_buffer("tie_features", torch.empty(0, 0, dtype=dtype), persistent=persistent)
        self.register_buffer("tie_inv_norms", torch.empty(0), persistent=persistent)

    @property
    def ties(self) -> TieGroups | None:
        """The bank's groups of equal rows, for `retrieve` (None when it has none)."""
        if self.tie_rows.numel() == 0:
            return None
        return TieGroups(self.tie_features, self.tie_inv_norms, self.tie_rows, self.tie_groups)

    @property
    def is_built(self) -> bool:
        return self.features.shape[0] > 0

    @property
    def num_rows(self) -> int:
        return self.features.shape[0]

    def fill(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        num_classes: int,
        device: torch.device | str,
        key: str | None = None,
    ) -> None:
        """Set the bank from per-sample features, labels and dataset indices (any order).

        Features already on ``device`` in the bank's dtype (what `extract_features` returns)
        are kept, not copied; rows are reordered (one copy) only when the indices are not
        already ascending, i.e. when a dataset's indices do not follow its positions.
        """
        indices = indices.to(device=device, dtype=torch.long)
        labels = labels.to(device=device, dtype=torch.long)
        if features.dtype != self.dtype:
            check_representable(features, self.dtype, "filling the bank")
        features = features.to(device=device, dtype=self.dtype)
        if indices.numel() > 1 and not bool((indices[1:] > indices[:-1]).all()):
            order = torch.argsort(indices)
            indices, labels, features = indices[order], labels[order], features[order]
            if bool((indices[1:] == indices[:-1]).any()):
                raise ValueError("the training set returned the same dataset index for two samples")
        num_classes = max(int(num_classes), int(labels.max()) + 1 if labels.numel() else 0)
        row_of_index = torch.full((int(indices.max()) + 1,), -1, dtype=torch.long, device=device)
        row_of_index[indices] = torch.arange(indices.numel(), device=device)
        self.features = features
        self.labels = labels
        self.row_of_index = row_of_index
        self.class_rows = class_row_table(labels, num_classes)
        self.key = key
        self._derive()

    def _derive(self) -> None:
        """Centre, norms and tie groups from the rows (after a fill or a load)."""
        features = self.features
        self.feature_sum = feature_sum(features) if self.centered else features.new_empty(0, dtype=torch.float64)
        self.center = self._mean() if self.centered else torch.empty(0, device=features.device)
        self.inv_norms = inverse_norms(features, self.similarity_center)
        self.tie_rows, self.tie_groups, self.tie_features = find_tie_groups(features)
        self.tie_inv_norms = inverse_norms(self.tie_features, self.similarity_center)

    def _mean(self) -> torch.Tensor:
        return (self.feature_sum / max(1, self.features.shape[0])).float()

    def rows_for(self, index: torch.Tensor) -> torch.Tensor:
        """Bank row of each dataset index (-1 for an index the bank does not hold, above its largest
        or negative included)."""
        index = index.to(self.row_of_index.device, non_blocking=True).long()
        size = self.row_of_index.shape[0]
        if size == 0:
            return torch.full_like(index, -1)
        held = (index >= 0) & (index < size)
        return torch.where(held, self.row_of_index[index.clamp(0, size - 1)], -1)

    def class_sizes(self) -> list[int]:
        return (self.class_rows >= 0).sum(dim=1).tolist()

    def check_capacity(self, k: int, n: int, all_same_class: bool) -> None:
        """Fail before training when some sample could not get K positives or N negatives."""
        sizes = self.class_sizes()
        present = [(size, c) for c, size in enumerate(sizes) if size > 0]
        if not present:
            raise ValueError("the memory bank is empty: the training set has no samples")
        smallest, smallest_class = min(present)
        largest = max(size for size, _ in present)
        if all_same_class:
            if smallest < 2:
                raise ValueError(
                    f"ICKD.ALL_SAME_CLASS needs every class to have another sample, but class "
                    f"{smallest_class} has only {smallest} training sample"
                )
        elif k > smallest - 1:
            raise ValueError(
                f"ICKD.K = {k} is larger than the smallest class size minus the sample itself: class "
                f"{smallest_class} has {smallest} training samples, so K <= {smallest - 1}; lower ICKD.K "
                f"or set ICKD.ALL_SAME_CLASS True to use every same-class sample"
            )
        others = self.num_rows - largest
        if n > others:
            raise ValueError(
                f"ICKD.N = {n} is larger than the number of other-class samples of the largest class "
                f"({others}); lower ICKD.N to at most {others}"
            )

    @torch.no_grad()
    def refresh(self, rows: torch.Tensor, new_features: torch.Tensor, momentum: float) -> None:
        """``H_r <- m * H_r + (1 - m) * h_new`` for each row, and its norm.

        Entries with row < 0 (an index the bank does not hold) are dropped, and a row given
        several times (a distributed sampler pads its last batch with repeats) takes its first
        entry, so every updated row has exactly one writer whatever the backend.
        """
        rows = rows.to(self.features.device).long()
        new_features = new_features.to(self.features.device)
        held = rows >= 0
        rows, new_features = rows[held], new_features[held]
        if rows.numel() == 0:
            return
        rows, first = _first_occurrences(rows)
        updated = momentum * self.features[rows].float() + (1.0 - momentum) * new_features[first].float()
        check_representable(updated, self.dtype, "refreshing the bank")
        stored = updated.to(self.dtype)
        if self.centered:
            self.feature_sum += stored.double().sum(dim=0) - self.features[rows].double().sum(dim=0)
        self.features[rows] = stored
        if self.tie_rows.numel():
            kept = ~torch.isin(self.tie_rows, rows)
            self.tie_rows, self.tie_groups = self.tie_rows[kept], self.tie_groups[kept]
        if self.centered:  # the centre moved: every row's 1/|H_r - c| changes
            self.center = self._mean()
            self.inv_norms = inverse_norms(self.features, self.center)
            self.tie_inv_norms = inverse_norms(self.tie_features, self.center)
        else:
            self.inv_norms[rows] = inverse_norms(stored)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: Any, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        # The buffers are empty until the bank is filled: take the checkpoint's shapes.
        for name in list(self._buffers):  # a subclass's buffers too (the dense bank's pixel ids)
            incoming = state_dict.get(prefix + name)
            current = self._buffers[name]
            if incoming is not None and name not in self._non_persistent_buffers_set and incoming.shape != current.shape:
                self._buffers[name] = torch.empty(incoming.shape, dtype=current.dtype, device=current.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        # A checkpoint of a bank with another ICKD.SIMILARITY, or written before the derived
        # buffers existed: derive them from the loaded rows rather than trust or miss them.
        lacking = [prefix + name for name in _DERIVED if prefix + name in missing_keys]
        stored_center = state_dict.get(prefix + "center")
        other_similarity = stored_center is not None and (stored_center.numel() > 0) != self.centered
        if (lacking or other_similarity) and prefix + "features" in state_dict and self.is_built:
            for key in lacking:
                missing_keys.remove(key)
            self._derive()

def _first_occurrences(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distinct rows ascending, position of each one's first occurrence in `rows`)."""
    distinct, inverse = torch.unique(rows, return_inverse=True)
    positions = torch.arange(rows.numel(), device=rows.device)
    first = torch.full((distinct.numel(),), rows.numel(), dtype=torch.long, device=rows.device)
    return distinct, first.scatter_reduce_(0, inverse, positions, reduce="amin")


def check_representable(values: torch.Tensor, dtype: torch.dtype, during: str) -> None:
    """Refuse features a half-precision bank would store as inf (float16 ends at 65504).

    bfloat16 has float32's range, so only float16 can overflow; one [1] reduction per call.
    """
    if dtype != torch.float16 or values.numel() == 0:
        return
    largest = float(values.detach().abs().amax())
    limit = torch.finfo(torch.float16).max
    if largest > limit:
        raise ValueError(
            f"ICKD.BANK.DTYPE float16 cannot hold this network's pooled features while {during}: "
            f"|feature| reaches {largest:.6g}, float16's largest finite value is {limit:.0f}; set "
            f"ICKD.BANK.DTYPE bfloat16 (half the memory, float32's range) or float32"
        )


def describe_bank(features: torch.Tensor) -> str:
    """``50000 x 256 float32 (51.2 MB, cpu)``: what a bank message says about its size."""
    megabytes = features.numel() * features.element_size() / 1e6
    dtype = str(features.dtype).replace("torch.", "")
    return f"{features.shape[0]} x {features.shape[1]} {dtype} ({megabytes:.1f} MB, {features.device})"


def report(message: str) -> None:
    """Print a memory-bank message once per run (rank 0 of a distributed run)."""
    if dist_world()[0] == 0:
        print(f"[ICKD] {message}", flush=True)


def inverse_norms(features: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """``1 / |H_r - c|`` (``c`` = `center`, or 0) in float32, block by block (a half bank is never upcast whole)."""
    out = torch.empty(features.shape[0], dtype=torch.float32, device=features.device)
    step = rows_per_block(4 * max(1, features.shape[1]))  # bytes of one row in float32
    for start in range(0, features.shape[0], step):
        block = features[start : start + step].float()
        if center is not None:
            block = block - center.to(block.device)
        out[start : start + block.shape[0]] = block.norm(dim=1).clamp_min(1e-12).reciprocal()
    return out


def feature_sum(features: torch.Tensor) -> torch.Tensor:
    """``sum_r H_r`` in float64 ``[D]``, block by block: the centre's numerator, kept exact
    enough that refreshing it row by row for a whole run does not drift."""
    out = torch.zeros(features.shape[1], dtype=torch.float64, device=features.device)
    step = rows_per_block(8 * max(1, features.shape[1]))
    for start in range(0, features.shape[0], step):
        out += features[start : start + step].double().sum(dim=0)
    return out


def class_row_table(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C, max_class_count]``: the rows of each class in ascending order, padded with -1."""
    counts = torch.bincount(labels, minlength=num_classes)
    width = int(counts.max()) if labels.numel() else 0
    rows_by_class = torch.sort(labels, stable=True).indices  # ascending rows within each class
    sorted_labels = labels[rows_by_class]
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(labels.numel(), device=labels.device) - starts[sorted_labels]
    table = torch.full((num_classes, width), -1, dtype=torch.long, device=labels.device)
    table[sorted_labels, position] = rows_by_class
    return table

