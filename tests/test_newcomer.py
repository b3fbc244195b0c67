"""What a newcomer trips over (issue 25): short readable output, no leftovers of refused
commands, locks that name no dead holder, key suggestions, honest messages and help.

Each case runs tools/train.py's own ``main`` (in process) or the script itself (a subprocess,
where the terminal matters), on a tiny Fashion-MNIST fixture.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_data import write_fashion_mnist_fixture
from harness_utils import REPO

VANILLA_CFG = REPO / "configs" / "fashion_mnist" / "vanilla" / "res8.yaml"
KD_CFG = REPO / "configs" / "fashion_mnist" / "kd" / "res14_res8.yaml"


@pytest.fixture(scope="module")
def train_cli():
    spec = importlib.util.spec_from_file_location("train_cli_newcomer", REPO / "tools" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory) -> Path:
    return write_fashion_mnist_fixture(tmp_path_factory.mktemp("fashion"), n_train=32, n_test=16)


def _opts(root: Path, prefix: Path, *extra: str) -> list[str]:
    return [
        "DATASET.ROOT", str(root), "DATASET.NUM_WORKERS", "0", "DATASET.TRAIN_SUBSET", "0",
        "SOLVER.EPOCHS", "2", "SOLVER.BATCH_SIZE", "16", "LOG.PREFIX", str(prefix),
        "LOG.TENSORBOARD_FREQ", "0", "EXPERIMENT.NAME", "run", *extra,
    ]


def _run_dir(prefix: Path) -> Path:
    (summary,) = prefix.glob("*/run,*/summary.json")
    return summary.parent


def test_training_output_is_a_few_readable_lines_and_the_config_goes_to_the_worklog(fashion_root, tmp_path):
    """Piped (not a terminal): no progress-bar redraws, no config dump; one line per epoch."""
    command = [sys.executable, str(REPO / "tools" / "train.py"), "--cfg", str(VANILLA_CFG), *_opts(fashion_root, tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout + result.stderr
    lines = text.splitlines()
    assert len(lines) <= 12, text
    assert "\r" not in text and "it/s" not in text  # no tqdm redraws
    assert "CONFIG" not in text and "SOLVER:" not in text
    assert sum("Epoch 1/2" in line for line in lines) == 1 and sum("Epoch 2/2" in line for line in lines) == 1
    assert any("run directory" in line for line in lines) and any("Best accuracy" in line for line in lines)
    worklog = (_run_dir(tmp_path) / "worklog.txt").read_text()
    assert worklog.startswith("config:\n") and "EPOCHS: 2" in worklog and worklog.count("config:") == 1


def test_resume_with_nothing_to_resume_creates_nothing_and_loads_nothing(train_cli, fashion_root, tmp_path, capsys):
    status = train_cli.main(["--cfg", str(KD_CFG), "--resume", *_opts(fashion_root, tmp_path)])
    err = capsys.readouterr()
    assert status == 2
    (line,) = [line for line in err.err.splitlines() if line.startswith("error:")]
    assert "nothing to resume" in line and "does not exist" in line
    assert not any(tmp_path.iterdir())  # no run directory, no lock, no events
    assert "Loading teacher" not in err.out  # refused before the teacher (or the data) was read


def test_a_fresh_start_over_a_run_is_refused_before_loading_anything(train_cli, fashion_root, tmp_path, capsys):
    assert train_cli.main(["--cfg", str(VANILLA_CFG), *_opts(fashion_root, tmp_path)]) == 0
    run = _run_dir(tmp_path)
    before = sorted(path.name for path in run.iterdir())
    capsys.readouterr()
    assert train_cli.main(["--cfg", str(VANILLA_CFG), *_opts(fashion_root, tmp_path)]) == 2
    err = capsys.readouterr()
    assert "already holds a finished run" in err.err and "split:" not in err.out  # the data was not read
    assert sorted(path.name for path in run.iterdir()) == before


def test_a_finished_run_leaves_no_lock_naming_its_pid_and_resuming_it_changes_nothing(
    train_cli, fashion_root, tmp_path, capsys
):
    assert train_cli.main(["--cfg", str(VANILLA_CFG), *_opts(fashion_root, tmp_path)]) == 0
    run = _run_dir(tmp_path)
    assert (run / "run.lock").read_text() == ""
    summary = (run / "summary.json").read_bytes()
    capsys.readouterr()
    assert train_cli.main(["--cfg", str(VANILLA_CFG), "--resume", *_opts(fashion_root, tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "is complete: all 2 epochs are trained, nothing to resume" in out
    assert "continuing with epoch 3" not in out
    assert (run / "summary.json").read_bytes() == summary
    assert (run / "worklog.txt").read_text().count("best_acc") == 1


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_note(train_cli, fashion_root, tmp_path, capsys):
    run = tmp_path / "fashion_mnist" / "run,DATASET.TRAIN_SUBSET:0,SOLVER.EPOCHS:2,SOLVER.BATCH_SIZE:16"
    run.mkdir(parents=True)
    (run / "run.lock").write_text("pid 999999 on elsewhere\n")  # written, but nobody holds the lock
    assert train_cli.main(["--cfg", str(VANILLA_CFG), *_opts(fashion_root, tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "taking over the lock" in out and "pid 999999 on elsewhere" in out
    assert json.loads((run / "summary.json").read_text())["complete"]


@pytest.mark.parametrize(
    "key, suggestion",
    [("SOLVER.EPOCH", "did you mean SOLVER.EPOCHS?"), ("SOLVR.LR", "did you mean SOLVER.LR"),
     ("ICKD.BANK.CHUNKSIZE", "did you mean ICKD.BANK.CHUNK_SIZE"), ("DATASET.TRAIN_SUBSETT", "DATASET.TRAIN_SUBSET")],
)
def test_a_misspelt_key_gets_the_closest_keys(train_cli, key, suggestion, capsys):
    assert train_cli.main(["--cfg", str(KD_CFG), key, "3"]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert f"Non-existent key: {key}" in line and suggestion in line and "kdharness/config.py" in line


def test_a_misspelt_key_in_a_file_gets_the_closest_keys(train_cli, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("SOLVER:\n  EPOCH: 3\n")
    assert train_cli.main(["--cfg", str(config)]) == 2
    assert "did you mean SOLVER.EPOCHS?" in capsys.readouterr().err


def test_help_has_examples_and_points_to_the_keys(train_cli, capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: train.py ")
    assert "examples:" in out and "--resume" in out and "kdharness/config.py" in out


def test_cifar100_download_failure_does_not_advise_turning_download_on(tmp_path, monkeypatch):
    import kdharness.data.cifar100 as cifar

    class NoNetwork(cifar.CIFAR100):
        def __init__(self, *args, **kwargs):
            raise OSError("no route to host")

    monkeypatch.setattr(cifar, "CIFAR100", NoNetwork)
    cfg = _cfg(tmp_path, download=True)
    with pytest.raises(FileNotFoundError) as error:
        cifar.build_cifar100(cfg, train=True)
    assert "downloading it failed (OSError: no route to host)" in str(error.value)
    assert "set DATASET.DOWNLOAD True" not in str(error.value) and "cifar-100-python.tar.gz" in str(error.value)
    with pytest.raises(FileNotFoundError, match="DATASET.DOWNLOAD is False.*set DATASET.DOWNLOAD True"):
        cifar.build_cifar100(_cfg(tmp_path, download=False), train=True)


def _cfg(root: Path, download: bool):
    from kdharness.config import get_cfg_defaults

    cfg = get_cfg_defaults()
    cfg.DATASET.ROOT = str(root / "data")
    cfg.DATASET.DOWNLOAD = download
    return cfg


def test_a_run_name_too_long_for_the_file_system_is_shortened_keeping_the_seed():
    from kdharness.engine.build import MAX_RUN_NAME_BYTES, shorten_run_name
    from kdharness.results.summaries import strip_seed

    long = "kd_res14_res8,DISTILLER.TEACHER_WEIGHTS:" + "_tmp_deep" * 40 + "_teacher.pth"
    names = [shorten_run_name(f"{long},EXPERIMENT.SEED:{seed}") for seed in (0, 1)]
    assert all(len(n.encode()) <= MAX_RUN_NAME_BYTES for n in names)
    assert names[0].endswith(",EXPERIMENT.SEED:0") and strip_seed(names[0]) == strip_seed(names[1])
    assert shorten_run_name(long + "x") != shorten_run_name(long)  # another configuration, another directory
    assert shorten_run_name("kd,SOLVER.EPOCHS:3") == "kd,SOLVER.EPOCHS:3"
