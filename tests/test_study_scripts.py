"""The studies' shared shell helpers: scripts/study_teacher.sh, scripts/restore_runs.sh and scripts/run_report.sh."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bash(*args: str) -> subprocess.CompletedProcess:
    # python3 on PATH must be this interpreter (run_report.sh calls python3 tools/leaderboard.py)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    return subprocess.run(["bash", *args], capture_output=True, text=True, env=env, cwd=REPO)


def test_study_teacher_copies_the_committed_weights_then_leaves_the_run_alone(tmp_path: Path) -> None:
    committed, run = tmp_path / "committed", tmp_path / "run"
    committed.mkdir()
    (committed / "student_best").write_bytes(b"weights")
    (committed / "summary.json").write_text(json.dumps({"complete": True}))
    missing_config = str(tmp_path / "no_such_config.yaml")  # training would fail on it: it must not be used
    first = bash("scripts/study_teacher.sh", missing_config, str(run), str(committed))
    assert first.returncode == 0, first.stderr
    assert "using the committed one" in first.stdout
    assert (run / "student_best").read_bytes() == b"weights" and (run / "summary.json").exists()
    (committed / "student_best").write_bytes(b"newer")  # a complete run is kept as it is
    second = bash("scripts/study_teacher.sh", missing_config, str(run), str(committed))
    assert second.returncode == 0, second.stderr
    assert (run / "student_best").read_bytes() == b"weights" and second.stdout == ""


def test_study_teacher_trains_when_nothing_is_committed(tmp_path: Path) -> None:
    # no committed weights and no complete run: it calls tools/train.py, whose error names the config
    result = bash("scripts/study_teacher.sh", str(tmp_path / "no_such_config.yaml"), str(tmp_path / "run"), str(tmp_path / "none"))
    assert result.returncode != 0 and "no_such_config.yaml" in result.stderr


def test_run_report_runs_every_line_of_the_list(tmp_path: Path) -> None:
    runs = tmp_path / "runs" / "p" / "kd,EXPERIMENT.SEED:0"
    runs.mkdir(parents=True)
    (runs / "summary.json").write_text(json.dumps({
        "complete": True, "experiment": "kd,EXPERIMENT.SEED:0", "dataset": "cifar100", "method": "KD",
        "distiller": "KD", "teacher": "resnet32x4", "student": "resnet8x4", "seed": 0, "epochs": 1,
        "best_top1": 70.5, "last_top1": 70.5, "history": [{"epoch": 1, "wall_time_s": 1.0}], "wall_time_s": 60.0,
    }))
    listing = tmp_path / "report.txt"
    listing.write_text(f"# a comment\n\ntable: {tmp_path / 'runs'} --no-reference\ncost: {tmp_path / 'runs'} --cost\n")
    result = bash("scripts/run_report.sh", str(listing))
    assert result.returncode == 0, result.stderr
    assert "==> table <==" in result.stdout and "==> cost <==" in result.stdout
    assert "70.50 ± – (1)" in result.stdout and "| cifar100 | resnet32x4 | resnet8x4 | KD | 1 | 1.0 | 1 |" in result.stdout
    missing = bash("scripts/run_report.sh", str(tmp_path / "absent.txt"))
    assert missing.returncode == 2 and "no report list" in missing.stderr


def test_restore_runs_copies_committed_runs_without_overwriting_and_skips_absent_folders(tmp_path: Path) -> None:
    first, second, out = tmp_path / "a", tmp_path / "b", tmp_path / "output"
    (first / "kd,SEED:0").mkdir(parents=True)
    (first / "kd,SEED:0" / "summary.json").write_text("committed kd")
    (second / "dkd,SEED:0").mkdir(parents=True)
    (second / "dkd,SEED:0" / "summary.json").write_text("committed dkd")
    (out / "kd,SEED:0").mkdir(parents=True)
    (out / "kd,SEED:0" / "summary.json").write_text("local kd")  # a run here wins over the committed one
    result = bash("scripts/restore_runs.sh", str(out), str(first), str(tmp_path / "absent"), str(second))
    assert result.returncode == 0, result.stderr
    assert (out / "kd,SEED:0" / "summary.json").read_text() == "local kd"
    assert (out / "dkd,SEED:0" / "summary.json").read_text() == "committed dkd"
    nothing = bash("scripts/restore_runs.sh", str(tmp_path / "fresh"), str(tmp_path / "absent"))
    assert nothing.returncode == 0 and not (tmp_path / "fresh").exists()
