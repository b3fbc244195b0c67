"""The committed Fashion-MNIST runs reproduce the table published in docs/results/fashion_mnist_2026-11.md."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_leaderboard_of_committed_runs_matches_the_results_doc():
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "leaderboard.py"), str(REPO / "docs/results/runs/fashion_mnist")],
        capture_output=True, text=True, check=True,
    ).stdout
    table = [line for line in out.splitlines() if line.startswith("| resnet14 | resnet8 |")]
    assert len(table) == 1
    assert table[0] in (REPO / "docs/results/fashion_mnist_2026-11.md").read_text()
    assert "± 0.30 (3)" in table[0]  # ICKD+DKD over three seeds
