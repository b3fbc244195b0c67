"""From a validated config to a ready trainer: the body of `tools/train.py`, importable.

Kept apart from the CLI so that sweeps, benchmarks and tests build runs exactly the way a
user's command line does.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import re
import tempfile
from typing import Any, Sequence

import torch
import torch.nn as nn

from kdharness import data as kd_data  # noqa: F401  (registers datasets)
from kdharness import distillers  # noqa: F401  (registers distillers)
from kdharness.compose import load_builtin_components
from kdharness.config import ConfigError, is_non_training_key
from kdharness.data import build_datasets, build_loaders
from kdharness.distillers._base import TEACHER_NONE, TEACHER_PRETRAINED
from kdharness.engine import distributed, run_dir
from kdharness.engine.checkpoint import CheckpointError
from kdharness.engine.trainer import BaseTrainer  # noqa: F401  (registers the base trainer)
from kdharness.engine.utils import log_msg, seed_everything
from kdharness.models import create_model
from kdharness.models.weights import BACKBONE_KEY, load_backbone_weights, load_weights, resolve_teacher_path
from kdharness.registry import distiller_dict, trainer_dict


def experiment_name(cfg, opts: Sequence[str] = ()) -> str:
    """mdistiller's naming: PROJECT/(NAME or TAG) followed by the command-line overrides."""
    name = cfg.EXPERIMENT.NAME or cfg.EXPERIMENT.TAG
    extra = [
        f"{k}:{str(v).replace(os.sep, '_')}"
        for k, v in zip(opts[::2], opts[1::2])
        if not is_non_training_key(k)
    ]
    if extra:
        name += "," + ",".join(extra)
    return os.path.join(cfg.EXPERIMENT.PROJECT, shorten_run_name(name))


# File systems refuse a name over 255 bytes; overrides holding paths reach that quickly.
MAX_RUN_NAME_BYTES = 200
_SEED_PART = re.compile(r",EXPERIMENT\.SEED:[^,]*")


def shorten_run_name(name: str) -> str:
    """`name`, or when longer than MAX_RUN_NAME_BYTES its head, ``~`` and a hash of the whole
    name without the seed, then the seed override: every seed of one configuration still
    shares one label (``strip_seed``), and two configurations never share a directory."""
    if len(name.encode()) <= MAX_RUN_NAME_BYTES:
        return name
    seed = "".join(_SEED_PART.findall(name))
    rest = _SEED_PART.sub("", name)
    digest = hashlib.sha1(rest.encode()).hexdigest()[:12]
    head = rest.encode()[: MAX_RUN_NAME_BYTES - len(seed.encode()) - 14].decode(errors="ignore")
    return f"{head}~{digest}{seed}"


def teacher_requirement(cfg) -> str:
    cls = distiller_dict[cfg.DISTILLER.TYPE]
    requirement = getattr(cls, "teacher_requirement", None)
    return requirement(cfg) if requirement is not None else TEACHER_PRETRAINED


def build_distiller(cfg, num_classes: int, num_data: int) -> nn.Module:
    """Student, teacher (loaded, untrained or absent as the distiller asks) and the distiller."""
    cls = distiller_dict[cfg.DISTILLER.TYPE]
    student = create_model(cfg.DISTILLER.STUDENT, cfg.DATASET.TYPE, num_classes)
    backbone_path = cfg.DISTILLER.get("STUDENT_BACKBONE_WEIGHTS", "")
    if backbone_path:
        path = os.path.expanduser(backbone_path)
        print(log_msg(f"Loading the ImageNet backbone of {cfg.DISTILLER.STUDENT} from {path} ({BACKBONE_KEY})", "INFO"))
        load_backbone_weights(student, path)
    requirement = teacher_requirement(cfg)
    teacher = None
    if requirement != TEACHER_NONE:
        teacher = create_model(cfg.DISTILLER.TEACHER, cfg.DATASET.TYPE, num_classes)
        if requirement == TEACHER_PRETRAINED:
            path = resolve_teacher_path(cfg)
            print(log_msg(f"Loading teacher {cfg.DISTILLER.TEACHER} from {path}", "INFO"))
            load_weights(teacher, path)
            teacher.requires_grad_(False)  # frozen: no gradients computed, none for DDP to wait on
    kwargs: dict[str, Any] = {}
    if "num_data" in inspect.signature(cls).parameters:
        kwargs["num_data"] = num_data
    return cls(student, teacher, cfg, **kwargs)


