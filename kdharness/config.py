"""The one yacs config tree, with mdistiller's node names and defaults.

Everything mdistiller has keeps its key and default value (so a user's mdistiller YAML
loads unchanged); what it lacks and our users ask for is added beside it: seeds, a data
root, a cosine schedule, mixed precision, DataLoader settings and fault handling.
Each method owns one node (`CFG.KD`, `CFG.DKD`, `CFG.CRD`; plugins add theirs, e.g.
`CFG.ICKD`). YAML files override only what differs from these defaults.

This module reads and checks a config; it imports nothing of the host but the registries
(a leaf). Loading one for a run, which needs every component registered first, is
`kdharness.compose.load_config`, on the top floor.
"""
from __future__ import annotations

import difflib
import os
import re
from typing import Any, Iterable, Mapping, Sequence

import yaml
from yacs.config import CfgNode as CN

from kdharness.registry import dataset_dict, distiller_dict, trainer_dict


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
CFG.DATASET.TRAIN_SUBSET_BALANCED = False  # ours: with TRAIN_SUBSET N, the first N / C samples of each class
CFG.DATASET.TEST = CN()
CFG.DATASET.TEST.BATCH_SIZE = 64
# ours: "classification" (image -> class) or "segmentation" (image -> per-pixel classes). It
# picks the loss's ignore index, the metric (top-1 or mIoU), the transforms and the model
# zoo; it must match the dataset's own task (kdharness/data: each dataset registers with it).
CFG.DATASET.TASK = "classification"
# Segmentation only (ours; the field's training transforms): a random scale of the whole
# image in SCALE_RANGE, then a CROP_SIZE (height, width) crop, padded with the ignore index
# where the scaled image is smaller, then a horizontal flip with probability 0.5.
CFG.DATASET.CROP_SIZE = [512, 1024]
CFG.DATASET.SCALE_RANGE = [0.5, 2.0]
# Fashion-MNIST scenes (DATASET.TYPE fashion_mnist_scenes, ours; kdharness/data/fashion_mnist_scenes.py):
# SIZE x SIZE canvases holding MIN_ITEMS..MAX_ITEMS Fashion-MNIST items, each resized to
# 28 * U(MIN_SCALE, MAX_SCALE) pixels and pasted at a random position; a pixel is an item's
# where the resized item's intensity is above THRESHOLD (0..1). Train scenes come from the
# train split, test scenes from the test split; scene i is a pure function of (SEED, split, i).
CFG.DATASET.SCENES = CN()
CFG.DATASET.SCENES.SIZE = 64
CFG.DATASET.SCENES.NUM_TRAIN = 2000
CFG.DATASET.SCENES.NUM_TEST = 500
CFG.DATASET.SCENES.MIN_ITEMS = 2
CFG.DATASET.SCENES.MAX_ITEMS = 4
CFG.DATASET.SCENES.MIN_SCALE = 0.75
CFG.DATASET.SCENES.MAX_SCALE = 1.5
CFG.DATASET.SCENES.THRESHOLD = 0.1
CFG.DATASET.SCENES.SEED = 0

