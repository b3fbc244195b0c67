"""A run is never lost or silently corrupted: the cases of issue 11 §3 (items 6-11) and §4.

- the same command again refuses a directory that holds a run; `--start-over` sets it aside;
- a signal during an epoch's last step keeps that epoch's evaluation after `--resume`;
- `--resume` refuses a config that differs from the one the run was trained with;
- `SOLVER.NAN_POLICY skip` stops past `SOLVER.NAN_MAX_SKIPS`; a skipped step leaves the
  BatchNorm statistics, the optimizer and the ICKD bank exactly as before it;
- the NaN stop, like every refusal here, is one `error:` line and exit status 2;
- checkpoints and summaries respect the umask; `--resume` may follow the overrides and says
  where it resumed from.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from fixtures_data import write_fashion_mnist_fixture
from harness_utils import REPO, run_config, write_teacher_checkpoint
from kdharness.compose import load_config
from kdharness.engine import run_dir
from kdharness.engine.checkpoint import atomic_write_bytes, load_checkpoint
from kdharness.engine.trainer import BaseTrainer, NonFiniteLossError, unwrap

FASHION = REPO / "configs" / "fashion_mnist"
VANILLA_CFG = FASHION / "vanilla" / "res8.yaml"
TEACHER_FREE_CFG = FASHION / "ickd_teacher_free" / "res8.yaml"
N_TRAIN, BATCH = 80, 16
STEPS_PER_EPOCH = N_TRAIN // BATCH


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory) -> Path:
    """80 training images, 8 per class (ICKD.K 4 and N 4 fit), 40 test images."""
    return write_fashion_mnist_fixture(tmp_path_factory.mktemp("fashion"), n_train=N_TRAIN, n_test=40)


def _opts(root: Path, prefix: Path, *extra: str) -> list[str]:
    return [
        "DATASET.ROOT", str(root), "DATASET.NUM_WORKERS", "0", "DATASET.TRAIN_SUBSET", "0",
        "DATASET.TEST.BATCH_SIZE", "40", "SOLVER.EPOCHS", "1", "SOLVER.BATCH_SIZE", str(BATCH),
        "LOG.PREFIX", str(prefix), "LOG.TENSORBOARD_FREQ", "0", "ICKD.K", "4", "ICKD.N", "4", *extra,
    ]


def _build(cfg_path: Path, opts: list[str]) -> BaseTrainer:
    from kdharness.engine.build import build_trainer

    return build_trainer(load_config(str(cfg_path), opts), opts, device="cpu")


def _train_cli():
    spec = importlib.util.spec_from_file_location("train_cli", REPO / "tools" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_one_error_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in err


# -- item 6: the same command again ------------------------------------------------------------
def test_second_fresh_run_in_a_run_directory_is_refused_and_changes_nothing(fashion_root, tmp_path, capsys):
    opts = _opts(fashion_root, tmp_path)
    first = run_config(VANILLA_CFG, opts)
    log_path = Path(first["log_path"])
    before = {name: (log_path / name).read_bytes() for name in ("best", "student_best", "latest", "summary.json", "worklog.txt")}
    capsys.readouterr()
    assert _train_cli().main(["--cfg", str(VANILLA_CFG), *opts]) == 2
    _assert_one_error_line(capsys.readouterr().err, str(log_path), "a finished run", "--resume", "--start-over")
    after = {name: (log_path / name).read_bytes() for name in before}
    assert after == before
    with pytest.raises(run_dir.ExistingRunError):
        run_config(VANILLA_CFG, opts)


def test_start_over_keeps_the_old_run_aside(fashion_root, tmp_path, capsys):
    opts = _opts(fashion_root, tmp_path)
    first = run_config(VANILLA_CFG, opts)
    log_path = Path(first["log_path"])
    old_best = (log_path / "student_best").read_bytes()
    assert _train_cli().main(["--cfg", str(VANILLA_CFG), *opts, "--start-over"]) == 0
    (aside,) = tmp_path.glob(f"fashion_mnist/{log_path.name}.old-*")
    assert (aside / "student_best").read_bytes() == old_best
    assert json.loads((aside / "summary.json").read_text())["complete"]
    fresh = json.loads((log_path / "summary.json").read_text())
    assert fresh["complete"] and [h["epoch"] for h in fresh["history"]] == [1]
    assert (log_path / "worklog.txt").read_text().count("epoch: 1") == 1  # one run per worklog
    # the set-aside copy is no second result on a leaderboard
    from kdharness.results.summaries import find_summary_files

    assert find_summary_files([str(tmp_path)]) == [str(log_path / "summary.json")]


def test_resume_and_start_over_exclude_each_other(fashion_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _train_cli().main(["--cfg", str(VANILLA_CFG), "--resume", "--start-over", *_opts(fashion_root, tmp_path)])
    assert exit_info.value.code == 2
    assert "exclude each other" in capsys.readouterr().err


# -- item 7: a signal during the epoch's last step ----------------------------------------------
class SignalAt:
    """Stands for SIGTERM arriving while global step `global_step` runs."""

    def __init__(self, global_step: int) -> None:
        self.global_step = global_step

    def after_step(self, trainer, step, losses) -> None:
        if step == self.global_step:
            trainer._stop_signal = signal.SIGTERM


def test_signal_in_the_last_step_of_an_epoch_keeps_its_evaluation(fashion_root, tmp_path, capsys):
    expected = run_config(VANILLA_CFG, _opts(fashion_root, tmp_path / "straight", "SOLVER.EPOCHS", "2"))
    opts = _opts(fashion_root, tmp_path / "stopped", "SOLVER.EPOCHS", "2")
    stopped = _build(VANILLA_CFG, opts)
    stopped.register_hook(SignalAt(STEPS_PER_EPOCH))
    with pytest.raises(SystemExit) as exit_info:
        stopped.train()
    assert exit_info.value.code == 128 + signal.SIGTERM
    stopped.tf_writer.close()
    capsys.readouterr()
    resumed = _build(VANILLA_CFG, opts).train(resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"] == expected["history"]
    out = capsys.readouterr().out
    assert f"epoch 1, step {STEPS_PER_EPOCH}" in out and os.path.join(stopped.log_path, "latest") in out
    assert (resumed["best_top1"], resumed["best_epoch"]) == (expected["best_top1"], expected["best_epoch"])
    worklog = Path(resumed["log_path"], "worklog.txt").read_text()
    assert worklog.count("epoch: 1\n") == 1 and worklog.count("epoch: 2\n") == 1


# -- item 8: --resume after the config was edited ------------------------------------------------
def _edited_copy(tmp_path: Path, old: str, new: str) -> Path:
    text = VANILLA_CFG.read_text()
    assert text.count(old) == 1
    path = tmp_path / "res8.yaml"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize("old, new, key", [
    ('STUDENT: "resnet8"', 'STUDENT: "resnet14"', "DISTILLER.STUDENT: 'resnet8' in the run, 'resnet14' now"),
    ("  LR: 0.05", "  LR: 0.2", "SOLVER.LR: 0.05 in the run, 0.2 now"),
])
def test_resume_with_an_edited_config_is_refused_with_the_changed_keys(fashion_root, tmp_path, capsys, old, new, key):
    cfg_path = tmp_path / "res8.yaml"
    cfg_path.write_text(VANILLA_CFG.read_text())
    opts = _opts(fashion_root, tmp_path)
    first = run_config(cfg_path, opts)
    summary_before = Path(first["log_path"], "summary.json").read_bytes()
    _edited_copy(tmp_path, old, new)
    capsys.readouterr()
    assert _train_cli().main(["--cfg", str(cfg_path), "--resume", *opts]) == 2
    _assert_one_error_line(capsys.readouterr().err, key, "--start-over")
    assert Path(first["log_path"], "summary.json").read_bytes() == summary_before


def test_resume_accepts_changed_paths_and_loader_settings(fashion_root, tmp_path, capsys):
    opts = _opts(fashion_root, tmp_path)
    run_config(VANILLA_CFG, opts)
    moved = _opts(fashion_root, tmp_path, "DATASET.TEST.BATCH_SIZE", "8", "LOG.SAVE_STEP_FREQ", "3")
    assert run_config(VANILLA_CFG, moved, resume=True)["complete"]


def test_resume_may_extend_a_finished_run(fashion_root, tmp_path):
    """SOLVER.EPOCHS edited in the YAML (an override would name another directory): one more epoch."""
    cfg_path = _edited_copy(tmp_path, "EPOCHS: 3", "EPOCHS: 1")
    opts = [key_or_value for pair in zip(_opts(fashion_root, tmp_path)[::2], _opts(fashion_root, tmp_path)[1::2])
            if pair[0] != "SOLVER.EPOCHS" for key_or_value in pair]
    first = run_config(cfg_path, opts)
    _edited_copy(tmp_path, "EPOCHS: 3", "EPOCHS: 2")
    extended = run_config(cfg_path, opts, resume=True)
    assert extended["log_path"] == first["log_path"] and extended["complete"]
    assert [h["epoch"] for h in extended["history"]] == [1, 2] and extended["history"][0] == first["history"][0]


def test_config_diff_lists_changed_keys_only():
    recorded = "A:\n  X: 1\n  Y: [1, 2]\nLOG:\n  PREFIX: a\nOLD: 1\n"
    current = "A:\n  X: 1\n  Y: [1, 3]\nLOG:\n  PREFIX: b\nNEW: 2\n"
    assert run_dir.config_diff(recorded, current) == [("A.Y", [1, 2], [1, 3])]
    assert run_dir.config_diff(recorded, current, ignore=()) == [("A.Y", [1, 2], [1, 3]), ("LOG.PREFIX", "a", "b")]


# -- items 9-11: non-finite steps ----------------------------------------------------------------
def _poison(trainer: BaseTrainer, global_steps) -> None:
    """One NaN pixel in the first image of the batches at the given global steps (0-based)."""
    original = trainer._batch_to_device

    def batch_to_device(data):
        batch = original(data)
        if trainer.global_step in global_steps:
            batch["image"] = batch["image"].clone()
            batch["image"][0, 0, 0, 0] = float("nan")
        return batch

    trainer._batch_to_device = batch_to_device


def test_too_many_skipped_steps_stop_the_run_with_a_clear_message(fashion_root, tmp_path):
    trainer = _build(VANILLA_CFG, _opts(fashion_root, tmp_path, "SOLVER.NAN_POLICY", "skip", "SOLVER.NAN_MAX_SKIPS", "2"))
    _poison(trainer, range(100))
    with pytest.raises(NonFiniteLossError, match=r"step 2 .*2 steps were already skipped and SOLVER\.NAN_MAX_SKIPS is 2"):
        trainer.train()
    assert trainer.skipped_steps == 2
    assert load_checkpoint(os.path.join(trainer.log_path, "nan_state"))["skipped_steps"] == 2


def test_nan_stop_is_one_error_line_with_exit_status_2(fashion_root, tmp_path, capsys, monkeypatch):
    original = BaseTrainer._batch_to_device

    def poisoned(self, data):
        batch = original(self, data)
        batch["image"] = batch["image"] * float("nan")
        return batch

    monkeypatch.setattr(BaseTrainer, "_batch_to_device", poisoned)
    assert _train_cli().main(["--cfg", str(VANILLA_CFG), *_opts(fashion_root, tmp_path)]) == 2
    _assert_one_error_line(capsys.readouterr().err, "non-finite loss at epoch 1, step 0", "nan_state", "SOLVER.LR")


def _poison_gradients(trainer: BaseTrainer, global_steps) -> None:
    """At the given global steps (0-based) the loss stays finite but the gradient of the
    student's logits is NaN, as KDSVD's SVD backward once made it (issue 23)."""
    distiller = unwrap(trainer.distiller)
    original = distiller.forward_train

    def forward_train(**kwargs):
        logits, losses = original(**kwargs)
        if trainer.global_step in global_steps:
            logits.register_hook(lambda grad: torch.full_like(grad, float("nan")))
        return logits, losses

    distiller.forward_train = forward_train


def test_non_finite_gradient_of_a_finite_loss_stops_with_one_error_line(fashion_root, tmp_path, capsys, monkeypatch):
    """Checked after backward, before the optimizer step: the saved state is the one before the step."""
    built = {}
    original_init = BaseTrainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        _poison_gradients(self, {1})
        built["trainer"] = self

    monkeypatch.setattr(BaseTrainer, "__init__", init)
    assert _train_cli().main(["--cfg", str(VANILLA_CFG), *_opts(fashion_root, tmp_path)]) == 2
    _assert_one_error_line(capsys.readouterr().err, "non-finite gradient (", "student.conv1.weight",
                           "at epoch 1, step 1", "nan_state", "SOLVER.LR")
    trainer = built["trainer"]
    saved = load_checkpoint(os.path.join(trainer.log_path, "nan_state"))
    assert saved["global_step"] == 1 and all(v == v for v in saved["non_finite_terms"].values())  # finite loss
    for name, value in saved["model"].items():
        assert torch.isfinite(value.float()).all(), name
        assert torch.equal(value, unwrap(trainer.distiller).state_dict()[name]), name  # the step was not applied


@pytest.mark.parametrize("config, trainer_name", [("vanilla/res8.yaml", "base"), ("kd/res14_res8.yaml", "dot")])
def test_non_finite_gradient_under_nan_policy_skip_leaves_everything_as_before(
        config, trainer_name, fashion_root, teacher, tmp_path):
    opts = _opts(fashion_root, tmp_path, "SOLVER.NAN_POLICY", "skip", "SOLVER.TRAINER", trainer_name,
                 "DISTILLER.TEACHER_WEIGHTS", str(teacher))
    trainer = _build(FASHION / config, opts)
    poisoned_step = 2
    _poison_gradients(trainer, {poisoned_step})
    seen = {}
    original = trainer._run_step

    def run_step(data, epoch, step):
        if trainer.global_step == poisoned_step:
            seen["before"] = (_tensors(trainer.distiller), _optimizer_tensors(trainer.optimizer))
            seen["result"] = original(data, epoch, step)
            seen["after"] = (_tensors(trainer.distiller), _optimizer_tensors(trainer.optimizer))
            return seen["result"]
        return original(data, epoch, step)

    trainer._run_step = run_step
    summary = trainer.train()
    assert summary["skipped_steps"] == 1 and summary["complete"] and seen["result"] is None
    (model_before, optim_before), (model_after, optim_after) = seen["before"], seen["after"]
    assert optim_before and set(optim_before) == set(optim_after)
    for name in model_before:
        assert torch.equal(model_before[name], model_after[name]), name
    for name in optim_before:
        assert torch.equal(optim_before[name], optim_after[name]), name
    for name, value in unwrap(trainer.distiller).student.state_dict().items():
        assert torch.isfinite(value.float()).all(), name


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    state = optimizer.state_dict()["state"]
    return {f"{p}.{k}": v.clone() for p, slots in state.items() for k, v in slots.items() if torch.is_tensor(v)}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return write_teacher_checkpoint(tmp_path_factory.mktemp("teacher") / "res14.pth", "resnet14", "fashion_mnist", 10)


@pytest.mark.parametrize("config", ["vanilla/res8.yaml", "crd/res14_res8.yaml", "ickd_online/res14_res8.yaml"])
def test_a_skipped_step_leaves_weights_buffers_and_optimizer_as_before(config, fashion_root, teacher, tmp_path, capsys):
    """Every buffer: BatchNorm statistics (student and online teacher), CRD's memory rows and constants."""
    opts = _opts(fashion_root, tmp_path, "SOLVER.NAN_POLICY", "skip", "DISTILLER.TEACHER_WEIGHTS", str(teacher),
                 "CRD.NCE.K", "16", "ICKD.BANK.CACHE_DIR", str(tmp_path / "bank"))
    trainer = _build(FASHION / config, opts)
    poisoned_step = 2  # after two real steps: the momentum buffers exist and have moved
    _poison(trainer, {poisoned_step})
    seen = {}
    original = trainer._run_step

    def run_step(data, epoch, step):
        if trainer.global_step == poisoned_step:
            seen["before"] = (_tensors(trainer.distiller), _optimizer_tensors(trainer.optimizer))
            result = original(data, epoch, step)
            seen["after"] = (_tensors(trainer.distiller), _optimizer_tensors(trainer.optimizer))
            seen["result"] = result
            return result
        return original(data, epoch, step)

    trainer._run_step = run_step
    summary = trainer.train()
    assert summary["skipped_steps"] == 1 and summary["complete"]
    (model_before, optim_before), (model_after, optim_after) = seen["before"], seen["after"]
    assert any(name.endswith("running_var") for name in model_before) and optim_before
    for name in model_before:
        assert torch.equal(model_before[name], model_after[name]), name  # bitwise, buffers included
    for name in optim_before:
        assert torch.equal(optim_before[name], optim_after[name]), name
    assert seen["result"] is None  # and so no after_step hook for it
    assert "cannot be put back" not in capsys.readouterr().out
    for name, value in unwrap(trainer.distiller).student.state_dict().items():
        assert torch.isfinite(value.float()).all(), name


