"""The one yacs config tree, with mdistiller's node names and defaults.

Everything mdistiller has keeps its key and default value (so a user's mdistiller YAML
loads unchanged); what it lacks and our users ask for is added beside it: seeds, a data
root, a cosine schedule, mixed precision, DataLoader settings and fault handling.
Each method owns one node (`CFG.KD`, `CFG.DKD`, `CFG.CRD`; plugins add theirs, e.g.
`CFG.ICKD`). YAML files override only what differs from these defaults.
"""
from __future__ import annotations

import os
from typing import Iterable

from yacs.config import CfgNode as CN


class ConfigError(ValueError):
    """A config that cannot be trained; the message names the key, the value and what is allowed."""


CFG = CN()

# Experiment
CFG.EXPERIMENT = CN()
CFG.EXPERIMENT.PROJECT = "distill"
CFG.EXPERIMENT.NAME = ""
CFG.EXPERIMENT.TAG = "default"
CFG.EXPERIMENT.SEED = 0  # ours: mdistiller does not seed its runs

# Dataset
CFG.DATASET = CN()
CFG.DATASET.TYPE = "cifar100"
CFG.DATASET.ROOT = "./data"  # ours: mdistiller hard-codes ./data
CFG.DATASET.NUM_WORKERS = 2
CFG.DATASET.PIN_MEMORY = False
CFG.DATASET.PERSISTENT_WORKERS = False
CFG.DATASET.DOWNLOAD = True  # fetch CIFAR-100 when missing and the network allows
CFG.DATASET.TRAIN_SUBSET = 0  # ours: >0 trains on the first N samples (CPU experiments)
CFG.DATASET.TEST = CN()
CFG.DATASET.TEST.BATCH_SIZE = 64

# Distiller
CFG.DISTILLER = CN()
CFG.DISTILLER.TYPE = "NONE"  # Vanilla as default
CFG.DISTILLER.TEACHER = "ResNet50"
CFG.DISTILLER.STUDENT = "resnet32"
# ours: a checkpoint path; "" means mdistiller's layout
# download_ckpts/cifar_teachers/<teacher>_vanilla/ckpt_epoch_240.pth
CFG.DISTILLER.TEACHER_WEIGHTS = ""

# Solver
CFG.SOLVER = CN()
CFG.SOLVER.TRAINER = "base"
CFG.SOLVER.BATCH_SIZE = 64
CFG.SOLVER.EPOCHS = 240
CFG.SOLVER.LR = 0.05
CFG.SOLVER.LR_DECAY_STAGES = [150, 180, 210]
CFG.SOLVER.LR_DECAY_RATE = 0.1
CFG.SOLVER.WEIGHT_DECAY = 0.0001
CFG.SOLVER.MOMENTUM = 0.9
CFG.SOLVER.TYPE = "SGD"
CFG.SOLVER.SCHEDULER = "step"  # ours: "step" (published) or "cosine"
CFG.SOLVER.AMP = False  # ours: autocast + grad scaling on CUDA
CFG.SOLVER.CHANNELS_LAST = False
CFG.SOLVER.NAN_POLICY = "stop"  # ours: "stop" saves state and exits; "skip" drops the batch
CFG.SOLVER.NAN_MAX_SKIPS = 10  # ours: with NAN_POLICY skip, the run stops at the next non-finite step past this many
CFG.SOLVER.DDP_FIND_UNUSED_PARAMETERS = False  # ours: torchrun only; True for a method with idle parameters

# Log
CFG.LOG = CN()
CFG.LOG.TENSORBOARD_FREQ = 500
CFG.LOG.SAVE_CHECKPOINT_FREQ = 40
CFG.LOG.SAVE_STEP_FREQ = 0  # ours: >0 also writes `latest` every N steps (mid-epoch resume)
CFG.LOG.PREFIX = "./output"
CFG.LOG.WANDB = False  # mdistiller defaults to True; we have no network for it

# KD (Hinton et al.)
CFG.KD = CN()
CFG.KD.TEMPERATURE = 4
CFG.KD.LOSS = CN()
CFG.KD.LOSS.CE_WEIGHT = 0.1
CFG.KD.LOSS.KD_WEIGHT = 0.9

