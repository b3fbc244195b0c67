"""The machine failing under a correct command (issue 23, item 1): a write of the run that fails
for disk space, a permission or a vanished directory ends with one ``error:`` line naming the
file and the cause, exit status 2, no traceback, and every file written before stays loadable.

The faults are injected at the lowest level (``os.fsync``, ``os.open``, ``open``) for the one
file named, so each case hits the write it names; one test fills a real (tmpfs) disk, as root.
"""
from __future__ import annotations

import builtins
import errno
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_data import write_fashion_mnist_fixture
from harness_utils import REPO
from kdharness.engine.checkpoint import atomic_write_bytes, load_checkpoint
from kdharness.engine.io_errors import RunWriteError, append_text

VANILLA_CFG = REPO / "configs" / "fashion_mnist" / "vanilla" / "res8.yaml"
CHECKPOINTS = ("latest", "best", "student_best", "student_latest")


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory) -> Path:
    return write_fashion_mnist_fixture(tmp_path_factory.mktemp("fashion"), n_train=32, n_test=16)


@pytest.fixture(scope="module")
def train_cli():
    spec = importlib.util.spec_from_file_location("train_cli_machine_faults", REPO / "tools" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[int, str]:
    """The vanilla config training 1 and 2 epochs: SOLVER.EPOCHS in the file, so that both
    name the same run directory and `--resume` extends the run."""
    folder = tmp_path_factory.mktemp("configs")
    text = VANILLA_CFG.read_text()
    assert "  EPOCHS: 3\n" in text
    paths = {}
    for epochs in (1, 2):
        paths[epochs] = str(folder / f"res8_{epochs}.yaml")
        Path(paths[epochs]).write_text(text.replace("  EPOCHS: 3\n", f"  EPOCHS: {epochs}\n"))
    return paths


def _opts(root: Path, prefix: Path) -> list[str]:
    return [
        "DATASET.ROOT", str(root), "DATASET.NUM_WORKERS", "0", "DATASET.TRAIN_SUBSET", "0",
        "SOLVER.BATCH_SIZE", "16", "DATASET.TEST.BATCH_SIZE", "16",
        "LOG.PREFIX", str(prefix), "LOG.TENSORBOARD_FREQ", "1", "EXPERIMENT.NAME", "run",
    ]


def _run_dir(prefix: Path) -> Path:
    (run_dir,) = (prefix / "fashion_mnist").iterdir()  # "run," and the overrides
    return run_dir


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def inject(monkeypatch, name: str, code: int, at: str) -> None:
    """Make writing the file whose name matches ``name`` (a regex on the basename) fail with
    errno ``code``: at its ``fsync`` (a full disk shows there at the latest), or when it is
    opened for writing (``os.open`` as in mkstemp, or ``open``)."""
    pattern = re.compile(name)

    def hit(path) -> bool:
        return bool(path) and bool(pattern.search(os.path.basename(str(path))))

    if at == "fsync":
        real_fsync = os.fsync

        def fsync(fd):
            if hit(_fd_path(fd)):
                raise OSError(code, os.strerror(code))  # as the kernel reports it: no file name
            return real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        return
    real_os_open, real_open = os.open, builtins.open

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and hit(path):
            raise OSError(code, os.strerror(code), path)
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and set(mode) & set("wax+") and hit(file):
            raise OSError(code, os.strerror(code), file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)


def _assert_earlier_files_intact(run_dir: Path, epoch: int) -> None:
    for name in CHECKPOINTS:
        state = load_checkpoint(str(run_dir / name))  # CheckpointError if truncated or corrupt
        assert state["epoch"] >= epoch, name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["history"]) >= epoch
    assert not list(run_dir.glob(".*.tmp")), "a temporary file was left behind"


