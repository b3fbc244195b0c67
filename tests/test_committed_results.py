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


# Each study (configs/<study>/report.txt, read by its script's `report` phase too): its doc, the
# number of entries of its list, its script.
STUDIES = {
    "fashion_mnist_study": ("docs/results/fashion_mnist.md", 15, "scripts/fashion_mnist_study.sh"),
    "fashion_mnist_converged": ("docs/results/fashion_mnist_converged.md", 12, "scripts/fashion_mnist_converged_study.sh"),
    "fashion_mnist_scenes": ("docs/results/fashion_mnist_scenes.md", 13, "scripts/fashion_mnist_scenes_study.sh"),
}
OUTPUT_FLAGS = ("--plot", "--curves", "--sensitivity", "--output")
FIGURES = {"--plot": None, "--curves": None,
           "--sensitivity": {"sensitivity_fig4.png", "sensitivity_fig5.png", "ickd_all_fig2.png"}}


def report_list(study: str) -> Path:
    return REPO / "configs" / study / "report.txt"


def report_commands(study: str) -> dict[str, list[str]]:
    """The `NAME: ARGUMENTS` lines of a study's report list, as scripts/run_report.sh's `eval` would split them."""
    commands = {}
    for line in report_list(study).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, arguments = line.partition(": ")
            commands[name] = shlex.split(arguments)
    return commands


def expand(arguments: list[str], output_dir: Path, list_name: str) -> list[str]:
    """Globs against the repository root, as bash expands them there; outputs redirected to `output_dir`."""
    expanded = []
    for index, token in enumerate(arguments):
        if index and arguments[index - 1] == "--sensitivity":  # a folder
            expanded.append(str(output_dir))
        elif index and arguments[index - 1] in OUTPUT_FLAGS:
            expanded.append(str(output_dir / Path(token).name))
        elif "/" in token and any(char in token for char in "*?["):  # a path pattern (a column name may hold "[")
            matches = sorted(glob.glob(str(REPO / token)))
            assert matches, f"{list_name}: {token!r} matches no committed run"
            expanded += matches
        elif "/" in token:
            expanded.append(str(REPO / token))
        else:
            expanded.append(token)
    return expanded


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_report_list_names_every_study_table_and_the_script_reads_it(study: str):
    assert len(report_commands(study)) == STUDIES[study][1]
    script = (REPO / STUDIES[study][2]).read_text()
    assert "bash scripts/run_report.sh $C/report.txt" in script and f"C=configs/{study}" in script


@pytest.mark.parametrize("study, name", [(study, name) for study in sorted(STUDIES) for name in sorted(report_commands(study))])
def test_study_tables_are_the_leaderboard_of_the_committed_runs(study: str, name: str, tmp_path: Path):
    arguments = report_commands(study)[name]
    out = run_leaderboard(*expand(arguments, tmp_path, f"configs/{study}/report.txt"))
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert len(rows) >= 2, f"the leaderboard printed no table for {name}:\n{out}"
    doc_path = STUDIES[study][0]
    doc = (REPO / doc_path).read_text()
    missing = [row for row in rows if row not in doc]
    assert not missing, f"{name}: rows not in {doc_path} (rerun the report and paste):\n" + "\n".join(missing)
    written = {path.name for path in tmp_path.iterdir()}
    for flag, expected in FIGURES.items():
        if flag in arguments:
            wanted = expected or {Path(arguments[arguments.index(flag) + 1]).name}
            assert written >= wanted, f"{name}: {flag} wrote {sorted(written)}"
            assert (REPO / arguments[arguments.index(flag) + 1]).exists() or flag == "--sensitivity", \
                f"{name}: the committed figure {arguments[arguments.index(flag) + 1]} is missing"