# CRD (Tian et al.)
CFG.CRD = CN()
CFG.CRD.MODE = "exact"  # ("exact", "relax")
CFG.CRD.FEAT = CN()
CFG.CRD.FEAT.DIM = 128
CFG.CRD.FEAT.STUDENT_DIM = 256
CFG.CRD.FEAT.TEACHER_DIM = 256
CFG.CRD.LOSS = CN()
CFG.CRD.LOSS.CE_WEIGHT = 1.0
CFG.CRD.LOSS.FEAT_WEIGHT = 0.8
CFG.CRD.NCE = CN()
CFG.CRD.NCE.K = 16384
CFG.CRD.NCE.MOMENTUM = 0.5
CFG.CRD.NCE.TEMPERATURE = 0.07

# DKD (Zhao et al.)
CFG.DKD = CN()
CFG.DKD.CE_WEIGHT = 1.0
CFG.DKD.ALPHA = 1.0
CFG.DKD.BETA = 8.0
CFG.DKD.T = 4.0
CFG.DKD.WARMUP = 20

# OFD (Heo et al., "A Comprehensive Overhaul of Feature Distillation")
CFG.OFD = CN()
CFG.OFD.LOSS = CN()
CFG.OFD.LOSS.CE_WEIGHT = 1.0
CFG.OFD.LOSS.FEAT_WEIGHT = 0.001
CFG.OFD.CONNECTOR = CN()
CFG.OFD.CONNECTOR.KERNEL_SIZE = 1

# VID (Ahn et al., "Variational Information Distillation")
CFG.VID = CN()
CFG.VID.LOSS = CN()
CFG.VID.LOSS.CE_WEIGHT = 1.0
CFG.VID.LOSS.FEAT_WEIGHT = 1.0
CFG.VID.EPS = 1e-5
CFG.VID.INIT_PRED_VAR = 5.0
CFG.VID.INPUT_SIZE = (32, 32)

# ReviewKD (Chen et al., "Distilling Knowledge via Knowledge Review")
CFG.REVIEWKD = CN()
CFG.REVIEWKD.CE_WEIGHT = 1.0
CFG.REVIEWKD.REVIEWKD_WEIGHT = 1.0
CFG.REVIEWKD.WARMUP_EPOCHS = 20
CFG.REVIEWKD.SHAPES = [1, 8, 16, 32]
CFG.REVIEWKD.OUT_SHAPES = [1, 8, 16, 32]
CFG.REVIEWKD.IN_CHANNELS = [64, 128, 256, 256]
CFG.REVIEWKD.OUT_CHANNELS = [64, 128, 256, 256]
CFG.REVIEWKD.MAX_MID_CHANNEL = 512  # kept for mdistiller's YAMLs; as in mdistiller, unused (see reviewkd.py)
CFG.REVIEWKD.STU_PREACT = False

# DOT (Zhao et al., "DOT: A Distillation-Oriented Trainer"): SOLVER.TRAINER "dot" / "crd_dot"
CFG.SOLVER.DOT = CN()
CFG.SOLVER.DOT.DELTA = 0.075

# Choices that are not free-form strings: checked before training.
CHOICES = {
    "SOLVER.TYPE": ("SGD",),
    "SOLVER.SCHEDULER": ("step", "cosine"),
    "SOLVER.NAN_POLICY": ("stop", "skip"),
    "CRD.MODE": ("exact", "relax"),
}
POSITIVE = (
    "SOLVER.BATCH_SIZE", "SOLVER.EPOCHS", "SOLVER.LR", "DATASET.TEST.BATCH_SIZE",
    "KD.TEMPERATURE", "DKD.T", "CRD.NCE.K", "CRD.NCE.TEMPERATURE", "CRD.FEAT.DIM",
)
NON_NEGATIVE = (
    "EXPERIMENT.SEED", "DATASET.NUM_WORKERS", "DATASET.TRAIN_SUBSET", "SOLVER.WEIGHT_DECAY",
    "SOLVER.MOMENTUM", "SOLVER.LR_DECAY_RATE", "KD.LOSS.CE_WEIGHT", "KD.LOSS.KD_WEIGHT",
    "DKD.CE_WEIGHT", "DKD.ALPHA", "DKD.BETA", "DKD.WARMUP", "CRD.LOSS.CE_WEIGHT",
    "CRD.LOSS.FEAT_WEIGHT", "LOG.SAVE_CHECKPOINT_FREQ", "LOG.SAVE_STEP_FREQ", "SOLVER.NAN_MAX_SKIPS",
)


