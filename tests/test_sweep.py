"""tools/sweep.py: which runs are skipped, resumed or started, without training anything.

Planning is a function of the run directories on disk; execution is checked with stand-in
commands (tiny Python one-liners) instead of tools/train.py.
"""
from __future__ import annotations

import fcntl
import json
import sys
from pathlib import Path

import pytest

from test_results import ROOT, load_tool

sweep = load_tool("sweep")
TRAIN = str(ROOT / "tools" / "train.py")


def fake_run_dirs(root: Path):
    """run_dir_fn stand-in: <root>/<config stem>,<overrides>, like experiment_name's shape."""

    def run_dir(config: str, opts) -> str:
        extra = ",".join(f"{k}:{v}" for k, v in zip(opts[::2], opts[1::2]))
        return str(root / f"{Path(config).stem},{extra}")

    return run_dir


def make_state(run_dir: Path, summary: bool | None = None, checkpoint: str | None = None) -> None:
    run_dir.mkdir(parents=True)
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps({"complete": summary}))
    if checkpoint:
        (run_dir / checkpoint).write_bytes(b"ckpt")


def test_plan_skips_complete_resumes_checkpointed_and_starts_the_rest(tmp_path):
    base = tmp_path / "out"
    make_state(base / "kd,EXPERIMENT.SEED:0,SOLVER.EPOCHS:2", summary=True, checkpoint="latest")
    make_state(base / "kd,EXPERIMENT.SEED:1,SOLVER.EPOCHS:2", summary=False, checkpoint="latest")
    make_state(base / "kd,EXPERIMENT.SEED:2,SOLVER.EPOCHS:2", checkpoint="epoch_40")  # killed before any summary
    make_state(base / "dkd,EXPERIMENT.SEED:0,SOLVER.EPOCHS:2", summary=False)  # checkpoints deleted by hand
    (base / "dkd,EXPERIMENT.SEED:1,SOLVER.EPOCHS:2").mkdir()
    (base / "dkd,EXPERIMENT.SEED:1,SOLVER.EPOCHS:2" / "summary.json").write_text("{trunc")  # unreadable: not complete

    plan = sweep.plan_sweep(["kd.yaml", "dkd.yaml"], [0, 1, 2], ["SOLVER.EPOCHS", "2"], python="py",
                            run_dir_fn=fake_run_dirs(base))
    assert [(run.config, run.seed, run.action) for run in plan] == [
        ("kd.yaml", 0, "skip"),
        ("kd.yaml", 1, "resume"),
        ("kd.yaml", 2, "resume"),
        ("dkd.yaml", 0, "run"),
        ("dkd.yaml", 1, "run"),
        ("dkd.yaml", 2, "run"),
    ]
    assert plan[1].cmd == ["py", TRAIN, "--cfg", "kd.yaml", "--resume", "EXPERIMENT.SEED", "1", "SOLVER.EPOCHS", "2"]
    # an earlier attempt left a summary but no checkpoint: train.py sets it aside (it refuses otherwise)
    assert plan[3].cmd == ["py", TRAIN, "--cfg", "dkd.yaml", "--start-over", "EXPERIMENT.SEED", "0", "SOLVER.EPOCHS", "2"]
    assert plan[5].cmd == ["py", TRAIN, "--cfg", "dkd.yaml", "EXPERIMENT.SEED", "2", "SOLVER.EPOCHS", "2"]  # nothing there
    assert plan[3].run_dir == str(base / "dkd,EXPERIMENT.SEED:0,SOLVER.EPOCHS:2")