# Distiller
CFG.DISTILLER = CN()
CFG.DISTILLER.TYPE = "NONE"  # Vanilla as default
CFG.DISTILLER.TEACHER = "ResNet50"
CFG.DISTILLER.STUDENT = "resnet32"
# ours: a checkpoint path; "" means mdistiller's layout
# download_ckpts/cifar_teachers/<teacher>_vanilla/ckpt_epoch_240.pth
CFG.DISTILLER.TEACHER_WEIGHTS = ""
# ours, segmentation models: an ImageNet state_dict in torchvision's layout (resnet18-*.pth,
# mobilenet_v2-*.pth, ...) loaded into the student's backbone before training; "" trains from
# scratch. Never downloaded.
CFG.DISTILLER.STUDENT_BACKBONE_WEIGHTS = ""

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
CFG.SOLVER.SCHEDULER = "step"  # ours: "step" (published), "cosine" or "poly" (segmentation's)
CFG.SOLVER.POLY_POWER = 0.9  # ours: with SCHEDULER poly, LR * (1 - progress) ** POLY_POWER, set every step
CFG.SOLVER.LABEL_SMOOTHING = 0.0  # ours: epsilon of every distiller's cross-entropy on the labels (0: plain CE)
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
CFG.LOG.EVAL_FREQ = 1  # ours: evaluate the test set every N epochs (and always after the last)
CFG.LOG.EVAL_TRAIN_SET = False  # ours: also evaluate the un-augmented training set (history: train_eval_acc)
CFG.LOG.WANDB = False  # mdistiller defaults to True; ours: optional extra, works offline (kdharness/engine/wandb_log.py)
CFG.LOG.WANDB_PROJECT = ""  # ours: the wandb project; "" means EXPERIMENT.PROJECT, as in mdistiller

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

# FitNet (Romero et al.): regress the student's HINT_LAYER feature onto the teacher's
CFG.FITNET = CN()
CFG.FITNET.HINT_LAYER = 2  # index into feats["feats"]: (0, 1, 2, 3, 4)
CFG.FITNET.INPUT_SIZE = (32, 32)  # probe input for the regressor's shapes; (224, 224) for ImageNet
CFG.FITNET.LOSS = CN()
CFG.FITNET.LOSS.CE_WEIGHT = 1.0
CFG.FITNET.LOSS.FEAT_WEIGHT = 100.0

# AT (Zagoruyko & Komodakis): attention maps of feats[1:]
CFG.AT = CN()
CFG.AT.P = 2
CFG.AT.LOSS = CN()
CFG.AT.LOSS.CE_WEIGHT = 1.0
CFG.AT.LOSS.FEAT_WEIGHT = 1000.0

# NST (Huang & Wang): polynomial-kernel MMD of feats[1:]
CFG.NST = CN()
CFG.NST.LOSS = CN()
CFG.NST.LOSS.CE_WEIGHT = 1.0
CFG.NST.LOSS.FEAT_WEIGHT = 50.0

# PKT (Passalis & Tefas): cosine-kernel distributions of pooled_feat
CFG.PKT = CN()
CFG.PKT.LOSS = CN()
CFG.PKT.LOSS.CE_WEIGHT = 1.0
CFG.PKT.LOSS.FEAT_WEIGHT = 30000.0

# SP (Tung & Mori): batch similarity of feats[-1]
CFG.SP = CN()
CFG.SP.LOSS = CN()
CFG.SP.LOSS.CE_WEIGHT = 1.0
CFG.SP.LOSS.FEAT_WEIGHT = 3000.0

# RKD (Park et al.): distance and angle relations of pooled_feat
CFG.RKD = CN()
CFG.RKD.DISTANCE_WEIGHT = 25
CFG.RKD.ANGLE_WEIGHT = 50
CFG.RKD.LOSS = CN()
CFG.RKD.LOSS.CE_WEIGHT = 1.0
CFG.RKD.LOSS.FEAT_WEIGHT = 1.0
CFG.RKD.PDIST = CN()
CFG.RKD.PDIST.EPSILON = 1e-12
CFG.RKD.PDIST.SQUARED = False

# KDSVD (Lee et al.): SVD of feats[1:]; the teacher keeps K singular vectors, the student K + 3
CFG.KDSVD = CN()
CFG.KDSVD.K = 1
CFG.KDSVD.LOSS = CN()
CFG.KDSVD.LOSS.CE_WEIGHT = 1.0
CFG.KDSVD.LOSS.FEAT_WEIGHT = 1.0

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

# PIXEL_KD: pixel-wise KD for segmentation (Hinton et al.'s KD per pixel, as CIRKD's baseline):
# KL at TEMPERATURE of the logit maps, averaged over every pixel, T^2 scaled (CIRKD's defaults).
CFG.PIXEL_KD = CN()
CFG.PIXEL_KD.TEMPERATURE = 1.0
CFG.PIXEL_KD.LOSS = CN()
CFG.PIXEL_KD.LOSS.CE_WEIGHT = 1.0
CFG.PIXEL_KD.LOSS.KD_WEIGHT = 1.0

