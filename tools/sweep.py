"""Run every config x seed, resumably: `python tools/sweep.py --cfg A.yaml B.yaml --seeds 0 1 2 [KEY VALUE ...]`.

Each run is its own `python tools/train.py --cfg X EXPERIMENT.SEED s KEY VALUE ...`
process, so one crash does not end the sweep; failures are listed at the end and make
the exit status non-zero. Running the same command again continues an interrupted
sweep: runs whose summary.json says complete are skipped, runs with a checkpoint are
continued with --resume, the rest start fresh (with --start-over where an earlier attempt
left files but no checkpoint: train.py moves them to `<run dir>.old-<timestamp>`).
"""
from __future__ import annotations

import argparse
import fcntl
import glob
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Callable, NamedTuple, Sequence, TextIO

from kdharness.engine.trainer import EXIT_RUN_DIRECTORY_LOCKED

TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
SEED_KEY = "EXPERIMENT.SEED"
# An override key such as SOLVER.EPOCHS: where the config list ends and KEY VALUE pairs begin.
_OVERRIDE_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")

_TRAILING_FLAGS = ("--dry-run", "-h", "--help")

SKIP, BUSY, RESUME, RUN = "skip", "busy", "resume", "run"


class PlannedRun(NamedTuple):
    """One training process of the sweep: its command and what the sweep will do with it."""

    cmd: list[str]
    action: str  # skip (complete) | busy (another process holds it) | resume | run
    config: str
    seed: int
    run_dir: str


class SweepError(ValueError):
    """A sweep that cannot be planned (bad config, clashing run directories)."""


# -- planning (no training is launched here) ---------------------------------------------
def run_directory(config: str, opts: Sequence[str]) -> str:
    """The run directory `tools/train.py --cfg config *opts` writes to, computed the same way."""
    from kdharness.compose import load_config
    from kdharness.engine.build import experiment_name

    cfg = load_config(config, list(opts))
    return os.path.join(cfg.LOG.PREFIX, experiment_name(cfg, list(opts)))


def _is_complete(run_dir: str) -> bool:
    path = os.path.join(run_dir, "summary.json")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle).get("complete") is True
    except (OSError, ValueError, AttributeError):
        return False  # absent or unreadable: not a finished run


def _is_locked(run_dir: str) -> bool:
    """True while a live trainer holds run.lock (the trainer takes an exclusive flock on it)."""
    path = os.path.join(run_dir, "run.lock")
    if not os.path.exists(path):
        return False
    try:
        with open(path) as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _has_checkpoint(run_dir: str) -> bool:
    """Any file the trainer's --resume would try: latest, latest.prev or epoch_N."""
    names = [os.path.join(run_dir, name) for name in ("latest", "latest.prev")]
    return any(os.path.isfile(path) for path in names) or bool(glob.glob(os.path.join(run_dir, "epoch_*")))


def run_action(run_dir: str) -> str:
    """What to do with a run directory now.

    An incomplete summary without any checkpoint (deleted by hand) starts fresh: --resume
    would only fail with "no intact checkpoint" on every later sweep.
    """
    if _is_complete(run_dir):
        return SKIP
    if _is_locked(run_dir):
        return BUSY
    return RESUME if _has_checkpoint(run_dir) else RUN


def _needs_start_over(run_dir: str) -> bool:
    """A run to start afresh in a directory that holds an earlier attempt's files (no checkpoint)."""
    from kdharness.engine.run_dir import previous_run_files

    return bool(previous_run_files(run_dir))


def train_command(config: str, seed: int, opts: Sequence[str], resume: bool, python: str = sys.executable,
                  train_script: str = TRAIN_SCRIPT, start_over: bool = False) -> list[str]:
    flags = ["--resume"] if resume else ["--start-over"] if start_over else []
    return [python, train_script, "--cfg", config, *flags, SEED_KEY, str(seed), *opts]


