"""``LOG.WANDB True`` (issue 23, item 5): the run's scalars go to Weights & Biases as well, tag
for tag what tensorboard gets, with the run's config; offline (``WANDB_MODE=offline``, no
network). Without wandb, or when it cannot start, one warning line and tensorboard only.

The offline test needs wandb (``pip install -e .[wandb]``) and is skipped without it; the
others replace the module and always run.
"""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from fixtures_data import write_fashion_mnist_fixture
from harness_utils import REPO, run_config, write_teacher_checkpoint
from kdharness.engine.scalar_log import TensorboardScalars

VANILLA_CFG = REPO / "configs" / "fashion_mnist" / "vanilla" / "res8.yaml"
ICKD_KD_CFG = REPO / "configs" / "fashion_mnist" / "ickd_kd" / "res14_res8.yaml"
try:
    import wandb  # noqa: F401

    HAS_WANDB = True
except ImportError:
    HAS_WANDB = False


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory) -> Path:
    return write_fashion_mnist_fixture(tmp_path_factory.mktemp("fashion"), n_train=40, n_test=20)


def _opts(root: Path, prefix: Path, *extra: str) -> list[str]:
    return [
        "DATASET.ROOT", str(root), "DATASET.NUM_WORKERS", "0", "DATASET.TRAIN_SUBSET", "0",
        "SOLVER.EPOCHS", "2", "SOLVER.BATCH_SIZE", "10", "DATASET.TEST.BATCH_SIZE", "20",
        "LOG.PREFIX", str(prefix), "LOG.TENSORBOARD_FREQ", "1", "LOG.WANDB", "True", *extra,
    ]


def _record_tensorboard(monkeypatch) -> list[tuple[str, int, float]]:
    seen: list[tuple[str, int, float]] = []
    original = TensorboardScalars.add_scalar

    def add_scalar(self, tag, value, step):
        seen.append((tag, int(step), float(value)))
        return original(self, tag, value, step)

    monkeypatch.setattr(TensorboardScalars, "add_scalar", add_scalar)
    return seen


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install -e .[wandb])")
def test_offline_wandb_gets_every_tensorboard_scalar_and_the_config(fashion_root, tmp_path, monkeypatch):
    import wandb
    from wandb.sdk.wandb_run import Run

    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb_dir"), "WANDB_SILENT": "true",
                       "WANDB_CONSOLE": "off", "WANDB_DISABLE_GIT": "true"}.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "wandb_dir").mkdir()
    tensorboard = _record_tensorboard(monkeypatch)
    rows, inits = [], []
    original_log, original_init = Run.log, wandb.init

    def log(self, data, *args, **kwargs):
        rows.append(dict(data))
        return original_log(self, data, *args, **kwargs)

    def init(*args, **kwargs):
        inits.append(kwargs)
        return original_init(*args, **kwargs)

    monkeypatch.setattr(Run, "log", log)
    monkeypatch.setattr(wandb, "init", init)
    teacher = write_teacher_checkpoint(tmp_path / "teacher.pth", "resnet14", "fashion_mnist", 10)
    summary = run_config(ICKD_KD_CFG, _opts(fashion_root, tmp_path / "out", "DISTILLER.TEACHER_WEIGHTS", str(teacher),
                                            "ICKD.K", "2", "ICKD.N", "2", "ICKD.BANK.USE_CACHE", "False"))
    assert summary["complete"]

    # What wandb got is what tensorboard got: the same (tag, step, value) triples.
    logged = {(tag, row[axis], value) for row in rows for axis in ("epoch", "global_step") if axis in row
              for tag, value in row.items() if tag not in ("epoch", "global_step")}
    assert logged == set(tensorboard) and len(tensorboard) > 0
    tags = {tag for tag, _, _ in tensorboard}
    assert {"train/loss_ce", "train/loss_kd", "train/loss_picd", "train/loss_nicd", "test_acc", "lr",
            "diagnostics/pos_sim", "diagnostics_epoch/picd_to_base"} <= tags
    for row in rows:  # per-step tags against global_step, per-epoch tags against epoch
        assert ("global_step" in row) == any(t.startswith(("train/", "diagnostics/")) for t in row if t != "global_step")
    (kwargs,) = inits
    assert kwargs["project"] == "fashion_mnist" and kwargs["name"] == f"fashion_mnist/{Path(summary['log_path']).name}"
    assert kwargs["config"]["ICKD"]["K"] == 2 and kwargs["config"]["DISTILLER"]["TYPE"] == "ICKD"
    # The offline run is on disk under WANDB_DIR, holding the metric names.
    assert wandb.run is None  # finished at the end of training
    wandb.teardown()  # wandb-core writes the offline record after finish() returns: wait for it to stop
    (record,) = (tmp_path / "wandb_dir").rglob("run-*.wandb")
    data = record.read_bytes()
    assert b"test_acc" in data and b"train/loss_picd" in data and b"diagnostics/pos_sim" in data


