"""Copy finished runs' summary.json files into a folder meant to be committed.

A run's summary records where it ran (`log_path`, absolute on that machine). A committed
copy must not carry one machine's paths, so the copy records `log_path` relative to the
output root it was collected from; everything else is kept byte-for-byte in meaning, so the
leaderboard reads the copies exactly as it reads the runs.
"""
from __future__ import annotations

import json
import os
from typing import Any

from kdharness.engine.checkpoint import atomic_write_bytes

SUMMARY = "summary.json"


def portable_summary(summary: dict[str, Any], output_root: str, run_dir: str) -> dict[str, Any]:
    """`summary` with `log_path` made relative to `output_root`."""
    copy = dict(summary)
    copy["log_path"] = os.path.relpath(os.path.abspath(run_dir), os.path.abspath(output_root))
    return copy


def collect_summaries(source: str, destination: str, include_incomplete: bool = False) -> list[str]:
    """Copy every complete run's summary.json under `source` to the same relative place under
    `destination`; return the relative run folders written (unchanged copies are not rewritten).

    Runs set aside by ``--start-over`` (``<run>.old-<timestamp>``) are skipped: they are not
    part of any result.
    """
    written = []
    for folder, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if ".old-" not in d)
        if SUMMARY not in files:
            continue
        with open(os.path.join(folder, SUMMARY), encoding="utf-8") as handle:
            summary = json.load(handle)
        if not summary.get("complete") and not include_incomplete:
            continue
        relative = os.path.relpath(folder, source)
        text = json.dumps(portable_summary(summary, source, folder), indent=2, sort_keys=True) + "\n"
        target = os.path.join(destination, relative, SUMMARY)
        if os.path.exists(target):
            with open(target, encoding="utf-8") as handle:
                if handle.read() == text:
                    continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        atomic_write_bytes(target, text.encode("utf-8"))
        written.append(relative)
    return written