def plan_sweep(configs: Sequence[str], seeds: Sequence[int], opts: Sequence[str] = (), *,
               python: str = sys.executable, train_script: str = TRAIN_SCRIPT,
               run_dir_fn: Callable[[str, Sequence[str]], str] = run_directory) -> list[PlannedRun]:
    """Every (config, seed) in order, with its command and action; launches nothing.

    A config that cannot be loaded is a SweepError naming its file, after every config was
    tried, so that one message lists all the files to fix.

    The seed override comes first in the overrides, as in the command, so the run
    directory name (which lists the overrides in order) is the one train.py will use.
    """
    opts = list(opts)
    if len(opts) % 2:
        raise SweepError(f"overrides must come in KEY VALUE pairs; got {len(opts)} items: {opts}")
    if SEED_KEY in opts[::2]:
        raise SweepError(f"{SEED_KEY} is set by --seeds; remove it from the overrides")
    if not configs or not seeds:
        raise SweepError("a sweep needs at least one --cfg and one seed")
    plan: list[PlannedRun] = []
    owners: dict[str, tuple[str, int]] = {}
    refused: dict[str, str] = {}  # config file -> why; every one is reported, not only the first
    for config in dict.fromkeys(configs):
        for seed in dict.fromkeys(seeds):
            run_opts = [SEED_KEY, str(seed), *opts]
            try:
                run_dir = os.path.normpath(run_dir_fn(config, run_opts))
            except ValueError as error:  # ConfigError: a value or a name, which need not mention the file
                refused.setdefault(config, str(error))
                break
            if run_dir in owners:
                other, other_seed = owners[run_dir]
                raise SweepError(
                    f"{other} (seed {other_seed}) and {config} (seed {seed}) both write to {run_dir}; "
                    "give them different EXPERIMENT.TAG / EXPERIMENT.NAME / EXPERIMENT.PROJECT"
                )
            owners[run_dir] = (config, seed)
            action = run_action(run_dir)
            cmd = train_command(config, seed, opts, resume=action == RESUME, python=python, train_script=train_script,
                                start_over=action == RUN and _needs_start_over(run_dir))
            plan.append(PlannedRun(cmd, action, config, seed, run_dir))
    if refused:
        raise SweepError(
            f"{len(refused)} of {len(dict.fromkeys(configs))} configs refused, nothing was run:\n"
            + "\n".join(f"  {config}: {why}" for config, why in refused.items())
        )
    return plan


# -- execution ---------------------------------------------------------------------------
def _with_action(cmd: list[str], action: str, run_dir: str | None = None) -> list[str]:
    """`cmd` with --resume / --start-over set for a run whose state changed since planning."""
    cmd = [token for token in cmd if token not in ("--resume", "--start-over")]
    if action == RESUME:
        cmd.insert(cmd.index("--cfg") + 2, "--resume")
    elif action == RUN and run_dir is not None and _needs_start_over(run_dir):
        cmd.insert(cmd.index("--cfg") + 2, "--start-over")
    return cmd


def eval_command(run: PlannedRun, python: str = sys.executable) -> list[str]:
    """`tools/eval.py` on the run's best student, with the run's own overrides (data root, seed)."""
    opts = run.cmd[run.cmd.index(SEED_KEY):] if SEED_KEY in run.cmd else []
    script = os.path.join(os.path.dirname(TRAIN_SCRIPT), "eval.py")
    return [python, script, "--cfg", run.config, "--ckpt", os.path.join(run.run_dir, "student_best"), *opts]


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class _Child:
    """The running training process, so SIGTERM to the sweep reaches it (it then saves `latest`)."""

    process: subprocess.Popen | None = None
    stop_requested = False

    @classmethod
    def forward(cls, signum: int, _frame) -> None:
        cls.stop_requested = True
        if cls.process is not None and cls.process.poll() is None:
            cls.process.send_signal(signum)


def _wait(process: subprocess.Popen) -> int:
    """Wait for the child; on Ctrl-C (which the child also receives) let it save and exit."""
    try:
        return process.wait()
    except KeyboardInterrupt:
        _Child.stop_requested = True
        print("sweep: interrupted; waiting for the run to save a resumable checkpoint (Ctrl-C again to kill it)",
              file=sys.stderr, flush=True)
        try:
            return process.wait()
        except KeyboardInterrupt:
            process.kill()
            return process.wait()


def _failure(code: int, run_dir: str) -> str | None:
    """Why a finished child counts as failed, or None when it completed the run."""
    if code < 0:
        return f"killed by signal {-code}"
    if code != 0:
        return f"exit {code}"
    if not _is_complete(run_dir):
        return f"exit 0 but {os.path.join(run_dir, 'summary.json')} is not complete"
    return None