def test_without_wandb_one_warning_line_and_tensorboard_only(fashion_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError, as when not installed
    tensorboard = _record_tensorboard(monkeypatch)
    summary = run_config(VANILLA_CFG, _opts(fashion_root, tmp_path))
    assert summary["complete"] and any(tag == "test_acc" for tag, _, _ in tensorboard)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "LOG.WANDB" in line]
    assert len(lines) == 1 and "LOG.WANDB is True but wandb cannot be imported" in lines[0], lines
    assert "tensorboard only" in lines[0] and "pip install" in lines[0]
    assert list((Path(summary["log_path"]) / "train.events").glob("events.out.tfevents.*"))


def test_wandb_that_cannot_start_is_one_warning_line_and_training_goes_on(fashion_root, tmp_path, monkeypatch, capsys):
    fake = types.ModuleType("wandb")

    def init(**kwargs):
        raise RuntimeError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])\nmore lines")

    fake.init = init
    monkeypatch.setitem(sys.modules, "wandb", fake)
    summary = run_config(VANILLA_CFG, _opts(fashion_root, tmp_path))
    assert summary["complete"] and len(summary["history"]) == 2
    lines = [line for line in capsys.readouterr().out.splitlines() if "LOG.WANDB" in line or "wandb run" in line]
    assert len(lines) == 1 and "could not start a wandb run (RuntimeError: api_key not configured" in lines[0], lines
    assert "more lines" not in lines[0]


def test_wandb_project_and_tags_follow_mdistiller(fashion_root, tmp_path, monkeypatch):
    """project: LOG.WANDB_PROJECT, else EXPERIMENT.PROJECT; tags: EXPERIMENT.TAG's parts and the overrides."""
    calls, rows = [], []
    fake = types.ModuleType("wandb")

    class FakeRun:
        def define_metric(self, *args, **kwargs):
            pass

        def log(self, data):
            rows.append(data)

        def finish(self):
            calls.append("finish")

    def init(**kwargs):
        calls.append(kwargs)
        return FakeRun()

    fake.init = init
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    opts = _opts(fashion_root, tmp_path, "LOG.WANDB_PROJECT", "mine", "SOLVER.LR", "0.01")
    summary = run_config(VANILLA_CFG, opts)
    kwargs, last = calls[0], calls[-1]
    assert kwargs["project"] == "mine" and "SOLVER.LR:0.01" in kwargs["tags"] and "res8" in kwargs["tags"][0]
    assert kwargs["dir"] == summary["log_path"] or Path(kwargs["dir"]).resolve() == Path(summary["log_path"])
    assert last == "finish" and calls.count("finish") == 1
    assert [row["test_acc"] for row in rows if "test_acc" in row] == [e["test_acc"] for e in summary["history"]]
    assert json.loads((Path(summary["log_path"]) / "summary.json").read_text())["complete"]