def test_plan_reports_a_run_held_by_a_live_trainer_as_busy(tmp_path):
    run_dir = tmp_path / "kd,EXPERIMENT.SEED:0"
    make_state(run_dir, summary=False, checkpoint="latest")
    with open(run_dir / "run.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what BaseTrainer holds while training
        (run,) = sweep.plan_sweep(["kd.yaml"], [0], run_dir_fn=fake_run_dirs(tmp_path))
        assert run.action == "busy"
    (run,) = sweep.plan_sweep(["kd.yaml"], [0], run_dir_fn=fake_run_dirs(tmp_path))
    assert run.action == "resume"  # the lock file outlives the trainer; only a held lock counts


def test_plan_rejects_bad_overrides_and_clashing_run_dirs(tmp_path):
    run_dir_fn = fake_run_dirs(tmp_path)
    with pytest.raises(sweep.SweepError, match="KEY VALUE pairs"):
        sweep.plan_sweep(["kd.yaml"], [0], ["SOLVER.EPOCHS"], run_dir_fn=run_dir_fn)
    with pytest.raises(sweep.SweepError, match="EXPERIMENT.SEED is set by --seeds"):
        sweep.plan_sweep(["kd.yaml"], [0], ["EXPERIMENT.SEED", "3"], run_dir_fn=run_dir_fn)
    with pytest.raises(sweep.SweepError, match="a.yaml .*b.yaml .*both write to"):
        sweep.plan_sweep(["x/a.yaml", "y/b.yaml"], [0], run_dir_fn=lambda cfg, opts: str(tmp_path / "same"))
    assert len(sweep.plan_sweep(["kd.yaml", "kd.yaml"], [1, 1], run_dir_fn=run_dir_fn)) == 1  # repeats collapse


def test_split_overrides():
    assert sweep.split_overrides(["--cfg", "a.yaml", "b.yaml", "--seeds", "0", "1", "SOLVER.EPOCHS", "2"]) == (
        ["--cfg", "a.yaml", "b.yaml", "--seeds", "0", "1"], ["SOLVER.EPOCHS", "2"])
    assert sweep.split_overrides(["--cfg", "a.yaml", "--", "SOLVER.LR", "0.1"]) == (["--cfg", "a.yaml"], ["SOLVER.LR", "0.1"])
    assert sweep.split_overrides(["--cfg", "a.yaml", "--dry-run"]) == (["--cfg", "a.yaml", "--dry-run"], [])


def _finish(run_dir: Path) -> str:
    """Python code for a stand-in trainer that completes `run_dir`."""
    return (f"import json, pathlib; d = pathlib.Path({str(run_dir)!r}); d.mkdir(parents=True, exist_ok=True); "
            "(d / 'summary.json').write_text(json.dumps({'complete': True}))")


def test_execute_reports_failures_and_continues(tmp_path, capsys):
    done, ok, crash, silent = (tmp_path / name for name in ("done", "ok", "crash", "silent"))
    make_state(done, summary=True)
    py = sys.executable
    plan = [
        sweep.PlannedRun([py, "-c", "raise SystemExit(3)"], "skip", "done.yaml", 0, str(done)),
        sweep.PlannedRun([py, "-c", "raise SystemExit(3)"], "run", "crash.yaml", 0, str(crash)),
        sweep.PlannedRun([py, "-c", _finish(ok)], "run", "ok.yaml", 1, str(ok)),
        sweep.PlannedRun([py, "-c", "pass"], "run", "silent.yaml", 2, str(silent)),
    ]
    assert sweep.execute(plan) == 1
    out = capsys.readouterr().out
    assert "[1/4] done.yaml seed 0: skipped (complete)" in out
    assert "[2/4] crash.yaml seed 0: FAILED (exit 3)" in out
    assert "[3/4] ok.yaml seed 1: ran in 0s" in out or "[3/4] ok.yaml seed 1: ran in 1s" in out
    assert "silent.yaml seed 2: FAILED (exit 0 but" in out  # success claimed, no complete summary
    assert "sweep: 4 runs: 1 ran, 0 resumed, 1 skipped, 2 failed" in out
    assert "failed: crash.yaml seed 0 (exit 3)" in out
    assert sweep.execute(plan[:1] + plan[2:3]) == 0  # a rerun skips what is now complete


def test_dry_run_with_real_configs_uses_train_py_run_directory(tmp_path, capsys):
    """Integration: the run directory comes from load_config + experiment_name, as in train.py."""
    config = tmp_path / "kd.yaml"
    text = (ROOT / "configs/cifar100/kd/res32x4_res8x4.yaml").read_text()
    config.write_text(text + f"LOG:\n  PREFIX: {str(tmp_path / 'out')!r}\n")
    finished = tmp_path / "out" / "cifar100_baselines" / "kd,res32x4_res8x4,EXPERIMENT.SEED:0,SOLVER.EPOCHS:2"
    make_state(finished, summary=True)

    code = sweep.main(["--cfg", str(config), "--seeds", "0", "1", "--dry-run", "SOLVER.EPOCHS", "2"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"# [1/2] {config} seed 0: skip (complete) - {finished}"
    assert lines[1].startswith("# [2/2]") and lines[1].endswith(
        str(tmp_path / "out" / "cifar100_baselines" / "kd,res32x4_res8x4,EXPERIMENT.SEED:1,SOLVER.EPOCHS:2"))
    assert lines[2].endswith(f"tools/train.py --cfg {config} EXPERIMENT.SEED 1 SOLVER.EPOCHS 2")
    assert len(lines) == 3  # commands only: nothing ran
    assert sweep.main(["--cfg", str(tmp_path / "missing.yaml"), "--dry-run"]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_a_sweep_names_the_file_of_every_config_it_refuses(tmp_path, capsys):
    """A bad value or name in one of several configs: each refused file is named, and nothing runs."""
    good = tmp_path / "good.yaml"
    good.write_text((ROOT / "configs/cifar100/kd/res32x4_res8x4.yaml").read_text()
                    + f"LOG:\n  PREFIX: {str(tmp_path / 'out')!r}\n")
    bad_value = tmp_path / "bad_value.yaml"
    bad_value.write_text(good.read_text().replace("LR: 0.05", "LR: -0.05"))
    bad_name = tmp_path / "bad_name.yaml"
    bad_name.write_text(good.read_text().replace('TYPE: "KD"', 'TYPE: "KDD"'))
    assert "LR: -0.05" in bad_value.read_text() and '"KDD"' in bad_name.read_text()

    code = sweep.main(["--cfg", str(good), str(bad_value), str(bad_name), "--seeds", "0", "1", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: 2 of 3 configs refused"), err
    assert f"{bad_value}: SOLVER.LR = -0.05" in err and f"{bad_name}: DISTILLER.TYPE = 'KDD'" in err, err
    assert f"{good}:" not in err and "Traceback" not in err