# CWD: channel-wise distillation (Shu et al., ICCV 2021) of the logit maps: each channel's
# spatial softmax at TEMPERATURE, KL, T^2 scaled, over batch x channels (CIRKD's settings: T 4, weight 3).
CFG.CWD = CN()
CFG.CWD.TEMPERATURE = 4.0
CFG.CWD.LOSS = CN()
CFG.CWD.LOSS.CE_WEIGHT = 1.0
CFG.CWD.LOSS.FEAT_WEIGHT = 3.0

# DOT (Zhao et al., "DOT: A Distillation-Oriented Trainer"): SOLVER.TRAINER "dot" / "crd_dot"
CFG.SOLVER.DOT = CN()
CFG.SOLVER.DOT.DELTA = 0.075

# The tasks a run can train (DATASET.TASK); a dataset registers with one of them.
CLASSIFICATION, SEGMENTATION = "classification", "segmentation"
TASKS = (CLASSIFICATION, SEGMENTATION)
# The label of pixels that count nowhere (no loss, no metric): Cityscapes' and VOC's
# convention, also the padding of crops; classification keeps cross-entropy's default.
IGNORE_INDEX = 255

# Choices that are not free-form strings: checked before training.
CHOICES = {
    "SOLVER.TYPE": ("SGD",),
    "SOLVER.SCHEDULER": ("step", "cosine", "poly"),
    "DATASET.TASK": TASKS,
    "SOLVER.NAN_POLICY": ("stop", "skip"),
    "CRD.MODE": ("exact", "relax"),
}
POSITIVE = (
    "SOLVER.BATCH_SIZE", "SOLVER.EPOCHS", "SOLVER.LR", "DATASET.TEST.BATCH_SIZE", "LOG.EVAL_FREQ",
    "KD.TEMPERATURE", "DKD.T", "CRD.NCE.K", "CRD.NCE.TEMPERATURE", "CRD.FEAT.DIM",
    "SOLVER.POLY_POWER", "PIXEL_KD.TEMPERATURE", "CWD.TEMPERATURE",
    "DATASET.SCENES.SIZE", "DATASET.SCENES.NUM_TRAIN", "DATASET.SCENES.NUM_TEST", "DATASET.SCENES.MIN_ITEMS",
    "DATASET.SCENES.MIN_SCALE",
)
NON_NEGATIVE = (
    "EXPERIMENT.SEED", "DATASET.NUM_WORKERS", "DATASET.TRAIN_SUBSET", "SOLVER.WEIGHT_DECAY",
    "SOLVER.MOMENTUM", "SOLVER.LR_DECAY_RATE", "KD.LOSS.CE_WEIGHT", "KD.LOSS.KD_WEIGHT",
    "DKD.CE_WEIGHT", "DKD.ALPHA", "DKD.BETA", "DKD.WARMUP", "CRD.LOSS.CE_WEIGHT",
    "CRD.LOSS.FEAT_WEIGHT", "LOG.SAVE_CHECKPOINT_FREQ", "LOG.SAVE_STEP_FREQ", "SOLVER.NAN_MAX_SKIPS",
    "PIXEL_KD.LOSS.CE_WEIGHT", "PIXEL_KD.LOSS.KD_WEIGHT", "CWD.LOSS.CE_WEIGHT", "CWD.LOSS.FEAT_WEIGHT",
    "DATASET.SCENES.SEED", "DATASET.SCENES.THRESHOLD",
)

