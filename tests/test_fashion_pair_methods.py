"""Methods on the Fashion-MNIST pair they were not configured for (issue 23), through
tools/train.py as a user runs them: ``configs/fashion_mnist/kd/res14_res8.yaml DISTILLER.TYPE X``
and ``configs/fashion_mnist/ickd_kd/res14_res8.yaml ICKD.BASE X``.

KDSVD ended at step 2 in a LinAlgError (its SVD's gradient was NaN on zero-padded images with
dark borders: repeated zero singular values); ReviewKD in a channel mismatch (its lists were
resnet32x4's). The fixture's items sit in the middle of the frame, dark around them, as real
Fashion-MNIST items do.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from fixtures_data import idx_bytes
from harness_utils import REPO, write_teacher_checkpoint

KD_CFG = REPO / "configs" / "fashion_mnist" / "kd" / "res14_res8.yaml"
ICKD_KD_CFG = REPO / "configs" / "fashion_mnist" / "ickd_kd" / "res14_res8.yaml"


def write_dark_border_fixture(root: Path, n_train: int = 48, n_test: int = 16) -> Path:
    """Fashion-MNIST idx files whose items fill columns 7-20 of 28: the rest of the frame is black."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        images = np.zeros((count, 28, 28), dtype=np.uint8)
        images[:, 2:26, 7:21] = rng.integers(0, 256, size=(count, 24, 14))
        images[:, 2:26, 7:21] //= (1 + labels[:, None, None] % 3)  # some class signal, the borders stay black
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            with gzip.open(root / f"{prefix}-{kind}-ubyte.gz", "wb") as handle:
                handle.write(idx_bytes(array))
    return root


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory) -> Path:
    return write_dark_border_fixture(tmp_path_factory.mktemp("dark_border"))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return write_teacher_checkpoint(tmp_path_factory.mktemp("teacher") / "res14.pth", "resnet14", "fashion_mnist", 10)


@pytest.fixture(scope="module")
def train_cli():
    spec = importlib.util.spec_from_file_location("train_cli_fashion_pair", REPO / "tools" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("method", ["KDSVD", "REVIEWKD"])
@pytest.mark.parametrize("config, key", [(KD_CFG, "DISTILLER.TYPE"), (ICKD_KD_CFG, "ICKD.BASE")])
def test_method_trains_on_the_fashion_mnist_pair(train_cli, fashion_root, teacher, tmp_path, capsys, config, key, method):
    opts = [
        key, method, "DATASET.ROOT", str(fashion_root), "DATASET.NUM_WORKERS", "0", "DATASET.TRAIN_SUBSET", "0",
        "DISTILLER.TEACHER_WEIGHTS", str(teacher), "SOLVER.EPOCHS", "1", "SOLVER.BATCH_SIZE", "8",
        "DATASET.TEST.BATCH_SIZE", "16", "LOG.PREFIX", str(tmp_path), "LOG.TENSORBOARD_FREQ", "0",
        "ICKD.K", "2", "ICKD.N", "2", "ICKD.BANK.USE_CACHE", "False",
    ]
    status = train_cli.main(["--cfg", str(config), *opts])
    err = capsys.readouterr().err
    assert status == 0 and "Traceback" not in err, err
    (summary_path,) = tmp_path.rglob("summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["complete"] and summary["skipped_steps"] == 0
    assert summary["history"][0]["train_loss"] == summary["history"][0]["train_loss"]  # finite, not NaN
