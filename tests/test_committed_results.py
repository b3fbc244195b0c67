"""The tables in docs/results/*.md come from the committed run summaries, not from hand.

Each doc quotes `tools/leaderboard.py` rows verbatim; these tests rerun the leaderboard on
`docs/results/runs/` and require every row it prints to appear in the doc unchanged.
"""
import glob
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "docs/results/runs"


def run_leaderboard(*args: str) -> str:
    """What `tools/leaderboard.py ARGS` prints on stdout (a non-zero exit fails the test)."""
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "leaderboard.py"), *args], capture_output=True, text=True, check=True
    ).stdout


def leaderboard_rows(*args: str) -> list[str]:
    return [line for line in run_leaderboard(*args).splitlines() if line.startswith(("| resnet14 |", "| fashion_mnist |"))]


def test_leaderboard_of_committed_runs_matches_the_2026_11_results_doc():
    table = leaderboard_rows(str(RUNS / "fashion_mnist"))
    assert len(table) == 1
    assert table[0] in (REPO / "docs/results/fashion_mnist_2026-11.md").read_text()
    assert "± 0.30 (3)" in table[0]  # ICKD+DKD over three seeds


REPORT = REPO / "configs" / "fashion_mnist_study" / "report.txt"
OUTPUT_FLAGS = ("--plot", "--sensitivity", "--output")


def report_commands() -> dict[str, list[str]]:
    """The `NAME: ARGUMENTS` lines of the study's report list, as the script's `eval` would split them."""
    commands = {}
    for line in REPORT.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, arguments = line.partition(": ")
            commands[name] = shlex.split(arguments)
    return commands


def expand(arguments: list[str], output_dir: Path) -> list[str]:
    """Globs against the repository root, as bash expands them there; outputs redirected to `output_dir`."""
    expanded = []
    for index, token in enumerate(arguments):
        if index and arguments[index - 1] == "--sensitivity":  # a folder
            expanded.append(str(output_dir))
        elif index and arguments[index - 1] in OUTPUT_FLAGS:
            expanded.append(str(output_dir / Path(token).name))
        elif any(char in token for char in "*?["):
            matches = sorted(glob.glob(str(REPO / token)))
            assert matches, f"{REPORT.name}: {token!r} matches no committed run"
            expanded += matches
        elif "/" in token:
            expanded.append(str(REPO / token))
        else:
            expanded.append(token)
    return expanded


def test_report_list_names_every_study_table_and_the_script_reads_it():
    assert len(report_commands()) == 15
    assert "report.txt" in (REPO / "scripts" / "fashion_mnist_study.sh").read_text()


@pytest.mark.parametrize("name", sorted(report_commands()))
def test_fashion_mnist_study_tables_are_the_leaderboard_of_the_committed_runs(name: str, tmp_path: Path):
    arguments = report_commands()[name]
    out = run_leaderboard(*expand(arguments, tmp_path))
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert len(rows) >= 2, f"the leaderboard printed no table for {name}:\n{out}"
    doc = (REPO / "docs/results/fashion_mnist.md").read_text()
    missing = [row for row in rows if row not in doc]
    assert not missing, f"{name}: rows not in docs/results/fashion_mnist.md (rerun the report and paste):\n" + "\n".join(missing)
    written = {path.name for path in tmp_path.iterdir()}
    for flag, expected in (("--plot", {"fashion_mnist.png"}), ("--sensitivity", {"sensitivity_fig4.png", "sensitivity_fig5.png", "ickd_all_fig2.png"})):
        if flag in arguments:
            assert written >= expected, f"{name}: {flag} wrote {sorted(written)}"
