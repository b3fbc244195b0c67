"""The memory bank: one pooled feature per training sample, how it is filled, cached and refreshed.

Offline, the bank is a function of the frozen teacher and the training set only, and filling
it costs a pass over the data; so it is cached on disk under a key that changes whenever the
teacher's weights, the dataset, the no-augmentation transform or the storage dtype change.
The cache is written atomically and checksummed: a stale, truncated or corrupt file is
reported and rebuilt, never used.

Online and teacher-free, the bank changes every step; it lives in registered buffers so a
checkpoint carries it and a resumed run continues from exactly the same bank.

Rows are ordered by dataset index, so ties in retrieval ("lower bank row") mean "lower
dataset index" and the bank is identical on every rank of a distributed run.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import os
import random
import warnings
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ickd_plugin.features import ClassifierTap

CACHE_FORMAT = "ickd-bank-v2"  # v2: the key hashes the images and the transform's output
_BUFFERS = ("features", "inv_norms", "labels", "row_of_index", "class_rows")


class MemoryBank(nn.Module):
    """Features ``H [R, D]``, ``1/|H_r|``, labels, dataset-index -> row map, class -> rows table.

    All state is in buffers (persistent or not, as the paradigm needs). They start empty;
    `fill` sets them, and loading a state dict resizes them to the checkpoint's shapes.
    """

    def __init__(self, dtype: torch.dtype = torch.float32, persistent: bool = False) -> None:
        super().__init__()
        self.dtype = dtype
        self.key: str | None = None  # what the bank was built from (offline cache key)
        self.register_buffer("features", torch.empty(0, 0, dtype=dtype), persistent=persistent)
        self.register_buffer("inv_norms", torch.empty(0), persistent=persistent)
        self.register_buffer("labels", torch.empty(0, dtype=torch.long), persistent=persistent)
        self.register_buffer("row_of_index", torch.empty(0, dtype=torch.long), persistent=persistent)
        self.register_buffer("class_rows", torch.empty(0, 0, dtype=torch.long), persistent=persistent)

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
        self.inv_norms = _inverse_norms(features)
        self.labels = labels
        self.row_of_index = row_of_index
        self.class_rows = class_row_table(labels, num_classes)
        self.key = key

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
        self.features[rows] = stored
        self.inv_norms[rows] = _inverse_norms(stored)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # The buffers are empty until the bank is filled: take the checkpoint's shapes.
        for name in _BUFFERS:
            incoming = state_dict.get(prefix + name)
            current = self._buffers[name]
            if incoming is not None and name not in self._non_persistent_buffers_set and incoming.shape != current.shape:
                self._buffers[name] = torch.empty(incoming.shape, dtype=current.dtype, device=current.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# Bytes per block when a whole-bank pass needs a copy of the rows (float32 norms, hashing on
# the host, staging for a broadcast): the copies then stay at about 16 MiB whatever the bank's size.
_BLOCK_BYTES = 1 << 24


def _rows_per_block(row_bytes: int) -> int:
    return max(1, _BLOCK_BYTES // max(1, row_bytes))


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


def _inverse_norms(features: torch.Tensor) -> torch.Tensor:
    """``1 / |H_r|`` in float32, computed block by block (a half bank is never upcast whole)."""
    out = torch.empty(features.shape[0], dtype=torch.float32, device=features.device)
    step = _rows_per_block(4 * features.shape[1])  # bytes of one row in float32
    for start in range(0, features.shape[0], step):
        block = features[start : start + step].float()
        out[start : start + block.shape[0]] = block.norm(dim=1).clamp_min(1e-12).reciprocal()
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


# ----------------------------------------------------------------------------- distributed


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


# ----------------------------------------------------------------------------- the filling pass


class _IndexedView(Dataset):
    """Items (image, target, dataset index) of `dataset` at `positions`; index = position if absent."""

    def __init__(self, dataset: Any, positions: Sequence[int]) -> None:
        self.dataset = dataset
        self.positions = positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple:
        position = self.positions[i]
        item = self.dataset[position]
        index = item[2] if len(item) > 2 else position
        return item[0], item[1], index


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without consuming torch's, numpy's or Python's global random state.

    A run that finds the bank cached and one that builds it must start training from the
    same random state, whatever the datasets read on the way.
    """
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _owns_attribute(dataset: Any, name: str) -> bool:
    """True when `name` lives on the object or its class, not behind a forwarding __getattr__."""
    if name in getattr(dataset, "__dict__", {}):
        return True
    return inspect.getattr_static(type(dataset), name, _MISSING) is not _MISSING