# The feature-distillation nodes (FITNET, AT, NST, PKT, SP, RKD, KDSVD).
POSITIVE += ("AT.P", "RKD.PDIST.EPSILON", "KDSVD.K")
NON_NEGATIVE += ("FITNET.HINT_LAYER", "RKD.DISTANCE_WEIGHT", "RKD.ANGLE_WEIGHT") + tuple(
    f"{node}.LOSS.{weight}_WEIGHT"
    for node in ("FITNET", "AT", "NST", "PKT", "SP", "RKD", "KDSVD")
    for weight in ("CE", "FEAT")
)


# Keys that change neither what a run trains nor what it measures: where its files go, how
# fast data loads, how often it logs or saves, what to do if a step turns non-finite (a run
# that skipped steps is kept off leaderboards anyway). The one list behind run names (an
# override of these is not part of a run directory's name), `--resume` (these may change)
# and the leaderboard (runs that differ only in these, and the seed, share a cell). An entry
# ending in "." covers a whole node. The plugin's keys are named here as the host knows
# them: by name only.
NON_TRAINING_KEYS = (
    "EXPERIMENT.PROJECT", "EXPERIMENT.NAME", "EXPERIMENT.TAG",
    "LOG.PREFIX", "LOG.TENSORBOARD_FREQ", "LOG.SAVE_CHECKPOINT_FREQ", "LOG.SAVE_STEP_FREQ",
    "LOG.EVAL_TRAIN_SET", "LOG.WANDB", "LOG.WANDB_PROJECT",
    "DATASET.ROOT", "DATASET.NUM_WORKERS", "DATASET.PIN_MEMORY", "DATASET.PERSISTENT_WORKERS",
    "DATASET.DOWNLOAD", "DATASET.TEST.BATCH_SIZE",
    "DISTILLER.TEACHER_WEIGHTS",  # where the teacher file is; the teacher itself is DISTILLER.TEACHER
    "SOLVER.NAN_POLICY", "SOLVER.NAN_MAX_SKIPS", "SOLVER.DDP_FIND_UNUSED_PARAMETERS",
    "ICKD.BANK.CACHE_DIR", "ICKD.BANK.DEVICE", "ICKD.BANK.USE_CACHE", "ICKD.BANK.BATCH_SIZE",
    "ICKD.BANK.CHUNK_SIZE",
)
SEED_KEY = "EXPERIMENT.SEED"


def is_non_training_key(key: str) -> bool:
    """Whether `key` (dotted) is one of NON_TRAINING_KEYS or inside a node listed there."""
    return any(key == entry or (entry.endswith(".") and key.startswith(entry)) for entry in NON_TRAINING_KEYS)


