"""tools/collect_runs.py: committed summaries carry no machine path and read like the runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kdharness.results.collect import collect_summaries

REPO = Path(__file__).resolve().parents[1]


def _run(root: Path, name: str, complete: bool = True) -> Path:
    folder = root / "proj" / name
    folder.mkdir(parents=True)
    summary = {"complete": complete, "log_path": str(folder.resolve()), "best_top1": 71.5, "seed": 0}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_copies_complete_runs_with_relative_log_path(tmp_path: Path) -> None:
    out = tmp_path / "output"
    _run(out, "kd,EXPERIMENT.SEED:0")
    _run(out, "kd,EXPERIMENT.SEED:1", complete=False)
    _run(out, "kd,EXPERIMENT.SEED:0.old-20261201-120000")
    dest = tmp_path / "docs" / "runs"
    assert collect_summaries(str(out), str(dest)) == ["proj/kd,EXPERIMENT.SEED:0"]
    copied = json.loads((dest / "proj" / "kd,EXPERIMENT.SEED:0" / "summary.json").read_text())
    assert copied == {"complete": True, "log_path": "proj/kd,EXPERIMENT.SEED:0", "best_top1": 71.5, "seed": 0}
    assert str(tmp_path) not in (dest / "proj" / "kd,EXPERIMENT.SEED:0" / "summary.json").read_text()
    assert not (dest / "proj" / "kd,EXPERIMENT.SEED:1").exists()  # unfinished
    assert not list(dest.glob("proj/*.old-*"))  # set aside by --start-over
    # A second pass writes nothing new; a changed summary is rewritten.
    assert collect_summaries(str(out), str(dest)) == []
    summary_path = out / "proj" / "kd,EXPERIMENT.SEED:0" / "summary.json"
    summary_path.write_text(summary_path.read_text().replace("71.5", "72.0"))
    assert collect_summaries(str(out), str(dest)) == ["proj/kd,EXPERIMENT.SEED:0"]


def test_command_line_names_a_missing_source(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "tools" / "collect_runs.py"), str(tmp_path / "nope"),
                             str(tmp_path / "dest")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and "nope" in result.stderr