_MISSING = object()
# Switches of the hosts' training sets that add CRD's contrastive indices to each item
# (mdistiller's CIFAR100InstanceSample.is_sample, kdharness' IndexedDataset.crd_k): the bank
# pass needs only (image, target, index), and drawing K negatives per item is wasted work.
_CONTRASTIVE_SWITCHES = {"is_sample": False, "crd_k": None}


def _same_image(a: Any, b: Any) -> bool:
    if torch.is_tensor(a) and torch.is_tensor(b):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    return np.array_equal(np.asarray(a), np.asarray(b))


def no_augmentation_view(train_dataset: Any, val_dataset: Any) -> Any:
    """A shallow copy of the training set that applies the validation (no-augmentation) transform.

    Verified, not assumed: the copy must own its `transform` (a wrapper that forwards
    attribute reads to an inner dataset would keep augmenting), and two reads of its first
    item must be identical. CRD's contrastive sampling is switched off in the copy.
    """
    for name, dataset in (("train", train_dataset), ("val", val_dataset)):
        if not hasattr(dataset, "transform"):
            raise ValueError(
                f"ICKD builds its bank from the training set seen through the validation transform, "
                f"but the {name} loader's dataset ({type(dataset).__name__}) has no `transform` attribute"
            )
    if not _owns_attribute(train_dataset, "transform"):
        raise ValueError(
            f"ICKD builds its bank from the training set seen through the validation transform, but "
            f"{type(train_dataset).__name__} only forwards `transform` to a dataset inside it (through "
            f"__getattr__), so replacing it on a copy would leave the augmentation on; give the wrapper "
            f"a `transform` attribute of its own that it applies, or let the loader hold the inner dataset"
        )
    view = copy.copy(train_dataset)
    view.transform = val_dataset.transform
    for switch, off in _CONTRASTIVE_SWITCHES.items():
        if _owns_attribute(view, switch) and getattr(view, switch) not in (off, None, False):
            setattr(view, switch, off)
    if len(view):
        with preserved_rng():
            first, again = view[0][0], view[0][0]
        if not _same_image(first, again):
            raise ValueError(
                f"ICKD builds its bank from the training set seen through the validation transform, but "
                f"two reads of item 0 of {type(train_dataset).__name__} with `transform` set to "
                f"{type(val_dataset.transform).__name__} differ: the dataset still applies random "
                f"augmentation (from an inner dataset or its own __getitem__); the bank would hold "
                f"augmented features"
            )
    return view


def shard_bounds(length: int, rank: int, world: int) -> tuple[int, int]:
    """Positions ``[start, stop)`` of rank ``rank``'s contiguous share of ``length`` samples."""
    return length * rank // world, length * (rank + 1) // world


