"""Checkpoints that are never half-written and never silently wrong.

A checkpoint stays a plain ``torch.save`` dict (``torch.load(path)["model"]`` works, as in
mdistiller), with one extra key, ``"_sha256"``: a digest over every tensor's bytes and every
other value, in key order. ``torch.load`` notices a truncated file (the zip directory is at
its end) but not a flipped byte inside a tensor; the digest catches both.

Writes go to a temporary file in the same directory, are fsync'ed, then renamed over the
target, and the directory is fsync'ed: a crash leaves the old file or the new one, never a mix.
A write that fails (a full disk, a permission) raises `io_errors.RunWriteError` naming the
target, and leaves the old file as it was.

Loads are ``weights_only``: a checkpoint is data, and unpickling arbitrary objects could run
code. Besides tensors and plain Python values, ours hold numpy's RNG state (one uint32 array),
so the numpy globals that rebuild arrays and scalars are allowed, nothing else.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import tempfile
from typing import Any

import numpy as np
import torch

from kdharness.engine.io_errors import writing

CHECKSUM_KEY = "_sha256"


def _numpy_globals() -> list[Any]:
    """What unpickling a numpy array or scalar calls, taken from numpy itself (its module moved in 2.0)."""
    dtypes = [np.dtype(name) for name in ("bool", "uint8", "uint32", "int32", "int64", "float32", "float64")]
    return [
        np.empty(0).__reduce__()[0],  # numpy's array reconstructor
        np.float64(0).__reduce__()[0],  # numpy's scalar reconstructor
        np.ndarray,
        np.dtype,
        *{type(dtype) for dtype in dtypes},
    ]


_NUMPY_GLOBALS = _numpy_globals()


def _refused_global(error: Exception) -> str:
    """The object torch's weights_only unpickler refused, from its (long) message."""
    match = re.search(r"Unsupported global: GLOBAL (\S+)|but got (<class '[^']*'>)", str(error))
    return f"Refused: {match.group(1) or match.group(2)}." if match else ""


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be trusted; the message names the file and why."""


def _feed(digest: "hashlib._Hash", value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        digest.update(f"A{value.dtype}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        digest.update(b"{")
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _feed(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[" if isinstance(value, list) else b"(")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(repr(value).encode())


def state_digest(state: dict[str, Any]) -> str:
    """sha256 over the checkpoint's content, the checksum key itself excluded."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in state.items() if k != CHECKSUM_KEY})
    return digest.hexdigest()


def _umask() -> int:
    """The process umask (read by setting it and putting it back: POSIX offers no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, nothing between.

    The file gets the mode a plain `open(path, "w")` would give (0o666 less the umask), not
    mkstemp's private 0o600, so teammates on a shared machine can read checkpoints and summaries.
    """
    directory = os.path.dirname(os.path.abspath(path))
    with writing(path):  # a full disk or a permission: RunWriteError naming `path`, not the temporary file
        os.makedirs(directory, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_path, path)
        except BaseException:
            try:
                os.unlink(tmp_path)
            except OSError:  # already renamed, or the directory is gone
                pass
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def keep_previous(path: str, previous: str) -> None:
    """Make ``previous`` a copy of the file at ``path`` that outlives the next write of ``path``.

    A hard link (through a temporary name, renamed over ``previous``): ``path`` stays in place,
    so if writing its successor fails (a full disk), the run keeps both. Where the file system
    has no hard links, ``path`` is renamed to ``previous`` instead.
    """
    with writing(previous):
        tmp = f"{previous}.link.tmp"
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.link(path, tmp)
        except OSError:
            os.replace(path, previous)
            return
        os.replace(tmp, previous)


def save_checkpoint(state: dict[str, Any], path: str) -> None:
    """Atomically write `state` (plus its checksum) to `path`."""
    state = dict(state)
    state[CHECKSUM_KEY] = state_digest(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_weights_only(path: str, map_location: Any = "cpu", source: str | None = None) -> Any:
    """``torch.load`` that unpickles data only, raising CheckpointError for anything else.

    ``source`` names the file in messages (default ``checkpoint 'PATH'``; the teacher loader
    passes ``KEY = 'PATH'``).
    """
    source = source or f"checkpoint {path!r}"
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" in str(error).lower().replace(" ", "_"):
            raise CheckpointError(
                f"{source} holds Python objects besides tensors, numpy arrays and plain values, so it is not "
                f"loaded: unpickling them could run code. If you trust the file, keep only its weights: "
                f"torch.save({{'model': torch.load(path, weights_only=False)['model']}}, new_path). "
                f"{_refused_global(error)}"
            ) from error
        raise CheckpointError(f"{source} is unreadable (truncated or not a torch file): {error}") from error
    except Exception as error:  # zip, EOF, decode and storage errors of a truncated or foreign file
        raise CheckpointError(
            f"{source} is unreadable (truncated or not a torch file): {type(error).__name__}: {error}"
        ) from error


def load_checkpoint(path: str, map_location: Any = "cpu", verify: bool = True) -> dict[str, Any]:
    """Load a checkpoint, raising CheckpointError for a missing, truncated or corrupt file.

    Files without a checksum (mdistiller's own, or a plain state_dict) load unverified.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    state = load_weights_only(path, map_location)
    if verify and isinstance(state, dict) and CHECKSUM_KEY in state:
        expected = state.pop(CHECKSUM_KEY)
        actual = state_digest(state)
        if actual != expected:
            raise CheckpointError(
                f"checkpoint {path!r} is corrupt: content checksum {actual[:12]} != recorded {expected[:12]}"
            )
    elif isinstance(state, dict):
        state.pop(CHECKSUM_KEY, None)
    return state