def flatten_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"A": {"B": 1}}`` -> ``{"A.B": 1}``: a config (or its YAML mapping) as dotted keys."""
    if not isinstance(tree, Mapping):
        return {prefix: tree} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten_config(value, f"{prefix}{key}." if isinstance(value, Mapping) else f"{prefix}{key}"))
    return flat


def get_cfg_defaults() -> CN:
    """A fresh, unfrozen copy of the defaults (plugins' nodes included once registered)."""
    return CFG.clone()


def cfg_get(cfg: CN, dotted_key: str):
    node = cfg
    for part in dotted_key.split("."):
        node = node[part]
    return node


def read_config_file(path: str) -> dict:
    """The YAML file's top-level mapping; ConfigError for anything else, an empty file included.

    yaml's own errors say ``in "<unicode string>"`` and span several lines, and yacs fails
    on a list or a scalar with a traceback about CfgNode; this message names the file, the
    line and column, and what the top level must be.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist (working directory {os.getcwd()!r})")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.MarkedYAMLError as error:
        where = _yaml_position(error.problem_mark)
        what = error.problem or "syntax error"
        if error.context:
            what += f" ({error.context}{' started' + _yaml_position(error.context_mark) if error.context_mark else ''})"
        raise ConfigError(f"{path}{where}: not valid YAML: {what}; fix the syntax there") from error
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not a YAML text file ({type(error).__name__}: {error})") from error
    if data is None or data == {}:
        # Merged into nothing, it would silently train the defaults (mdistiller's CIFAR-100 run).
        what = "empty (or holds only comments)" if data is None else "an empty mapping"
        raise ConfigError(
            f"{path}: the file is {what}; expected a mapping of config nodes, e.g. 'SOLVER:' on one line "
            "and '  EPOCHS: 240' indented below it (a config holding nothing would train the defaults)"
        )
    if not isinstance(data, dict) or not all(isinstance(key, str) for key in data):
        seen = type(data).__name__ if not isinstance(data, dict) else "mapping with non-text keys"
        raise ConfigError(
            f"{path}: the top level is a {seen}; expected a mapping of config nodes, "
            "e.g. 'SOLVER:' on one line and '  EPOCHS: 240' indented below it"
        )
    return data


def _yaml_position(mark: Any) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def override_pairs(opts: Iterable[str] | None) -> list[str]:
    """The command line's ``KEY VALUE`` overrides as a flat list, refused if a value is missing."""
    opts = list(opts or [])
    if len(opts) % 2:
        raise ConfigError(f"overrides must come in KEY VALUE pairs; got {len(opts)} items: {opts}")
    return opts


def merge_config(
    cfg: CN,
    data: Mapping[str, Any],
    opts: Sequence[str],
    path: str = "<config>",
    known_nodes_only: bool = False,
) -> CN:
    """Merge a file's mapping, then the overrides, into ``cfg`` (in place); returns ``cfg``.

    yacs refuses unknown keys and wrong types; its errors come back as ConfigError naming
    the layer (the file or the command line). ``known_nodes_only`` skips the top-level nodes
    ``cfg`` lacks (a plugin's, before plugins are loaded), so the rest can be checked early.
    """
    if known_nodes_only:
        data = {key: value for key, value in data.items() if key in cfg}
        pairs = [(k, v) for k, v in zip(opts[::2], opts[1::2]) if str(k).split(".")[0] in cfg]
        opts = [item for pair in pairs for item in pair]
    try:
        cfg.merge_from_other_cfg(CN(data))
    except (KeyError, ValueError, AssertionError, TypeError) as error:
        raise ConfigError(f"{path}: {_yacs_message(error, cfg)}") from error
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as error:
        raise ConfigError(f"command-line override: {_yacs_message(error, cfg)}") from error
    return cfg


_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")


def _yacs_message(error: Exception, cfg: CN) -> str:
    text = str(error.args[0]) if error.args else str(error)
    unknown = _UNKNOWN_KEY.search(text)
    if unknown:
        return f"{text}; {suggest_keys(unknown.group(1), cfg)}"
    return text


def suggest_keys(key: str, cfg: CN) -> str:
    """``did you mean SOLVER.EPOCHS?``: the closest existing keys to a misspelt one (difflib),
    or where the keys are listed when nothing is close.

    The last part is matched among the keys of the same node (``SOLVER.EPOCH`` against the
    keys of SOLVER, not against every ``SOLVER.*`` string, which all look alike); a misspelt
    node is matched first.
    """
    known = list(flatten_config(cfg))
    node, _, leaf = key.rpartition(".")
    nodes = sorted({k.rpartition(".")[0] for k in known})
    if node not in nodes:
        node = next(iter(difflib.get_close_matches(node, nodes, n=1, cutoff=0.6)), node)
    leaves = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == node}
    close = [leaves[name] for name in difflib.get_close_matches(leaf, list(leaves), n=3, cutoff=0.6)]
    if not close:
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.85)
    where = "keys and defaults: kdharness/config.py, a plugin's in its own node (ickd_plugin/config.py)"
    if close:
        return f"did you mean {' or '.join(close)}? ({where})"
    return f"no key is close ({where})"