def execute(plan: Sequence[PlannedRun], out: TextIO | None = None) -> int:
    """Run the plan in order; returns 0, 1 (some run failed) or 130 (stopped by a signal)."""
    out = out or sys.stdout

    def say(message: str) -> None:
        print(message, file=out, flush=True)

    counts = {"ran": 0, "resumed": 0, "skipped": 0, "busy": 0}
    failures: list[tuple[PlannedRun, str]] = []
    _Child.stop_requested = False
    previous = signal.signal(signal.SIGTERM, _Child.forward)
    try:
        for index, run in enumerate(plan, start=1):
            if _Child.stop_requested:
                break
            prefix = f"[{index}/{len(plan)}] {run.config} seed {run.seed}"
            action = run_action(run.run_dir)  # again: another sweep may have moved it on since planning
            if action in (SKIP, BUSY):
                counts["skipped" if action == SKIP else "busy"] += 1
                why = "complete" if action == SKIP else "in use by another training process"
                say(f"{prefix}: skipped ({why}) - {run.run_dir}")
                continue
            cmd = _with_action(run.cmd, action, run.run_dir)
            say(f"{prefix}: {'resuming' if action == RESUME else 'starting'} -> {run.run_dir}\n  $ {shlex.join(cmd)}")
            start = time.monotonic()
            _Child.process = subprocess.Popen(cmd)
            code = _wait(_Child.process)
            _Child.process = None
            wall = format_duration(time.monotonic() - start)
            reason = _failure(code, run.run_dir)
            if code == EXIT_RUN_DIRECTORY_LOCKED:  # another sweep took it between our check and its start
                counts["busy"] += 1
                say(f"{prefix}: skipped (taken by another training process meanwhile) - {run.run_dir}")
            elif reason is None:
                verb = "resumed" if action == RESUME else "ran"
                counts[verb] += 1
                say(f"{prefix}: {verb} in {wall}; evaluate with\n  $ {shlex.join(eval_command(run))}")
            elif _Child.stop_requested:
                say(f"{prefix}: stopped ({reason}) after {wall}; the next sweep resumes it")
            else:
                failures.append((run._replace(cmd=cmd), reason))
                say(f"{prefix}: FAILED ({reason}) after {wall}")
    except KeyboardInterrupt:  # between runs: nothing to wait for
        _Child.stop_requested = True
    finally:
        signal.signal(signal.SIGTERM, previous)
    done = ", ".join(f"{count} {name}" for name, count in counts.items() if count or name != "busy")
    say(f"sweep: {len(plan)} runs: {done}, {len(failures)} failed")
    for run, reason in failures:
        say(f"  failed: {run.config} seed {run.seed} ({reason}); log: {os.path.join(run.run_dir, 'worklog.txt')}\n"
            f"    $ {shlex.join(run.cmd)}")
    if _Child.stop_requested:
        say("sweep: stopped early; run the same command again to continue")
        return 130
    return 1 if failures else 0


# -- command line ------------------------------------------------------------------------
def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split argv into sweep arguments and trailing KEY VALUE overrides.

    `--cfg` and `--seeds` take several values, so argparse alone cannot tell where they end
    and `SOLVER.EPOCHS 10` begins; the first upper-case dotted key (or a `--`) does.
    """
    own, tail = list(argv), []
    for index, token in enumerate(argv):
        if token == "--":
            own, tail = list(argv[:index]), list(argv[index + 1:])
            break
        if _OVERRIDE_KEY.match(token) and not os.path.exists(token):
            own, tail = list(argv[:index]), list(argv[index:])
            break
    # A flag typed after the overrides (`... SOLVER.EPOCHS 2 --dry-run`) still belongs to us.
    opts: list[str] = []
    index = 0
    while index < len(tail):
        if tail[index] in _TRAILING_FLAGS:
            own.append(tail[index])
            index += 1
        else:
            opts += tail[index:index + 2]
            index += 2
    return own, opts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweep.py",
        usage="%(prog)s --cfg CFG [CFG ...] [--seeds S [S ...]] [--dry-run] [KEY VALUE ...]",
        description=__doc__.split("\n\n", 1)[1],
        epilog="example:\n  python tools/sweep.py --cfg configs/cifar100/kd/*.yaml configs/cifar100/dkd/*.yaml "
               "--seeds 0 1 2 SOLVER.EPOCHS 240\n"
               "then: python tools/leaderboard.py output/\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cfg", nargs="+", required=True, metavar="CFG", help="YAML configs, each trained once per seed")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="S",
                        help="values of EXPERIMENT.SEED (default: 0 1 2; two or more are needed to judge seed noise)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands (skipped runs as comments) and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    own, opts = split_overrides(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)
    try:
        plan = plan_sweep(args.cfg, args.seeds, opts)
    except (ValueError, ImportError) as error:  # ConfigError, SweepError, a broken plugin: nothing ran yet
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        for index, run in enumerate(plan, start=1):
            note = f"# [{index}/{len(plan)}] {run.config} seed {run.seed}: {run.action}"
            if run.action in (SKIP, BUSY):
                print(f"{note} ({'complete' if run.action == SKIP else 'in use'}) - {run.run_dir}")
            else:
                print(f"{note} -> {run.run_dir}\n{shlex.join(run.cmd)}")
        return 0
    return execute(plan)


if __name__ == "__main__":
    sys.exit(main())