def check_log_prefix(cfg) -> None:
    """Raise ConfigError unless ``LOG.PREFIX`` is, or can become, a writable directory.

    Checked before data and models load: otherwise a file in the way or a read-only disk
    shows up as a NotADirectoryError / PermissionError traceback from the trainer. Creating
    a temporary file is the test, since ``os.access`` says yes to root on a read-only mount.
    """
    value = str(cfg.LOG.PREFIX)
    prefix = os.path.expanduser(value)
    existing = os.path.abspath(prefix)
    while not os.path.exists(existing):  # ends at "/" at the latest
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(
            f"LOG.PREFIX = {value!r}: {existing!r} is a file, not a directory; "
            "set LOG.PREFIX to a directory (it is created if missing)"
        )
    try:
        os.makedirs(prefix, exist_ok=True)
        with tempfile.TemporaryFile(dir=prefix):
            pass
    except OSError as error:
        raise ConfigError(
            f"LOG.PREFIX = {value!r} is not writable ({error.strerror or error}: {error.filename or prefix}); "
            "set LOG.PREFIX to a directory you can write to"
        ) from error


def check_run_directory(cfg, opts: Sequence[str] = (), resume: bool = False, start_over: bool = False) -> None:
    """Refuse, before data and models load, what `trainer.train(resume, start_over)` would refuse
    about the run directory: `--resume` with nothing to resume (or with a changed config, as far
    as the run's summary.json tells), or a fresh start over a run. Only reads; creates nothing."""
    log_path = os.path.join(cfg.LOG.PREFIX, experiment_name(cfg, opts))
    if resume:
        if not any(os.path.exists(path) for path in run_dir.resume_candidates(log_path)):
            where = "does not exist" if not os.path.isdir(log_path) else "holds no checkpoint"
            raise CheckpointError(
                f"--resume: nothing to resume: run directory {log_path!r} {where} (a run writes 'latest' at the end of "
                "each epoch); train it without --resume, or check EXPERIMENT.NAME, LOG.PREFIX and the overrides"
            )
        run_dir.check_resume_config(log_path, {}, cfg.dump())
    else:
        run_dir.prepare_fresh_start(log_path, start_over, move=False)


def build_trainer(cfg, opts: Sequence[str] = (), device: str | None = None):
    """Everything `tools/train.py` does before `trainer.train()`; returns the trainer."""
    load_builtin_components()
    rank, world_size = distributed.init_from_env()
    if rank == 0:
        check_log_prefix(cfg)
    seed_everything(cfg.EXPERIMENT.SEED)
    train_set, val_set, num_classes = build_datasets(cfg, log=rank == 0)
    train_loader, val_loader = build_loaders(cfg, train_set, val_set, rank=rank, world_size=world_size)
    distiller = build_distiller(cfg, num_classes, len(train_set))
    target = torch.device(device) if device else distributed.default_device()
    distiller = distiller.to(target)
    if cfg.SOLVER.CHANNELS_LAST:
        distiller = distiller.to(memory_format=torch.channels_last)
    extra = getattr(distiller, "get_extra_parameters", lambda: 0)()
    if cfg.DISTILLER.TYPE != "NONE" and rank == 0:
        print(log_msg(f"Extra parameters of {cfg.DISTILLER.TYPE}: {extra}", "INFO"))
    distiller = distributed.wrap(distiller, target, cfg.SOLVER.DDP_FIND_UNUSED_PARAMETERS)
    return trainer_dict[cfg.SOLVER.TRAINER](experiment_name(cfg, opts), distiller, train_loader, val_loader, cfg)