def validate_config(cfg: CN) -> None:
    """Reject every name that is not registered and every value that cannot work.

    Needs the registries filled (see `kdharness.compose`); names the key, value and allowed.
    """
    for key, registry in (
        ("DISTILLER.TYPE", distiller_dict),
        ("SOLVER.TRAINER", trainer_dict),
        ("DATASET.TYPE", dataset_dict),
    ):
        value = cfg_get(cfg, key)
        if value not in registry:
            raise ConfigError(f"{key} = {value!r} is not registered; allowed: {', '.join(sorted(registry))}")
    validate_values(cfg)
    dataset_task = dataset_task_of(cfg.DATASET.TYPE)
    if cfg.DATASET.TASK != dataset_task:
        same = sorted(name for name in dataset_dict if dataset_task_of(name) == cfg.DATASET.TASK)
        raise ConfigError(
            f"DATASET.TASK = {cfg.DATASET.TASK!r}, but DATASET.TYPE {cfg.DATASET.TYPE!r} is a {dataset_task} dataset; "
            f"set DATASET.TASK {dataset_task} (datasets for {cfg.DATASET.TASK}: {', '.join(same) or 'none'})"
        )


def dataset_task_of(dataset_type: str) -> str:
    """The task a registered dataset is for (``register_dataset(name, task=...)``)."""
    return getattr(dataset_dict[dataset_type], "task", CLASSIFICATION)


def is_segmentation(cfg: Any) -> bool:
    """Whether a config trains a segmentation task (``DATASET.TASK``; configs without the key classify)."""
    dataset = getattr(cfg, "DATASET", None)
    return dataset is not None and dataset.get("TASK", CLASSIFICATION) == SEGMENTATION


def validate_values(cfg: CN) -> None:
    """The checks that need no registry (choices, signs, order): run before torch is imported."""
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
    smoothing = cfg.SOLVER.LABEL_SMOOTHING
    if not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"SOLVER.LABEL_SMOOTHING = {smoothing!r}; expected a number in [0, 1) (0.1 is the usual choice)")
    stages = list(cfg.SOLVER.LR_DECAY_STAGES)
    if stages != sorted(stages):
        raise ConfigError(f"SOLVER.LR_DECAY_STAGES = {stages}; expected increasing epochs")
    validate_segmentation_values(cfg)


def validate_segmentation_values(cfg: CN) -> None:
    """The segmentation keys' shapes and ranges (crop, scale range, scenes)."""
    crop = list(cfg.DATASET.CROP_SIZE)
    if len(crop) != 2 or not all(isinstance(v, int) and v > 0 for v in crop):
        raise ConfigError(f"DATASET.CROP_SIZE = {crop}; expected [height, width], two integers > 0")
    scale = list(cfg.DATASET.SCALE_RANGE)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise ConfigError(f"DATASET.SCALE_RANGE = {scale}; expected [low, high] with 0 < low <= high (the field's: [0.5, 2.0])")
    scenes = cfg.DATASET.SCENES
    if scenes.MAX_ITEMS < scenes.MIN_ITEMS:
        raise ConfigError(
            f"DATASET.SCENES.MAX_ITEMS = {scenes.MAX_ITEMS} < DATASET.SCENES.MIN_ITEMS = {scenes.MIN_ITEMS}; "
            "expected MIN_ITEMS <= MAX_ITEMS"
        )
    if scenes.MAX_SCALE < scenes.MIN_SCALE:
        raise ConfigError(
            f"DATASET.SCENES.MAX_SCALE = {scenes.MAX_SCALE} < DATASET.SCENES.MIN_SCALE = {scenes.MIN_SCALE}; "
            "expected MIN_SCALE <= MAX_SCALE"
        )
    if round(28 * scenes.MAX_SCALE) > scenes.SIZE:
        raise ConfigError(
            f"DATASET.SCENES.MAX_SCALE = {scenes.MAX_SCALE}: an item of 28 * {scenes.MAX_SCALE} pixels does not fit "
            f"a DATASET.SCENES.SIZE = {scenes.SIZE} canvas; expected MAX_SCALE <= {scenes.SIZE / 28:.3f}"
        )
    if not 0 <= scenes.THRESHOLD < 1:
        raise ConfigError(f"DATASET.SCENES.THRESHOLD = {scenes.THRESHOLD}; expected a number in [0, 1)")
