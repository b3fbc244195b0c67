"""Train a student, as in mdistiller: `python tools/train.py --cfg FILE [KEY VALUE ...]`."""
from __future__ import annotations

import argparse
import sys

from kdharness.compose import load_config
from kdharness.config import ConfigError


EPILOG = """examples:
  python tools/train.py --cfg configs/cifar100/kd/res32x4_res8x4.yaml
  python tools/train.py --cfg configs/cifar100/ickd_dkd/res32x4_res8x4.yaml SOLVER.EPOCHS 120 EXPERIMENT.SEED 1
  python tools/train.py --cfg configs/fashion_mnist/ickd_kd/res14_res8.yaml --resume      # continue a stopped run
  python tools/train.py --cfg configs/fashion_mnist/ickd_kd/res14_res8.yaml --start-over  # train it again

The run writes to LOG.PREFIX/EXPERIMENT.PROJECT/<NAME or TAG>[,overrides]/ (worklog.txt with the
config, summary.json, checkpoints). Every key, with its default and meaning: kdharness/config.py
(ICKD's: ickd_plugin/config.py); the method and its choices: docs/method.md; README.md for more.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a student (and its distiller) from a YAML config, as mdistiller's tools/train.py; "
                    "KEY VALUE pairs after the options override the config.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cfg", type=str, required=True, help="YAML config, e.g. configs/cifar100/kd/res32x4_res8x4.yaml")
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's newest intact checkpoint")
    parser.add_argument("--start-over", action="store_true",
                        help="train from epoch 1 in a directory that holds a run, moving that run to <dir>.old-<timestamp>")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. SOLVER.EPOCHS 10")
    args = parser.parse_args(argv)
    # The flags may also follow the overrides (`... SOLVER.EPOCHS 10 --resume`).
    for flag in ("--resume", "--start-over"):
        while flag in (args.opts or []):
            args.opts.remove(flag)
            setattr(args, flag[2:].replace("-", "_"), True)
    if args.resume and args.start_over:
        parser.error("--resume and --start-over exclude each other: continue the run, or train it again from epoch 1")
    try:
        cfg = load_config(args.cfg, args.opts)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Imported once the config is known to be good: a typo is reported before torch loads.
    from kdharness.engine.build import build_trainer, check_run_directory
    from kdharness.engine.checkpoint import CheckpointError
    from kdharness.engine.io_errors import describe_os_error
    from kdharness.engine.trainer import EXIT_RUN_DIRECTORY_LOCKED, NonFiniteLossError, RunDirectoryLocked
    from kdharness.engine.utils import log_msg

    try:
        check_run_directory(cfg, args.opts or [], resume=args.resume, start_over=args.start_over)
        trainer = build_trainer(cfg, args.opts or [])
        trainer.train(resume=args.resume, start_over=args.start_over)
    except RunDirectoryLocked as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_RUN_DIRECTORY_LOCKED
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError, NonFiniteLossError) as error:
        # ValueError: a distiller or plugin refusing its config node (e.g. ICKD.K too large)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the machine, not the command: a full disk, a permission, a vanished directory
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
