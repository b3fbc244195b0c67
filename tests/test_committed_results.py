"""The tables in docs/results/*.md come from the committed run summaries, not from hand.

Each doc quotes `tools/leaderboard.py` rows verbatim; these tests rerun the leaderboard on
`docs/results/runs/` and require every row it prints to appear in the doc unchanged.
"""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "docs/results/runs"


def leaderboard_rows(*args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "leaderboard.py"), *args], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if line.startswith(("| resnet14 |", "| fashion_mnist |"))]


def test_leaderboard_of_committed_runs_matches_the_2026_11_results_doc():
    table = leaderboard_rows(str(RUNS / "fashion_mnist"))
    assert len(table) == 1
    assert table[0] in (REPO / "docs/results/fashion_mnist_2026-11.md").read_text()
    assert "± 0.30 (3)" in table[0]  # ICKD+DKD over three seeds


def _runs(folder: str, pattern: str = "*") -> list[str]:
    return sorted(str(path) for path in (RUNS / folder).glob(pattern) if path.is_dir())


# The commands of `scripts/fashion_mnist_study.sh report` whose rows docs/results/fashion_mnist.md quotes.
STUDY_TABLES = {
    "main table": lambda: [str(RUNS / "fmnist_study")],
    "pre-registered comparisons": lambda: [
        str(RUNS / "fmnist_study"), "--compare", "KD", "vanilla", "--compare", "ICKD+KD", "KD", "--compare", "ICKD+DKD", "DKD",
        "--compare", "ICKD", "vanilla", "--compare", "IC-KD-all+KD", "ICKD+KD",
    ],
    "exploratory comparisons": lambda: [
        str(RUNS / "fmnist_study"), "--compare", "IC-KD-all+KD", "KD", "--compare", "ICKD", "KD", "--compare", "DKD", "KD",
        "--compare", "CRD", "KD", "--compare", "CRD", "vanilla",
    ],
    "paradigms": lambda: [*_runs("fmnist_paradigms"), *_runs("fmnist_study", "vanilla_res8,*"), "--compare-ickd"],
    "variants": lambda: [
        *_runs("fmnist_variants"), *_runs("fmnist_study", "ickd_kd_res14_res8,*"), *_runs("fmnist_study", "kd_res14_res8,*"),
        "--by", "label", "--compare", "ickd_kd_res14_res8,ICKD.QUERY:clean", "ickd_kd_res14_res8",
        "--compare", "ickd_kd_res14_res8,ICKD.QUERY:clean", "kd_res14_res8",
        "--compare", "ickd_kd_res14_res8,ICKD.PICD_WEIGHT:2.0", "ickd_kd_res14_res8",
        "--compare", "ickd_kd_res14_res8,ICKD.PICD_WEIGHT:2.0", "kd_res14_res8",
    ],
}


@pytest.mark.parametrize("name", sorted(STUDY_TABLES))
def test_fashion_mnist_study_tables_are_the_leaderboard_of_the_committed_runs(name: str):
    args = STUDY_TABLES[name]()
    folder = {"paradigms": "fmnist_paradigms", "variants": "fmnist_variants"}.get(name)
    if folder and not _runs(folder):
        pytest.skip(f"no committed runs in docs/results/runs/{folder} yet")
    rows = leaderboard_rows(*args)
    assert rows, f"the leaderboard printed no rows for {name}"
    doc = (REPO / "docs/results/fashion_mnist.md").read_text()
    missing = [row for row in rows if row not in doc]
    assert not missing, f"{name}: rows not in docs/results/fashion_mnist.md (rerun the report and paste):\n" + "\n".join(missing)


def test_fashion_mnist_sensitivity_tables_are_the_leaderboard_of_the_committed_runs(tmp_path):
    if not _runs("fmnist_sensitivity"):
        pytest.skip("no committed runs in docs/results/runs/fmnist_sensitivity yet")
    centre = [*_runs("fmnist_study", "ickd_kd_res14_res8,EXPERIMENT.SEED:[01]"), *_runs("fmnist_study", "kd_res14_res8,EXPERIMENT.SEED:[01]")]
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "leaderboard.py"), *_runs("fmnist_sensitivity"), *_runs("fmnist_fig2"), *centre,
         "--sensitivity", str(tmp_path)],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "best top-1" not in line]
    assert len(rows) >= 24, out  # six keys x four values at least
    doc = (REPO / "docs/results/fashion_mnist.md").read_text()
    missing = [row for row in rows if row not in doc]
    assert not missing, "sensitivity rows not in docs/results/fashion_mnist.md:\n" + "\n".join(missing)
    assert {path.name for path in tmp_path.iterdir()} >= {"sensitivity_fig4.png", "sensitivity_fig5.png"}
