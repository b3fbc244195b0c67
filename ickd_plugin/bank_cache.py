"""The bank's files on disk: the offline cache, its key, and the shard files of a sharded bank.

Offline, the bank is a function of the frozen teacher and the training set only, and filling
it costs a pass over the data; so it is cached on disk under a key that changes whenever the
teacher's weights, the dataset, the no-augmentation transform or the storage dtype change.
A sharded bank keeps one file per shard (``bank_<key>.shard<r>of<W>.pt``), for its cache and
for the rows saved with a checkpoint. Every file is written atomically and checksummed: a
stale, truncated or corrupt file is reported and rebuilt (or not used), never trusted.
"""
from __future__ import annotations

import errno
import glob
import hashlib
import os
import re
import warnings
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn

from ickd_plugin.blocks import BLOCK_BYTES
from ickd_plugin.distributed import dist_world, shard_bounds
from ickd_plugin.training_view import preserved_rng

CACHE_FORMAT = "ickd-bank-v2"  # v2: the key hashes the images and the transform's output
SHARD_FORMAT = "ickd-bank-shard-v1"


# ----------------------------------------------------------------------------- the key


def _update_with_tensor(digest: Any, tensor: torch.Tensor) -> None:
    """Hash dtype, shape and raw bytes, streaming ~16 MiB blocks (a GPU bank is never copied whole)."""
    flat = tensor.detach().reshape(-1)
    digest.update(f"{flat.dtype}{tuple(tensor.shape)}".encode())
    if not flat.numel():
        return
    raw = flat.contiguous().view(torch.uint8)
    for start in range(0, raw.numel(), BLOCK_BYTES):
        digest.update(raw[start : start + BLOCK_BYTES].cpu().numpy())


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
    for start in range(0, raw.size, BLOCK_BYTES):
        digest.update(raw[start : start + BLOCK_BYTES].data)


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


# ----------------------------------------------------------------------------- the offline cache file


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


def _save_rows(
    path: str, header: dict[str, Any], features: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
) -> None:
    """Write ``header``, a checksum of the rows and the rows (on the CPU) to ``path`` atomically."""
    features, labels, indices = (t.detach().cpu() for t in (features, labels, indices))
    checksum = _payload_checksum(features, labels, indices)
    atomic_torch_save({**header, "checksum": checksum, "features": features, "labels": labels, "indices": indices}, path)


def _rows_intact(payload: dict[str, Any]) -> bool:
    """Whether the rows of a file read back hash to the checksum written with them."""
    return _payload_checksum(payload["features"], payload["labels"], payload["indices"]) == payload.get("checksum")


def save_bank_cache(path: str, key: str, features: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
    """Write the offline bank's cache file atomically, with a checksum of its tensors."""
    _save_rows(path, {"format": CACHE_FORMAT, "key": key}, features, labels, indices)


def save_cache_or_warn(path: str, save: Any, *args: Any) -> bool:
    """``save(path, *args)`` for a cache file; a failed write (full disk, permissions, a path
    through a file) is a warning and False, because a cache only saves time: losing it must not
    lose the run. Checkpoint shard files are not caches and do not come through here."""
    try:
        save(path, *args)
        return True
    except OSError as error:
        name = errno.errorcode.get(error.errno or 0, type(error).__name__)
        warnings.warn(f"ICKD memory-bank cache {path}: could not write it ({error.strerror or error}, {name}); "
                      "training on without the cache (the next run builds the bank again)", stacklevel=2)
        return False


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
    if not _rows_intact(payload):
        reject("checksum mismatch (the file is corrupt)")
        return None
    return payload["features"], payload["labels"], payload["indices"]


# ----------------------------------------------------------------------------- shard files


def shard_path(directory: str, key: str, rank: int, world: int) -> str:
    return os.path.join(directory, f"bank_{key[:32]}.shard{rank:04d}of{world:04d}.pt")


def save_shard_rows(
    path: str, key: str, total: int, start: int, stop: int,
    features: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
) -> None:
    """Write one shard's rows atomically (temporary file, fsync, rename), with a checksum."""
    header = {"format": SHARD_FORMAT, "key": key, "total": total, "start": start, "stop": stop}
    _save_rows(path, header, features, labels, indices)


def _shard_sets(directory: str, key: str) -> list[int]:
    """World sizes W for which all W shard files of ``key`` exist in ``directory``."""
    worlds: dict[int, set[int]] = {}
    for path in glob.glob(os.path.join(directory, f"bank_{key[:32]}.shard*of*.pt")):
        match = re.search(r"\.shard(\d+)of(\d+)\.pt$", path)
        if match:
            worlds.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
    return sorted(w for w, ranks in worlds.items() if ranks == set(range(w)))


def load_shard_rows(
    directory: str, key: str, total: int, start: int, stop: int, warn: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Rows ``[start, stop)`` of the bank ``key`` from a complete set of shard files, or None.

    Prefers the set written with this run's world size (one file read); another set is
    re-sliced: each overlapping file is memory-mapped and only the overlap is copied.
    A file with the wrong format, key, bounds or checksum is reported and the set is not used.
    """
    _, world = dist_world()
    sets = _shard_sets(directory, key) if os.path.isdir(directory) else []
    for source_world in sorted(sets, key=lambda w: (w != world, w)):
        pieces, ok = [], True
        for source in range(source_world):
            first, last = shard_bounds(total, source, source_world)
            lo, hi = max(first, start), min(last, stop)
            if lo >= hi:
                continue
            path = shard_path(directory, key, source, source_world)
            payload = _read_shard(path, key, total, first, last, warn)
            if payload is None:
                ok = False
                break
            pieces.append(tuple(payload[name][lo - first : hi - first] for name in ("features", "labels", "indices")))
        if ok and sum(p[0].shape[0] for p in pieces) == stop - start and pieces:
            return tuple(torch.cat([p[i] for p in pieces]) for i in range(3))  # type: ignore[return-value]  # cat copies
    return None


def _read_shard(path: str, key: str, total: int, start: int, stop: int, warn: bool) -> dict | None:
    def reject(reason: str) -> None:
        if warn:
            warnings.warn(f"ICKD sharded bank file {path}: {reason}; not used", stacklevel=4)

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # truncated, corrupt, not a torch file
        reject(f"unreadable ({type(error).__name__})")
        return None
    expected = {"format": SHARD_FORMAT, "key": key, "total": total, "start": start, "stop": stop}
    for name, value in expected.items():
        if not isinstance(payload, dict) or payload.get(name) != value:
            reject(f"{name} is {payload.get(name) if isinstance(payload, dict) else None!r}, expected {value!r}")
            return None
    if not _rows_intact(payload):
        reject("checksum mismatch (the file is corrupt)")
        return None
    return payload
