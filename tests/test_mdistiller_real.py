"""ICKD through a real mdistiller checkout: its own tools/train.py, trainers and CIFAR-100 code.

Skipped unless ``MDISTILLER_ROOT`` names an mdistiller checkout, e.g.::

    git clone https://github.com/megvii-research/mdistiller /tmp/mdistiller
    MDISTILLER_ROOT=/tmp/mdistiller python -m pytest -n 0 -q tests/test_mdistiller_real.py

Each run is a subprocess of the launcher (`python -m ickd_plugin.mdistiller`) under CPU/offline
shims only, applied in that process: ``.cuda()`` is the identity, torchvision's md5 check of the
CIFAR files passes (the files are tiny fakes in CIFAR-100's python-pickle format), mdistiller's
data folder and the teacher checkpoint point into the test's tmp dir, and wandb is off. No file
of the checkout is written.
"""
from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = os.environ.get("MDISTILLER_ROOT", "")
PROJECT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (ROOT and (Path(ROOT) / "tools" / "train.py").is_file()),
        reason="set MDISTILLER_ROOT to an mdistiller checkout to run ICKD through its tools/train.py",
    ),
    pytest.mark.skipif(
        bool(ROOT) and importlib.util.find_spec("scipy") is None,
        reason="mdistiller imports scipy (its OFD distiller); install it to run these tests",
    ),
]

NUM_CLASSES, PER_CLASS, TEST_PER_CLASS = 100, 3, 1

# Applied inside the launcher's process, before mdistiller runs: CPU and offline only.
SHIM = '''
import sys
import torch
import torchvision.datasets.cifar as tv_cifar

root, data_dir, teacher_ckpt = sys.argv[1:4]
torch.nn.Module.cuda = lambda self, *args, **kwargs: self  # CPU: .cuda() is the identity
torch.Tensor.cuda = lambda self, *args, **kwargs: self
tv_cifar.CIFAR10._check_integrity = lambda self: True  # fake CIFAR files: no md5 check
tv_cifar.check_integrity = lambda *args, **kwargs: True
sys.path.insert(0, root)
import mdistiller.dataset.cifar100 as md_cifar
import mdistiller.models as md_models

md_cifar.get_data_folder = lambda: data_dir  # the fake CIFAR-100, not the checkout's data/
net = md_models.cifar_model_dict["resnet8"][0]
md_models.cifar_model_dict["resnet8"] = (net, teacher_ckpt)  # a teacher checkpoint in tmp

from ickd_plugin.mdistiller import main

main(sys.argv[4:])
'''


def _write_fake_cifar100(folder: Path) -> None:
    """CIFAR-100's python-pickle files (train, test, meta) with random images, every class present."""
    rng = np.random.default_rng(0)
    base = folder / "cifar-100-python"
    base.mkdir(parents=True)
    for name, per_class in (("train", PER_CLASS), ("test", TEST_PER_CLASS)):
        labels = [c for c in range(NUM_CLASSES) for _ in range(per_class)]
        data = rng.integers(0, 256, size=(len(labels), 3 * 32 * 32), dtype=np.uint8)
        with open(base / name, "wb") as handle:
            pickle.dump({"data": data, "fine_labels": labels, "coarse_labels": [0] * len(labels)}, handle)
    with open(base / "meta", "wb") as handle:
        pickle.dump({"fine_label_names": [f"class{c}" for c in range(NUM_CLASSES)]}, handle)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("mdistiller_real")
    _write_fake_cifar100(tmp / "data")
    (tmp / "shim.py").write_text(SHIM)
    code = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {ROOT!r})
        from mdistiller.models import cifar_model_dict
        torch.manual_seed(0)
        torch.save({{"model": cifar_model_dict["resnet8"][0](num_classes=100).state_dict()}}, {str(tmp / 'teacher.pth')!r})
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=_env())
    return tmp


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(PROJECT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    env.pop("MDISTILLER_ROOT", None)  # the launcher must use --mdistiller
    return env


def _config(tmp: Path, name: str, body: str) -> Path:
    path = tmp / f"{name}.yaml"
    common = f"""
        EXPERIMENT:
          PROJECT: "real"
          TAG: "{name}"
        DATASET:
          NUM_WORKERS: 0
          TEST:
            BATCH_SIZE: 50
        SOLVER:
          BATCH_SIZE: 32
          EPOCHS: 1
        LOG:
          PREFIX: "{tmp / 'output'}"
          WANDB: True
    """
    path.write_text(textwrap.dedent(common) + textwrap.dedent(body))
    return path


def _train(tmp: Path, name: str, body: str, *opts: str) -> subprocess.CompletedProcess:
    cfg = _config(tmp, name, body)
    command = [sys.executable, str(tmp / "shim.py"), ROOT, str(tmp / "data"), str(tmp / "teacher.pth"),
               "--mdistiller", ROOT, "--cfg", str(cfg), *opts]
    result = subprocess.run(command, cwd=tmp, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    worklog = tmp / "output" / "real" / name / "worklog.txt"
    assert worklog.is_file() and "best_acc" in worklog.read_text(), result.stdout[-2000:]
    return result


ICKD = """
    DISTILLER:
      TYPE: "ICKD"
      TEACHER: "resnet8"
      STUDENT: "resnet8"
    ICKD:
      BASE: "{base}"
      K: 2
      N: 2
      BANK:
        CACHE_DIR: "{cache}"
"""


# resnet8's pooled feature has 64 channels (mdistiller's CRD defaults are resnet32x4's 256).
CRD_BODY = """
    CRD:
      FEAT:
        STUDENT_DIM: 64
        TEACHER_DIM: 64
      NCE:
        K: 16
"""


@pytest.mark.parametrize("base", ["KD", "DKD", "CRD"])
def test_ickd_trains_an_epoch_through_mdistillers_train_py(workspace: Path, base: str) -> None:
    body = ICKD.format(base=base, cache=workspace / "cache") + (
        CRD_BODY if base == "CRD" else ""
    )
    # SOLVER.TRAINER is left at mdistiller's "base"; ICKD's default WARMUP 20 needs the epoch.
    result = _train(workspace, f"ickd_{base.lower()}", body)
    assert "LOG.WANDB True but wandb is not installed" in result.stdout or _has_wandb()
    expected = "ickd_crd" if base == "CRD" else "ickd"
    assert f"SOLVER.TRAINER 'base' -> '{expected}'" in result.stdout
    assert "[ICKD] memory bank: built by the teacher from 300 training samples" in result.stdout or (
        "[ICKD] memory bank: loaded from the cache" in result.stdout
    )


def test_bad_ickd_value_stops_the_launcher_before_any_data_is_read(workspace: Path) -> None:
    cfg = _config(workspace, "bad_k", ICKD.format(base="KD", cache=workspace / "cache"))
    command = [sys.executable, str(workspace / "shim.py"), ROOT, str(workspace / "missing_data"),
               str(workspace / "teacher.pth"), "--mdistiller", ROOT, "--cfg", str(cfg), "ICKD.K", "0"]
    result = subprocess.run(command, cwd=workspace, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "error: ICKD.K = 0; expected an integer >= 1" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (workspace / "output" / "real" / "bad_k").exists()


def test_plain_kd_still_trains_through_the_launcher(workspace: Path) -> None:
    body = """
    DISTILLER:
      TYPE: "KD"
      TEACHER: "resnet8"
      STUDENT: "resnet8"
    """
    _train(workspace, "kd", body)


def _has_wandb() -> bool:
    return importlib.util.find_spec("wandb") is not None