def test_step_state_snapshot_restores_norm_small_and_per_sample_buffers_and_names_the_rest():
    from kdharness.engine.step_state import SMALL_NUMEL, StepStateSnapshot

    module = torch.nn.Module()
    module.bn = torch.nn.BatchNorm1d(3)
    module.register_buffer("constants", torch.tensor([1.0, -1.0]))
    module.register_buffer("memory", torch.arange(50 * 40, dtype=torch.float32).view(50, 40))  # 50 samples
    module.register_buffer("table", torch.zeros(SMALL_NUMEL + 1))
    before = {name: value.clone() for name, value in module.state_dict().items()}
    snapshot = StepStateSnapshot(module, num_samples=50)
    snapshot.take(torch.tensor([3, 7, 7]))
    module.train()
    module.bn(torch.randn(4, 3))  # running stats and num_batches_tracked move
    module.constants.fill_(float("nan"))
    module.memory[[3, 7]] = float("nan")
    module.table[0] = 1.0
    assert snapshot.restore() == ["table"]
    after = module.state_dict()
    for name in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked", "constants", "memory"):
        assert torch.equal(after[name], before[name]), name
    assert not torch.equal(after["table"], before["table"])


def test_a_skipped_step_writes_nothing_into_the_teacher_free_bank(fashion_root, tmp_path):
    """One NaN pixel in the first batch: that step is skipped and every later one trains."""
    trainer = _build(TEACHER_FREE_CFG, _opts(fashion_root, tmp_path, "SOLVER.NAN_POLICY", "skip", "SOLVER.EPOCHS", "2"))
    _poison(trainer, {0})
    summary = trainer.train()
    assert summary["skipped_steps"] == 1 and summary["complete"]
    bank = unwrap(trainer.distiller).bank.features
    assert bank.shape[0] == N_TRAIN and torch.isfinite(bank.float()).all()
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in summary["history"])