def get_cfg_defaults() -> CN:
    """A fresh, unfrozen copy of the defaults (plugins' nodes included once registered)."""
    return CFG.clone()


def cfg_get(cfg: CN, dotted_key: str):
    node = cfg
    for part in dotted_key.split("."):
        node = node[part]
    return node


def load_config(path: str | None, opts: Iterable[str] = ()) -> CN:
    """Defaults <- YAML file <- ``KEY VALUE`` overrides, then validation; returns a frozen node.

    yacs already refuses unknown keys and wrong types; we re-raise its errors as ConfigError
    naming the file, so the user sees which of the two layers was wrong.
    """
    from kdharness.registry import load_builtin_components

    load_builtin_components()
    cfg = get_cfg_defaults()
    if path:
        if not os.path.isfile(path):
            raise ConfigError(f"config file {path!r} does not exist")
        try:
            cfg.merge_from_file(path)
        except (KeyError, ValueError, AssertionError) as error:
            raise ConfigError(f"{path}: {_yacs_message(error)}") from error
    opts = list(opts or [])
    if len(opts) % 2:
        raise ConfigError(f"overrides must come in KEY VALUE pairs; got {len(opts)} items: {opts}")
    try:
        cfg.merge_from_list(opts)
    except (KeyError, ValueError, AssertionError) as error:
        raise ConfigError(f"command-line override: {_yacs_message(error)}") from error
    validate_config(cfg)
    cfg.freeze()
    return cfg


def _yacs_message(error: Exception) -> str:
    text = str(error.args[0]) if error.args else str(error)
    if "Non-existent config key" in text:
        return text + " (check the spelling against kdharness/config.py and the plugin's node)"
    return text


def validate_config(cfg: CN) -> None:
    """Reject, before any training, every value that cannot work; names key, value, allowed."""
    from kdharness.registry import dataset_dict, distiller_dict, trainer_dict

    for key, registry in (
        ("DISTILLER.TYPE", distiller_dict),
        ("SOLVER.TRAINER", trainer_dict),
        ("DATASET.TYPE", dataset_dict),
    ):
        value = cfg_get(cfg, key)
        if value not in registry:
            raise ConfigError(f"{key} = {value!r} is not registered; allowed: {', '.join(sorted(registry))}")
    for key, allowed in CHOICES.items():
        value = cfg_get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key} = {value!r}; allowed: {', '.join(allowed)}")
    for key in POSITIVE:
        value = cfg_get(cfg, key)
        if not value > 0:
            raise ConfigError(f"{key} = {value!r}; expected a number > 0")
    for key in NON_NEGATIVE:
        value = cfg_get(cfg, key)
        if value < 0:
            raise ConfigError(f"{key} = {value!r}; expected a number >= 0")
    stages = list(cfg.SOLVER.LR_DECAY_STAGES)
    if stages != sorted(stages):
        raise ConfigError(f"SOLVER.LR_DECAY_STAGES = {stages}; expected increasing epochs")
    from kdharness.models import check_model_name

    check_model_name(cfg.DISTILLER.STUDENT, cfg.DATASET.TYPE, "DISTILLER.STUDENT")
    distiller_cls = distiller_dict[cfg.DISTILLER.TYPE]
    requirement = getattr(distiller_cls, "teacher_requirement", None)
    needs_teacher = requirement is None or requirement(cfg) != "none"
    if needs_teacher:
        check_model_name(cfg.DISTILLER.TEACHER, cfg.DATASET.TYPE, "DISTILLER.TEACHER")
