"""Bad input is a clear error: exit status 2, one ``error:`` line naming the file or key and
what to do, before any training (issue 11, section 3). Each case goes through the command
line's own ``main`` (tools/train.py, tools/eval.py), in process.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kdharness.data.fashion_mnist as fm
from fixtures_data import write_fashion_mnist_fixture
from harness_utils import REPO, write_teacher_checkpoint
from kdharness.config import get_cfg_defaults
from kdharness.data import build_datasets

VANILLA_CFG = REPO / "configs" / "fashion_mnist" / "vanilla" / "res8.yaml"
KD_CFG = REPO / "configs" / "fashion_mnist" / "kd" / "res14_res8.yaml"
ICKD_KD_CFG = REPO / "configs" / "fashion_mnist" / "ickd_kd" / "res14_res8.yaml"
TRAIN_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_cli_bad_input", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_cli():
    return _tool("train")


@pytest.fixture(scope="module")
def eval_cli():
    return _tool("eval")


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory) -> Path:
    return write_fashion_mnist_fixture(tmp_path_factory.mktemp("fashion"), n_train=32, n_test=16)


@pytest.fixture
def system_copy(tmp_path, monkeypatch) -> Path:
    """A complete "system" Fashion-MNIST in place of Debian's, so fallbacks are visible."""
    folder = write_fashion_mnist_fixture(tmp_path / "system_copy", n_train=40, n_test=20, seed=1)
    monkeypatch.setattr(fm, "SYSTEM_DIRS", (str(folder),))
    return folder


def _opts(root: Path | str, prefix: Path, *extra: str) -> list[str]:
    return [
        "DATASET.ROOT", str(root), "DATASET.NUM_WORKERS", "0", "DATASET.TRAIN_SUBSET", "0",
        "SOLVER.EPOCHS", "1", "SOLVER.BATCH_SIZE", "16", "LOG.PREFIX", str(prefix),
        "LOG.TENSORBOARD_FREQ", "0", *extra,
    ]


def _clear_error(capsys, status: int, *expected: str) -> str:
    """Assert the contract: status 2, one ``error:`` line holding ``expected``, no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def _trained(prefix: Path) -> bool:
    return any(name in ("worklog.txt", "latest") for _, _, files in os.walk(prefix) for name in files)


# -- 1. the config file ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("SOLVER:\n  EPOCHS: [1\n", ("not valid YAML", "line 2, column 11")),
        ("- SOLVER\n- EPOCHS\n", ("top level is a list", "expected a mapping")),
        ("just words\n", ("top level is a str", "expected a mapping")),
        ("", ("the file is empty", "expected a mapping")),  # once trained the CIFAR-100 defaults
        ("# SOLVER:\n#   EPOCHS: 3\n", ("the file is empty", "expected a mapping")),
        ("{}\n", ("an empty mapping", "expected a mapping")),
        ("SOLVER:\n  EPOCHS: 3\n\tLR: 0.1\n", ("not valid YAML", "line 3, column 1")),
    ],
)
def test_unreadable_config_file_is_named(train_cli, tmp_path, capsys, text, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    status = train_cli.main(["--cfg", str(bad), "LOG.PREFIX", str(tmp_path / "out")])
    line = _clear_error(capsys, status, str(bad), *expected)
    assert "unicode string" not in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "text, expected",
    [
        (None, "does not exist"),
        ("SOLVER:\n  EPOCS: 3\n", "Non-existent config key: SOLVER.EPOCS"),
        ("SOLVER:\n  EPOCHS: [1\n", "not valid YAML"),
        ("SOLVER:\n  LR: -0.1\n", "SOLVER.LR = -0.1"),
    ],
)
def test_config_errors_come_before_torch_is_imported(tmp_path, text, expected):
    """Start-up cost: a typo is reported without importing torch (seconds of imports)."""
    path = tmp_path / "cfg.yaml"
    if text is not None:
        path.write_text(text)
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['train.py', '--cfg', {str(path)!r}]\n"
        "try:\n"
        f"    runpy.run_path({str(REPO / 'tools' / 'train.py')!r}, run_name='__main__')\n"
        "except SystemExit as done:\n"
        "    print('status', done.code, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.stdout.strip() == "status 2 False", result.stdout + result.stderr
    assert expected in result.stderr and result.stderr.startswith("error:"), result.stderr


@pytest.mark.parametrize(
    "override, expected",
    [
        (("ICKD.K", "-3"), "ICKD.K = -3; expected an integer >= 1"),
        (("ICKD.BETA1", "1.5"), "ICKD.BETA1 = 1.5; expected a number in [0, 1]"),
        (("ICKD.BASE", "NOPE"), "ICKD.BASE = 'NOPE'; not a registered distiller"),
    ],
)
def test_bad_ickd_value_is_refused_before_data_or_teacher_is_read(train_cli, tmp_path, capsys, override, expected):
    """The distiller's own node is checked with the config (check_config), not after data loads."""
    missing = tmp_path / "no_such_root"  # reading data or the teacher would fail with another message
    status = train_cli.main(["--cfg", str(ICKD_KD_CFG), *_opts(missing, tmp_path / "out", *override)])
    _clear_error(capsys, status, expected)
    assert not (tmp_path / "out").exists() and not missing.exists()


