"""Calibrate the test suite's "must learn" thresholds: every seed x thread count x float kernel path.

    nice -n 10 python scripts/calibrate_learning_tests.py --seeds 10 --json calibration.json

A learning test (tests/test_ickd_train.py) asserts that a short run beats a threshold. The
run's weights depend on float summation order, which changes with the torch thread count and
with the kernels the CPU gets (MKL's AVX-512 / AVX2 / SSE paths, oneDNN's, ATen's vectorised
loops), so a threshold is only portable if it sits far below the minimum over all of them.
This script runs the test's own setup (``tests/learning_setups.py``: same fixture, budget and
configs, in-process through ``build_trainer`` as ``tools/train.py`` runs them) once per

- seed s in 0..N-1 (the fixture's sampling seed and EXPERIMENT.SEED),
- torch thread count in --threads (default 1 and 2),
- kernel path in --paths: ``default`` (what the CPU picks) and ``portable``
  (``MKL_ENABLE_INSTRUCTIONS=SSE4_2``, ``ONEDNN_MAX_CPU_ISA=SSE41``, ``ATEN_CPU_CAPABILITY=default``:
  the oldest code path of each library, a different summation order from any AVX-512 or AVX2 one),

each in its own process (the variables are read at start-up), and prints min / median / max
per setup, with the machine, so the numbers can go into docs/reliability.md.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"

# The second code path, also used by scripts/test.sh for its numerics pass.
PATHS = {
    "default": {},
    "portable": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default"},
}


def run_one(seed: int) -> dict:
    """Teacher then ICKD+KD student for one seed, in this process; their per-epoch accuracies."""
    sys.path.insert(0, str(TESTS))
    import torch

    import learning_setups as setup
    from harness_utils import run_config

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    with tempfile.TemporaryDirectory(prefix="calibrate_") as tmp:
        tmp_path = Path(tmp)
        root = setup.write_texture_fixture(tmp_path / "data", seed=seed)
        start = time.perf_counter()
        teacher = run_config(setup.TEACHER_CFG, setup.teacher_opts(root, tmp_path / "teacher", seed))
        middle = time.perf_counter()
        weights = os.path.join(teacher["log_path"], "student_best")
        student = run_config(setup.ICKD_KD_CFG, setup.student_opts(root, tmp_path / "runs", weights, tmp_path / "bank", seed))
        end = time.perf_counter()
    return {
        "seed": seed,
        "teacher": setup.accuracies(teacher),
        "ickd_kd": setup.accuracies(student),
        "teacher_best": teacher["best_top1"],
        "ickd_kd_last": student["last_top1"],
        "seconds": [round(middle - start, 1), round(end - middle, 1)],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def spawn(seed: int, threads: int, path: str) -> dict:
    # PASSIVE: idle OpenMP threads sleep instead of spinning (a busy machine stays usable); the
    # work split between threads, hence the summation order, depends on the count alone.
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE", **PATHS[path])
    for key in set().union(*PATHS.values()) - set(PATHS[path]):
        env.pop(key, None)  # "default" means the library's own choice, whatever the caller's shell set
    cmd = [sys.executable, __file__, "--worker", str(seed)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"seed {seed}, {threads} threads, path {path}: exit {done.returncode}\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(threads=threads, path=path)
    return result


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summarise(results: list[dict]) -> dict:
    """min / median / max of the teacher's best and the student's last top-1, overall and per cell."""
    def stats(values: list[float]) -> dict:
        return {"n": len(values), "min": min(values), "median": statistics.median(values), "max": max(values)}

    table = {"all": {key: stats([r[field] for r in results]) for key, field in (("teacher", "teacher_best"), ("ickd_kd", "ickd_kd_last"))}}
    for threads in sorted({r["threads"] for r in results}):
        for path in sorted({r["path"] for r in results}):
            cell = [r for r in results if r["threads"] == threads and r["path"] == path]
            if cell:
                table[f"{threads} thread(s), {path}"] = {
                    "teacher": stats([r["teacher_best"] for r in cell]),
                    "ickd_kd": stats([r["ickd_kd_last"] for r in cell]),
                }
    return table


def print_summary(summary: dict) -> None:
    for name, cell in summary.items():
        print(f"{name:24s} " + "  ".join(f"{key} min {s['min']:.1f} median {s['median']:.1f} max {s['max']:.1f} (n={s['n']})"
                                          for key, s in cell.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default 10)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts (default 1 2)")
    parser.add_argument("--paths", nargs="+", choices=sorted(PATHS), default=sorted(PATHS), help="kernel paths (default both)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each its own process (default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write every run and the summary to FILE")
    parser.add_argument("--log", metavar="FILE.jsonl", help="append each run to FILE as it finishes (a stopped calibration keeps its runs)")
    parser.add_argument("--summarise", metavar="FILE.jsonl", help="print the summary of the runs in FILE and exit")
    parser.add_argument("--worker", type=int, metavar="SEED", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(run_one(args.worker)))
        return 0
    if args.summarise:
        runs = [json.loads(line) for line in Path(args.summarise).read_text().splitlines() if line.strip()]
        print_summary(summarise(runs))
        return 0

    started = time.perf_counter()
    cells = [(seed, threads, path) for seed in range(args.seeds) for threads in args.threads for path in args.paths]
    results = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for result in pool.map(lambda cell: spawn(*cell), cells):
            results.append(result)
            if args.log:
                with open(args.log, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(result) + "\n")
            print(f"seed {result['seed']} threads {result['threads']} {result['path']:8s} teacher {result['teacher']} "
                  f"ICKD+KD {result['ickd_kd']} ({result['seconds'][0]} s + {result['seconds'][1]} s, "
                  f"ATen {result['cpu_capability']})", flush=True)
    summary = summarise(results)
    record = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": __import__("torch").__version__,
        "paths": {name: PATHS[name] for name in args.paths},
        "wall_s": round(time.perf_counter() - started, 1),
        "summary": summary,
        "runs": results,
    }
    print(json.dumps({k: record[k] for k in ("date", "cpu", "cpu_count", "torch", "wall_s")}))
    print_summary(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
