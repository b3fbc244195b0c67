"""Train a student, as in mdistiller: `python tools/train.py --cfg FILE [KEY VALUE ...]`."""
from __future__ import annotations

import argparse
import sys

from kdharness.compose import load_config
from kdharness.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("training for knowledge distillation.")
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
    from kdharness.engine.build import build_trainer
    from kdharness.engine.checkpoint import CheckpointError
    from kdharness.engine.trainer import EXIT_RUN_DIRECTORY_LOCKED, NonFiniteLossError, RunDirectoryLocked
    from kdharness.engine.utils import log_msg

    try:
        print(log_msg(f"CONFIG:\n{cfg.dump()}", "INFO"))
        trainer = build_trainer(cfg, args.opts or [])
        trainer.train(resume=args.resume, start_over=args.start_over)
    except RunDirectoryLocked as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_RUN_DIRECTORY_LOCKED
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError, NonFiniteLossError) as error:
        # ValueError: a distiller or plugin refusing its config node (e.g. ICKD.K too large)
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
