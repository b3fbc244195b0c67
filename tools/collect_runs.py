"""Copy finished runs' summary.json files into a folder to commit, without machine paths.

    python tools/collect_runs.py output/fmnist_study docs/results/runs/fmnist_study

Each copy keeps the run's folder name and records `log_path` relative to the output root, so
`tools/leaderboard.py docs/results/runs/fmnist_study` rebuilds the same tables anywhere.
Run it again as more runs finish: only new or changed summaries are written.
"""
from __future__ import annotations

import argparse
import os
import sys

from kdharness.results.collect import collect_summaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="an output root (e.g. output/fmnist_study)")
    parser.add_argument("destination", help="where the copies go (e.g. docs/results/runs/fmnist_study)")
    parser.add_argument("--include-incomplete", action="store_true", help="also copy unfinished runs")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.source):
        print(f"error: {args.source!r} is not a directory; expected an output root holding runs", file=sys.stderr)
        return 2
    written = collect_summaries(args.source, args.destination, args.include_incomplete)
    for relative in written:
        print(f"collected {os.path.join(args.destination, relative, 'summary.json')}")
    print(f"{len(written)} summaries written to {args.destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