@pytest.mark.parametrize(
    "name, code, at, named",
    [
        (r"^\.latest\.", errno.ENOSPC, "fsync", "latest"),  # a checkpoint, disk full
        (r"^\.summary\.json\.", errno.ENOSPC, "fsync", "summary.json"),
        (r"^events\.out\.tfevents", errno.ENOSPC, "fsync", "events.out.tfevents"),  # tensorboard's flush
        (r"^\.latest\.", errno.EACCES, "open", "latest"),  # a checkpoint, permission
        (r"^worklog\.txt$", errno.EACCES, "open", "worklog.txt"),
        (r"^events\.out\.tfevents", errno.EROFS, "open", "events.out.tfevents"),  # a new events file, read-only disk
    ],
)
def test_failed_write_is_one_error_line_and_earlier_files_stay_loadable(
        train_cli, configs, fashion_root, tmp_path, capsys, monkeypatch, name, code, at, named):
    assert train_cli.main(["--cfg", configs[1], *_opts(fashion_root, tmp_path)]) == 0
    run_dir = _run_dir(tmp_path)
    before = {n: (run_dir / n).read_bytes() for n in CHECKPOINTS}
    capsys.readouterr()

    with monkeypatch.context() as patch:
        inject(patch, name, code, at)
        status = train_cli.main(["--cfg", configs[2], "--resume", *_opts(fashion_root, tmp_path)])
    line = _one_error_line(capsys.readouterr().err)
    assert status == 2
    assert f"could not write '{run_dir}" in line and named in line, line
    assert f"{os.strerror(code)} ({errno.errorcode[code]})" in line and "--resume" in line, line
    _assert_earlier_files_intact(run_dir, 1)
    if named == "latest":  # the write of `latest` failed: the previous one is still there, unchanged
        assert (run_dir / "latest").read_bytes() == before["latest"]

    # The machine fixed, the run continues where it stopped.
    assert train_cli.main(["--cfg", configs[2], "--resume", *_opts(fashion_root, tmp_path)]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["complete"]


def test_a_vanished_run_directory_is_named(train_cli, configs, fashion_root, tmp_path, capsys, monkeypatch):
    """The run directory replaced by a file mid-run (an unmounted share, a cleanup script)."""
    from kdharness.engine.trainer import BaseTrainer

    original = BaseTrainer.end_epoch

    def end_epoch(self, epoch, lr):
        shutil.rmtree(self.log_path)
        Path(self.log_path).write_text("not a directory any more")
        return original(self, epoch, lr)

    monkeypatch.setattr(BaseTrainer, "end_epoch", end_epoch)
    assert train_cli.main(["--cfg", configs[1], *_opts(fashion_root, tmp_path)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"could not write '{_run_dir(tmp_path)}/" in line and "(ENOTDIR)" in line, line


def test_write_errors_name_the_target_not_the_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    atomic_write_bytes(str(target), b"old")
    with monkeypatch.context() as patch:
        inject(patch, r"^\.summary\.json\.", errno.ENOSPC, "fsync")
        with pytest.raises(RunWriteError) as raised:
            atomic_write_bytes(str(target), b"new")
    assert raised.value.filename == str(target) and raised.value.errno == errno.ENOSPC
    assert str(raised.value) == f"could not write {str(target)!r}: No space left on device (ENOSPC)"
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    with monkeypatch.context() as patch:
        inject(patch, r"^log\.txt$", errno.EACCES, "open")
        with pytest.raises(PermissionError.__mro__[1], match=r"could not write .*log\.txt.*Permission denied \(EACCES\)"):
            append_text(str(tmp_path / "log.txt"), "line\n")


# -- a real full disk: a small tmpfs (root only) ----------------------------------------------
def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return result.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "16m"):
        pytest.skip("needs root and mount -t tmpfs to fill a real disk")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """A file that fills ``disk`` but for about ``leave`` bytes."""
    filler = disk / "filler"
    chunk = b"\0" * (1 << 16)
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def test_disk_full_mid_run_in_a_subprocess(configs, fashion_root, small_disk):
    """Epoch 1 is written; the disk then fills; `--resume` for epoch 2 stops at its first write
    with one error line and exit status 2; epoch 1's files load; space freed, the run completes."""
    command = [sys.executable, str(REPO / "tools" / "train.py"), "--cfg"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    first = subprocess.run(command + [configs[1], *_opts(fashion_root, small_disk)], capture_output=True, text=True, env=env,
                           cwd=REPO, timeout=300)
    assert first.returncode == 0, first.stderr
    run_dir = _run_dir(small_disk)
    filler = _fill(small_disk, leave=64 * 1024)  # room for the log lines, not for a checkpoint

    full = subprocess.run(command + [configs[2], "--resume", *_opts(fashion_root, small_disk)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)
    line = _one_error_line(full.stderr)
    assert full.returncode == 2, full.stderr
    assert f"could not write '{run_dir}/" in line and "No space left on device (ENOSPC)" in line, line
    _assert_earlier_files_intact(run_dir, 1)

    filler.unlink()
    done = subprocess.run(command + [configs[2], "--resume", *_opts(fashion_root, small_disk)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((run_dir / "summary.json").read_text())["complete"]
