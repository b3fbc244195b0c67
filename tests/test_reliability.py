"""Reliability: bad input fails before training with a message naming the key or file;
no run is lost to a half-written checkpoint, a signal, a NaN or a second writer."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fixtures_data import write_fashion_mnist_fixture
from harness_utils import REPO, run_config, write_teacher_checkpoint
from kdharness.compose import load_config
from kdharness.config import ConfigError
from kdharness.engine.checkpoint import CheckpointError, load_checkpoint

KD_CFG = REPO / "configs" / "fashion_mnist" / "kd" / "res14_res8.yaml"
VANILLA_CFG = REPO / "configs" / "fashion_mnist" / "vanilla" / "res8.yaml"


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fashion")
    write_fashion_mnist_fixture(root, n_train=96, n_test=32)
    return root


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return write_teacher_checkpoint(tmp_path_factory.mktemp("t") / "teacher.pth", "resnet14", "fashion_mnist", 10)


def _opts(root: Path, prefix: Path, *extra: str) -> list[str]:
    return [
        "DATASET.ROOT", str(root), "DATASET.NUM_WORKERS", "0", "DATASET.TRAIN_SUBSET", "0",
        "SOLVER.EPOCHS", "1", "SOLVER.BATCH_SIZE", "16", "LOG.PREFIX", str(prefix),
        "LOG.TENSORBOARD_FREQ", "0", *extra,
    ]


# -- config errors: one per case, each names the key, the value and what is allowed ---------
@pytest.mark.parametrize(
    "opts, expected",
    [
        (["SOLVER.EPOCS", "3"], r"SOLVER\.EPOCS"),
        (["SOLVER.EPOCHS", "three"], r"SOLVER\.EPOCHS"),
        (["DISTILLER.TYPE", "KDD"], r"DISTILLER\.TYPE = 'KDD'.*allowed: .*DKD"),
        (["DISTILLER.STUDENT", "resnet9"], r"DISTILLER\.STUDENT = 'resnet9'.*allowed: .*resnet8"),
        (["DISTILLER.TEACHER", "vgg99"], r"DISTILLER\.TEACHER = 'vgg99'"),
        (["DATASET.TYPE", "mnist"], r"DATASET\.TYPE = 'mnist'.*allowed: .*fashion_mnist"),
        (["SOLVER.TRAINER", "fancy"], r"SOLVER\.TRAINER = 'fancy'"),
        (["SOLVER.LR", "-0.1"], r"SOLVER\.LR = -0\.1; expected a number > 0"),
        (["KD.TEMPERATURE", "0"], r"KD\.TEMPERATURE = 0"),
        (["KD.LOSS.KD_WEIGHT", "-1.0"], r"KD\.LOSS\.KD_WEIGHT = -1\.0; expected a number >= 0"),
        (["DKD.BETA", "-2.0"], r"DKD\.BETA"),
        (["SOLVER.SCHEDULER", "linear"], r"SOLVER\.SCHEDULER = 'linear'; allowed: step, cosine"),
        (["SOLVER.LR_DECAY_STAGES", "[30, 10]"], r"LR_DECAY_STAGES"),
        (["SOLVER.EPOCHS"], r"KEY VALUE pairs"),
    ],
)
def test_bad_config_fails_naming_the_key(opts, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(str(KD_CFG), opts)


def test_bad_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("SOLVER:\n  EPOCS: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*SOLVER\.EPOCS"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))


def test_missing_teacher_checkpoint_names_key_and_path(fashion_root, tmp_path):
    opts = _opts(fashion_root, tmp_path, "DISTILLER.TEACHER_WEIGHTS", str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match=r"DISTILLER\.TEACHER_WEIGHTS.*nope\.pth"):
        run_config(KD_CFG, opts)


def test_teacher_checkpoint_of_another_architecture_is_refused(fashion_root, tmp_path):
    wrong = write_teacher_checkpoint(tmp_path / "wrong.pth", "wrn_16_1", "fashion_mnist", 10)
    with pytest.raises(CheckpointError, match=r"(?s)missing.*unexpected.*Is this a checkpoint of cifar_resnet14 with 10 classes"):
        run_config(KD_CFG, _opts(fashion_root, tmp_path, "DISTILLER.TEACHER_WEIGHTS", str(wrong)))


def test_teacher_checkpoint_with_another_class_count_is_refused(fashion_root, tmp_path):
    wrong = write_teacher_checkpoint(tmp_path / "c100.pth", "resnet14", "fashion_mnist", 100)
    with pytest.raises(CheckpointError, match=r"(?s)shape mismatch.*fc\.weight"):
        run_config(KD_CFG, _opts(fashion_root, tmp_path, "DISTILLER.TEACHER_WEIGHTS", str(wrong)))


def test_missing_dataset_files_name_the_root(tmp_path, monkeypatch):
    import kdharness.data.fashion_mnist as fm

    monkeypatch.setattr(fm, "SYSTEM_DIRS", [str(tmp_path / "none")])
    with pytest.raises(FileNotFoundError, match=r"DATASET\.ROOT"):
        run_config(VANILLA_CFG, _opts(tmp_path / "empty", tmp_path))


# -- checkpoints and resume -----------------------------------------------------------------
def test_resume_falls_back_to_newest_intact_checkpoint(fashion_root, tmp_path, capsys):
    opts = _opts(fashion_root, tmp_path, "SOLVER.EPOCHS", "2", "EXPERIMENT.NAME", "fallback")
    first = run_config(VANILLA_CFG, opts)
    run_dir = Path(first["log_path"])
    # `latest` (epoch 2) is truncated; `latest.prev` (epoch 1) is intact.
    data = (run_dir / "latest").read_bytes()
    (run_dir / "latest").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError):
        load_checkpoint(str(run_dir / "latest"))
    resumed = run_config(VANILLA_CFG, opts, resume=True)
    out = capsys.readouterr().out
    assert "skipping" in out and "latest.prev" in out
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][1]["test_acc"] == first["history"][1]["test_acc"]


def test_resume_without_any_checkpoint_is_a_clear_error(fashion_root, tmp_path):
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        run_config(VANILLA_CFG, _opts(fashion_root, tmp_path, "EXPERIMENT.NAME", "fresh"), resume=True)


def test_sigterm_saves_a_resumable_checkpoint(fashion_root, tmp_path):
    opts = _opts(fashion_root, tmp_path, "SOLVER.EPOCHS", "50", "EXPERIMENT.NAME", "sigterm")
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), "--cfg", str(VANILLA_CFG), *opts]
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("fashion_mnist/*/worklog.txt")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
    (latest,) = tmp_path.glob("fashion_mnist/*/latest")
    state = load_checkpoint(str(latest))
    assert state["epoch"] >= 1 and "optimizer" in state and "rng" in state


def test_second_run_in_same_directory_is_refused(fashion_root, tmp_path):
    from kdharness.engine.build import build_trainer
    from kdharness.engine.trainer import RunDirectoryLocked

    cfg = load_config(str(VANILLA_CFG), _opts(fashion_root, tmp_path))
    first = build_trainer(cfg, device="cpu")
    with pytest.raises(RunDirectoryLocked, match="in use by another training process"):
        build_trainer(cfg, device="cpu")
    first._release_lock()
    build_trainer(cfg, device="cpu")._release_lock()  # free again once the first is done


# -- numerical faults ------------------------------------------------------------------------
def _poison_first_batch(trainer):
    original = trainer.distiller.forward_train

    def forward_train(**kwargs):
        logits, losses = original(**kwargs)
        if trainer.global_step == 0:
            losses["loss_ce"] = losses["loss_ce"] * float("nan")
        return logits, losses

    trainer.distiller.forward_train = forward_train


def test_nan_loss_stops_with_step_terms_and_saved_state(fashion_root, tmp_path):
    from kdharness.engine.build import build_trainer
    from kdharness.engine.trainer import NonFiniteLossError

    cfg = load_config(str(VANILLA_CFG), _opts(fashion_root, tmp_path))
    trainer = build_trainer(cfg, device="cpu")
    _poison_first_batch(trainer)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 0.*loss_ce.*nan"):
        trainer.train()
    state = load_checkpoint(os.path.join(trainer.log_path, "nan_state"))
    assert state["non_finite_terms"]["loss_ce"] != state["non_finite_terms"]["loss_ce"]  # NaN
    trainer._release_lock()


def test_nan_policy_skip_drops_the_batch_and_trains_on(fashion_root, tmp_path):
    from kdharness.engine.build import build_trainer

    cfg = load_config(str(VANILLA_CFG), _opts(fashion_root, tmp_path, "SOLVER.NAN_POLICY", "skip"))
    trainer = build_trainer(cfg, device="cpu")
    _poison_first_batch(trainer)
    summary = trainer.train()
    assert summary["skipped_steps"] == 1 and summary["complete"]
    weights = torch.cat([p.detach().flatten() for p in trainer.distiller.student.parameters()])
    assert torch.isfinite(weights).all()


def test_train_cli_exits_75_when_the_run_directory_is_taken(fashion_root, tmp_path, capsys):
    """tools/sweep.py reads status 75 as "another sweep took this run", not as a failure."""
    import importlib.util

    from kdharness.engine.build import build_trainer

    spec = importlib.util.spec_from_file_location("train_cli", REPO / "tools" / "train.py")
    train_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_cli)
    opts = _opts(fashion_root, tmp_path)
    holder = build_trainer(load_config(str(VANILLA_CFG), opts), opts, device="cpu")
    try:
        assert train_cli.main(["--cfg", str(VANILLA_CFG), *opts]) == 75
    finally:
        holder._release_lock()
    assert "in use by another training process" in capsys.readouterr().err


def test_eval_cli_reproduces_the_runs_accuracy(fashion_root, tmp_path, capsys):
    """tools/eval.py on student_best and on the full `latest` gives the trainer's own top-1."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_cli", REPO / "tools" / "eval.py")
    eval_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_cli)
    opts = _opts(fashion_root, tmp_path, "EXPERIMENT.NAME", "evaluated")
    summary = run_config(VANILLA_CFG, opts)
    capsys.readouterr()
    for name in ("student_best", "latest"):
        ckpt = os.path.join(summary["log_path"], name)
        assert eval_cli.main(["--cfg", str(VANILLA_CFG), "--ckpt", ckpt, *opts]) == 0
        assert f"top-1 {summary['best_top1']:.2f}" in capsys.readouterr().out