# -- 2. a teacher file that is not a checkpoint ----------------------------------------------
@pytest.mark.parametrize(
    "content, expected",
    [
        ("https://github.com/megvii-research/mdistiller/releases/download/v0.1/cifar_teachers.tar\n", "text file"),
        ("<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n", "HTML page"),
        ("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 1234\n", "git-lfs pointer"),
    ],
)
def test_teacher_weights_that_are_text_are_not_a_checkpoint(train_cli, fashion_root, tmp_path, capsys, content, expected):
    weights = tmp_path / "teacher.pth"
    weights.write_text(content)
    status = train_cli.main(["--cfg", str(KD_CFG), *_opts(fashion_root, tmp_path, "DISTILLER.TEACHER_WEIGHTS", str(weights))])
    line = _clear_error(capsys, status, "DISTILLER.TEACHER_WEIGHTS", str(weights), "is not a PyTorch checkpoint", expected)
    assert "add_safe_globals" not in line and "KeyError" not in line
    assert not _trained(tmp_path)


# -- 3. DATASET.ROOT: one copy of the data, the one the user named ----------------------------
def test_root_with_only_the_train_split_is_an_error(train_cli, tmp_path, capsys, system_copy):
    root = write_fashion_mnist_fixture(tmp_path / "partial", n_train=32, n_test=16)
    for name in os.listdir(root):
        if name.startswith("t10k"):
            os.remove(root / name)
    status = train_cli.main(["--cfg", str(VANILLA_CFG), *_opts(root, tmp_path / "out")])
    _clear_error(capsys, status, "DATASET.ROOT", str(root), "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    assert not _trained(tmp_path / "out")


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_explicit_root_without_data_does_not_fall_back(train_cli, tmp_path, capsys, system_copy, kind):
    root = tmp_path / "fashon"  # mistyped
    if kind == "empty":
        root.mkdir()
    status = train_cli.main(["--cfg", str(VANILLA_CFG), *_opts(root, tmp_path / "out")])
    # the message points at the complete copy it did not silently use
    _clear_error(capsys, status, f"DATASET.ROOT = {str(root)!r}", f"A complete copy is in {system_copy}")
    assert not _trained(tmp_path / "out")


def _cfg(root: str):
    cfg = get_cfg_defaults()
    cfg.DATASET.TYPE = "fashion_mnist"
    cfg.DATASET.ROOT = root
    cfg.DATASET.NUM_WORKERS = 0
    return cfg


def test_default_root_holding_nothing_uses_the_system_copy_and_says_so(tmp_path, monkeypatch, capsys, system_copy):
    monkeypatch.chdir(tmp_path)  # ./data does not exist here
    train_set, val_set, _ = build_datasets(_cfg(get_cfg_defaults().DATASET.ROOT))
    assert (len(train_set), len(val_set)) == (40, 20)  # the system copy's sizes
    out = capsys.readouterr().out
    for split, stem in (("train", "train"), ("val", "t10k")):
        expected = (
            f"fashion_mnist {split} split: {20 if stem == 't10k' else 40} samples read from "
            f"{system_copy / (stem + '-images-idx3-ubyte.gz')}, {system_copy / (stem + '-labels-idx1-ubyte.gz')}"
        )
        assert expected in out, out


def test_default_root_with_one_split_does_not_mix_copies(tmp_path, monkeypatch, system_copy):
    monkeypatch.chdir(tmp_path)
    write_fashion_mnist_fixture(tmp_path / "data", n_train=32, n_test=16)
    for name in TRAIN_FILES:
        os.remove(tmp_path / "data" / name)
    with pytest.raises(FileNotFoundError, match=r"lacks train-images-idx3-ubyte\[\.gz\], train-labels-idx1-ubyte"):
        build_datasets(_cfg("./data"))


# -- 4. LOG.PREFIX -------------------------------------------------------------------------
def _unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create entries in, also when it runs as root."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        return locked
    try:  # root: a read-only mount (sysfs is one in containers and most systems)
        os.mkdir("/sys/kdharness_probe")
    except OSError:
        return Path("/sys")
    os.rmdir("/sys/kdharness_probe")
    pytest.skip("no directory is read-only for root here")


@pytest.mark.parametrize("below", ["", "runs"])
def test_log_prefix_blocked_by_a_file(train_cli, fashion_root, tmp_path, capsys, below):
    blocker = tmp_path / "output"
    blocker.write_text("not a folder")
    prefix = blocker / below if below else blocker
    status = train_cli.main(["--cfg", str(VANILLA_CFG), *_opts(fashion_root, prefix)])
    _clear_error(capsys, status, f"LOG.PREFIX = {str(prefix)!r}", f"{str(blocker)!r} is a file, not a directory")
    assert blocker.read_text() == "not a folder"


def test_log_prefix_not_writable(train_cli, fashion_root, tmp_path, capsys):
    prefix = _unwritable_dir(tmp_path) / "kdharness_runs"
    status = train_cli.main(["--cfg", str(VANILLA_CFG), *_opts(fashion_root, prefix)])
    _clear_error(capsys, status, f"LOG.PREFIX = {str(prefix)!r} is not writable")


# -- 5. tools/eval.py names its own flag ------------------------------------------------------
def test_eval_blames_ckpt_for_a_checkpoint_of_another_architecture(eval_cli, fashion_root, tmp_path, capsys):
    wrong = write_teacher_checkpoint(tmp_path / "wrn.pth", "wrn_16_1", "fashion_mnist", 10)
    status = eval_cli.main(["--cfg", str(VANILLA_CFG), "--ckpt", str(wrong), *_opts(fashion_root, tmp_path)])
    line = _clear_error(capsys, status, f"--ckpt = {str(wrong)!r}", "does not fit the model", "cifar_resnet8")
    assert "TEACHER_WEIGHTS" not in line


def test_eval_names_ckpt_for_a_text_file(eval_cli, fashion_root, tmp_path, capsys):
    text = tmp_path / "student_best"
    text.write_text("output/fashion_mnist/vanilla_res8/student_best\n")
    status = eval_cli.main(["--cfg", str(VANILLA_CFG), "--ckpt", str(text), *_opts(fashion_root, tmp_path)])
    _clear_error(capsys, status, f"--ckpt = {str(text)!r}", "is not a PyTorch checkpoint", "text file")
