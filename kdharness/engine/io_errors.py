"""Writes of a run that fail for the machine's reasons: a full disk, a permission, a vanished
directory.

Python's own error for a failed ``write`` or ``fsync`` names no file (``OSError: [Errno 28] No
space left on device``), and an atomic write's names its temporary file. Every write of the
run (checkpoints, ``summary.json``, ``worklog.txt``, the tensorboard events) goes through
`writing`, so what reaches ``tools/train.py`` is a `RunWriteError` naming the file the run
meant to write and the cause; it prints that as one ``error:`` line (exit status 2). Files
written before are left as they were: the atomic writes replace a file only once its new
content is on disk.
"""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from typing import Iterator


class RunWriteError(OSError):
    """Writing ``filename`` failed; ``strerror``/``errno`` are the cause's, ``__cause__`` the original error."""

    def __init__(self, path: str, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), path)

    def __str__(self) -> str:
        return f"could not write {self.filename!r}: {cause_text(self)}"


def cause_text(error: OSError) -> str:
    """``No space left on device (ENOSPC)``: the reason, with errno's symbolic name when known."""
    name = errno.errorcode.get(error.errno) if error.errno is not None else None
    reason = error.strerror or str(error)
    return f"{reason} ({name})" if name else reason


@contextmanager
def writing(path: str) -> Iterator[None]:
    """Turn an OSError raised inside the block into a RunWriteError naming ``path``."""
    try:
        yield
    except RunWriteError:
        raise
    except OSError as error:
        raise RunWriteError(path, error) from error


def append_text(path: str, text: str) -> None:
    """Append ``text`` to ``path`` (the worklog), failing with a RunWriteError naming it."""
    with writing(path):
        with open(path, "a") as handle:
            handle.write(text)


def describe_os_error(error: OSError) -> str:
    """One line for an OSError that ended a run: the file, the cause and what to do."""
    if isinstance(error, RunWriteError):
        directory = os.path.dirname(os.path.abspath(error.filename))
        return (
            f"{error}; every file the run wrote before is intact. Free space in (or fix the permissions of) "
            f"{directory!r}, then continue with --resume"
        )
    if error.filename is not None:
        return f"{cause_text(error)}: {error.filename!r}"
    return f"{type(error).__name__}: {cause_text(error)}"