def _communication_device() -> torch.device:
    """Where collectives run: the current GPU under NCCL, the CPU otherwise (gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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
    comm = _communication_device()
    for source in range(world):
        start, stop = shard_bounds(length, source, world)
        for tensor in tensors:
            shard = tensor[start:stop]
            if shard.numel() == 0:
                continue
            if tensor.device == comm:
                dist.broadcast(shard, src=source)
                continue
            step = _rows_per_block(shard[0].numel() * shard.element_size())
            for first in range(0, shard.shape[0], step):
                piece = shard[first : first + step]
                staged = piece.to(comm)
                dist.broadcast(staged, src=source)
                piece.copy_(staged)


def _progress(loader: DataLoader, show: bool) -> Iterable:
    """The loader, wrapped in a tqdm bar when `show` (and tqdm is installed)."""
    if not show:
        return loader
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but the pass must not need it
        return loader
    return tqdm(loader, desc="[ICKD] memory bank pass", unit="batch", leave=False)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    classifier: nn.Module,
    dataset: Any,
    batch_size: int,
    num_workers: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One no-grad eval-mode pass: (pooled features [R, D], labels [R], dataset indices [R]).

    Rows are in dataset-position order; features are written batch by batch into one
    preallocated ``[R, D]`` tensor of ``dtype`` on ``device`` (default: the model's), so
    the pass never holds more than the bank plus one batch (an ImageNet bank of
    1.28M x 2048 in float16 is 5.2 GB; a float32 staging copy would be 10.5 GB more).
    In a distributed run each rank passes over a contiguous shard and `broadcast_shards`
    gives every rank the whole set. `progress` shows a bar on rank 0 (tqdm, on stderr).
    """
    rank, world = dist_world()
    model_device = next(model.parameters()).device
    device = torch.device(device) if device is not None else model_device
    length = len(dataset)
    start, stop = shard_bounds(length, rank, world)
    loader = DataLoader(
        _IndexedView(dataset, range(start, stop)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=model_device.type == "cuda",
    )
    # empty, not zeros: every row is written once, by its rank's pass or by the broadcast.
    features = torch.empty(length, classifier.in_features, dtype=dtype, device=device)
    labels = torch.empty(length, dtype=torch.long, device=device)
    indices = torch.empty(length, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    row = start
    try:
        with ClassifierTap(classifier) as tap:
            for image, target, index in _progress(loader, progress and rank == 0):
                model(image.to(model_device, non_blocking=True))
                batch = tap.features
                if batch.shape[1] != features.shape[1]:
                    raise ValueError(
                        f"the classifier's input has {batch.shape[1]} features per sample, but its "
                        f"in_features is {features.shape[1]}"
                    )
                check_representable(batch, dtype, "filling the bank")
                features[row : row + batch.shape[0]].copy_(batch)
                labels[row : row + batch.shape[0]].copy_(torch.as_tensor(target))
                indices[row : row + batch.shape[0]].copy_(torch.as_tensor(index))
                row += batch.shape[0]
    finally:
        model.train(was_training)
    if row != stop:
        raise RuntimeError(
            f"the bank pass read {row - start} samples from {type(dataset).__name__}, but its "
            f"shard holds {stop - start} (len(dataset) = {length})"
        )
    broadcast_shards((features, labels, indices), length)
    return features, labels, indices


# ----------------------------------------------------------------------------- the on-disk cache


def _update_with_tensor(digest: Any, tensor: torch.Tensor) -> None:
    """Hash dtype, shape and raw bytes, streaming ~16 MiB blocks (a GPU bank is never copied whole)."""
    flat = tensor.detach().reshape(-1)
    digest.update(f"{flat.dtype}{tuple(tensor.shape)}".encode())
    if not flat.numel():
        return
    raw = flat.contiguous().view(torch.uint8)
    for start in range(0, raw.numel(), _BLOCK_BYTES):
        digest.update(raw[start : start + _BLOCK_BYTES].cpu().numpy())


# Attributes under which a dataset wraps another (kdharness' IndexedDataset.raw, Subset.dataset).
_WRAPPED = ("dataset", "raw", "base")
# Items read through the view to fingerprint what the transform actually outputs.
FINGERPRINT_ITEMS = 8


def _layers(dataset: Any, depth: int = 3) -> Iterator[Any]:
    """The dataset, then the datasets it wraps (`dataset`, `raw`, `base`), outermost first."""
    yield dataset
    if depth > 0:
        for name in _WRAPPED:
            inner = getattr(dataset, name, None)
            if inner is not None and inner is not dataset and not callable(inner):
                yield from _layers(inner, depth - 1)
                return


def _update_with_array(digest: Any, array: np.ndarray) -> None:
    """Hash a numpy array's dtype, shape and bytes in ~16 MiB blocks (read-only arrays too)."""
    digest.update(f"{array.dtype}{array.shape}".encode())
    raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    for start in range(0, raw.size, _BLOCK_BYTES):
        digest.update(raw[start : start + _BLOCK_BYTES].data)


def _dataset_targets(dataset: Any) -> Iterable[int] | None:
    """The dataset's labels (`targets` or `labels`), looking through wrappers."""
    for layer in _layers(dataset):
        for name in ("targets", "labels"):
            values = getattr(layer, name, None)
            if values is not None and not callable(values):
                return values
    return None


def _update_with_data(digest: Any, dataset: Any) -> bool:
    """Hash the dataset's images themselves, cheaply; False when it exposes neither form.

    In-memory arrays (`data`: torchvision's CIFAR / MNIST, kdharness): their raw bytes
    (CIFAR-100's 150 MB in about a second). File lists (`samples` / `imgs`: ImageFolder):
    each path with its size and modification time, not the bytes.
    """
    for layer in _layers(dataset):
        data = getattr(layer, "data", None)
        if torch.is_tensor(data) or isinstance(data, np.ndarray):
            digest.update(b"data")
            if isinstance(data, np.ndarray):
                _update_with_array(digest, data)
            else:
                _update_with_tensor(digest, data)
            return True
        for name in ("samples", "imgs"):
            entries = getattr(layer, name, None)
            if isinstance(entries, (list, tuple)) and entries:
                paths = [entry[0] if isinstance(entry, (list, tuple)) else entry for entry in entries]
                if all(isinstance(path, (str, os.PathLike)) for path in paths):
                    digest.update(b"files")
                    for path in paths:
                        stat = os.stat(path)
                        digest.update(f"{os.fspath(path)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
                    return True
    return False


def _update_with_items(digest: Any, dataset: Any, count: int = FINGERPRINT_ITEMS) -> None:
    """Hash the images of `count` evenly spaced items as the dataset returns them (transform applied)."""
    length = len(dataset)
    positions = sorted({round(i * (length - 1) / max(1, count - 1)) for i in range(count)}) if length else []
    with preserved_rng():
        for position in positions:
            image = dataset[position][0]
            digest.update(str(position).encode())
            if torch.is_tensor(image):
                _update_with_tensor(digest, image)
            else:
                _update_with_array(digest, np.asarray(image))


def bank_cache_key(model: nn.Module, dataset: Any, dtype: torch.dtype, warn_if_unseen: bool = True) -> str:
    """sha256 of what the bank is a function of: the model's state_dict, the dataset (class,
    length, labels, the images themselves), the transform's output on a fixed sample of items
    (not its repr: two different ``Lambda`` transforms print alike) and the storage dtype.

    `warn_if_unseen`: warn when the images themselves cannot be hashed (a disk cache would then
    trust the labels and the sampled items)."""
    digest = hashlib.sha256(CACHE_FORMAT.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        _update_with_tensor(digest, tensor)
    digest.update(f"{type(dataset).__name__}|{len(dataset)}|".encode())
    targets = _dataset_targets(dataset)
    if targets is not None:
        _update_with_tensor(digest, torch.as_tensor(list(targets) if not torch.is_tensor(targets) else targets))
    else:
        digest.update(b"targets=unknown")
    if not _update_with_data(digest, dataset) and warn_if_unseen:
        warnings.warn(
            f"ICKD memory-bank cache key: {type(dataset).__name__} exposes neither an image array (`data`) "
            f"nor a file list (`samples` / `imgs`), also through {'/'.join(_WRAPPED)}; the key covers its "
            f"labels and {FINGERPRINT_ITEMS} sampled items only. Set ICKD.BANK.USE_CACHE False if its "
            f"images can change while the labels stay the same",
            stacklevel=2,
        )
    _update_with_items(digest, dataset)
    digest.update(str(dtype).encode())
    return digest.hexdigest()


def cache_path(cache_dir: str, key: str) -> str:
    return os.path.join(cache_dir, f"bank_{key[:32]}.pt")


def _payload_checksum(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        _update_with_tensor(digest, tensor)
    return digest.hexdigest()


def atomic_torch_save(payload: dict[str, Any], path: str) -> None:
    """`torch.save` to a temporary file, fsync, then os.replace: readers never see half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_bank_cache(path: str, key: str, features: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
    """Write the offline bank's cache file atomically, with a checksum of its tensors."""
    features, labels, indices = (t.detach().cpu() for t in (features, labels, indices))
    payload = {
        "format": CACHE_FORMAT,
        "key": key,
        "checksum": _payload_checksum(features, labels, indices),
        "features": features,
        "labels": labels,
        "indices": indices,
    }
    atomic_torch_save(payload, path)


def load_bank_cache(path: str, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(features, labels, indices) from a valid cache file, or None (with a warning if the file was bad)."""
    if not os.path.exists(path):
        return None

    def reject(reason: str) -> None:
        warnings.warn(f"ICKD memory-bank cache {path}: {reason}; rebuilding the bank", stacklevel=3)

    try:
        # mmap: the file's pages are read as needed (checksum, copy to the bank's device) and
        # never held twice; the writer replaces files atomically, so a mapping stays valid.
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # truncated, corrupt, not a torch file
        first_line = (str(error).strip().splitlines() or [""])[0][:160]
        reject(f"unreadable or truncated ({type(error).__name__}: {first_line})")
        return None
    fields = ("format", "key", "checksum", "features", "labels", "indices")
    if not isinstance(payload, dict) or any(name not in payload for name in fields):
        reject("not an ICKD bank file (missing fields)")
        return None
    if payload["format"] != CACHE_FORMAT:
        reject(f"format {payload['format']!r}, expected {CACHE_FORMAT!r}")
        return None
    if payload["key"] != key:
        reject("key mismatch (built from another teacher, dataset, transform or dtype)")
        return None
    features, labels, indices = payload["features"], payload["labels"], payload["indices"]
    if _payload_checksum(features, labels, indices) != payload["checksum"]:
        reject("checksum mismatch (the file is corrupt)")
        return None
    return features, labels, indices