# -- §4 friction -----------------------------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write_bytes(str(tmp_path / "f"), b"x")
    finally:
        os.umask(previous)
    assert (tmp_path / "f").stat().st_mode & 0o777 == mode


def test_resume_flag_after_the_overrides_resumes_and_says_from_where(fashion_root, tmp_path, capsys):
    opts = _opts(fashion_root, tmp_path, "SOLVER.EPOCHS", "2")
    stopped = _build(VANILLA_CFG, opts)
    stopped.register_hook(SignalAt(STEPS_PER_EPOCH + 2))
    previous = os.umask(0o022)
    try:
        with pytest.raises(SystemExit):
            stopped.train()
    finally:
        os.umask(previous)
    stopped.tf_writer.close()
    for name in ("latest", "summary.json", "student_best"):
        assert Path(stopped.log_path, name).stat().st_mode & 0o777 == 0o644, name
    capsys.readouterr()
    assert _train_cli().main(["--cfg", str(VANILLA_CFG), *opts, "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"resuming from {os.path.join(stopped.log_path, 'latest')} (epoch 2, step 2" in out
    assert f"continuing with epoch 2 of 2 at step 2 of {STEPS_PER_EPOCH}" in out


def _write_summary(run: Path, seed: int, skipped: int) -> None:
    run.mkdir(parents=True)
    summary = {"complete": True, "experiment": f"kd,EXPERIMENT.SEED:{seed}", "dataset": "fashion_mnist",
               "teacher": "resnet14", "student": "resnet8", "method": "KD", "seed": seed, "best_top1": 80.0,
               "last_top1": 79.0, "history": [{"epoch": 1}], "epochs": 1, "skipped_steps": skipped}
    (run / "summary.json").write_text(json.dumps(summary))


def test_leaderboard_leaves_out_runs_with_skipped_steps_unless_asked(tmp_path):
    from kdharness.results.summaries import load_summaries

    _write_summary(tmp_path / "a", 0, skipped=0)
    _write_summary(tmp_path / "b", 1, skipped=78)
    summaries, warnings = load_summaries([str(tmp_path)])
    assert [s.seed for s in summaries] == [0]
    (warning,) = warnings
    assert "b/summary.json" in warning and "78 training steps were skipped" in warning and "--include-skipped" in warning
    summaries, warnings = load_summaries([str(tmp_path)], include_skipped=True)
    assert sorted(s.seed for s in summaries) == [0, 1] and not warnings


def _readme_commands(script: str) -> list[list[str]]:
    """The README's `python tools/<script>` command lines, as argv lists (comments dropped)."""
    import shlex

    commands = []
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith(f"python tools/{script} "):
            commands.append(shlex.split(line, comments=True)[2:])
    return commands


def test_readme_eval_examples_point_at_the_run_directory_train_writes():
    """Each `tools/eval.py --cfg C --ckpt DIR/NAME [KEY VALUE ...]` line of the README names the
    directory that `tools/train.py --cfg C [KEY VALUE ...]` (or a sweep's run with that seed) writes."""
    from kdharness.engine.build import experiment_name

    commands = _readme_commands("eval.py")
    assert commands, "README.md shows no tools/eval.py example"
    for argv in commands:
        cfg_path, ckpt = argv[argv.index("--cfg") + 1], argv[argv.index("--ckpt") + 1]
        opts = argv[argv.index("--ckpt") + 2:]
        cfg = load_config(str(REPO / cfg_path), opts)
        expected = os.path.normpath(os.path.join(cfg.LOG.PREFIX, experiment_name(cfg, opts)))
        assert os.path.normpath(os.path.dirname(ckpt)) == expected, argv


def test_sweep_prints_the_eval_command_of_each_finished_run(tmp_path, capsys):
    import shlex

    spec = importlib.util.spec_from_file_location("sweep_cli", REPO / "tools" / "sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    run_dir = tmp_path / "kd,EXPERIMENT.SEED:0"
    finish = f"import os, json; os.makedirs({str(run_dir)!r}); open(os.path.join({str(run_dir)!r}, 'summary.json'), 'w').write(json.dumps({{'complete': True}}))"
    cmd = [sys.executable, "-c", finish, "--cfg", "kd.yaml", "EXPERIMENT.SEED", "0", "DATASET.ROOT", "/data"]
    assert sweep.execute([sweep.PlannedRun(cmd, "run", "kd.yaml", 0, str(run_dir))]) == 0
    out = capsys.readouterr().out
    expected = sweep.eval_command(sweep.PlannedRun(cmd, "run", "kd.yaml", 0, str(run_dir)))
    assert expected[1] == str(REPO / "tools" / "eval.py")
    assert expected[2:] == ["--cfg", "kd.yaml", "--ckpt", str(run_dir / "student_best"),
                            "EXPERIMENT.SEED", "0", "DATASET.ROOT", "/data"]
    assert shlex.join(expected) in out
