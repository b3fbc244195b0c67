"""Teacher checkpoints: where they are (mdistiller's layout or DISTILLER.TEACHER_WEIGHTS) and loading them.

mdistiller's published CIFAR teachers are ``{"model": state_dict, ...}`` files under
``download_ckpts/cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth``; other tools save a
``"state_dict"`` entry, a bare state_dict, or keys prefixed by DataParallel (``module.``) or
by a distiller (``student.``). All of those load here. Every failure says which config key
and file are involved and what was expected, since a wrong teacher file is the most common
way a distillation run silently goes wrong.
"""
from __future__ import annotations

import codecs
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from yacs.config import CfgNode

from kdharness.config import ConfigError
from kdharness.engine.checkpoint import CheckpointError, load_weights_only  # the one error for unusable checkpoint files

TEACHER_KEY = "DISTILLER.TEACHER_WEIGHTS"
BACKBONE_KEY = "DISTILLER.STUDENT_BACKBONE_WEIGHTS"
CIFAR_TEACHER_DIR = os.path.join("download_ckpts", "cifar_teachers")
MDISTILLER_LAYOUT = os.path.join(CIFAR_TEACHER_DIR, "<TEACHER>_vanilla", "ckpt_epoch_240.pth")

# How many names of each kind of mismatch an error message shows.
_SHOW = 5
# File sniffing: the bytes read, and torch.save's zip format's first four.
_SNIFF_BYTES = 512
_ZIP_MAGIC = b"PK\x03\x04"

__all__ = [
    "CheckpointError",
    "MDISTILLER_LAYOUT",
    "check_checkpoint_format",
    "extract_state_dict",
    "load_backbone_weights",
    "load_teacher_weights",
    "load_weights",
    "resolve_teacher_path",
]


def resolve_teacher_path(cfg: CfgNode) -> str:
    """``DISTILLER.TEACHER_WEIGHTS`` if set; else mdistiller's path for CIFAR-100 teachers.

    The default is relative to the working directory, as in mdistiller (which runs from its
    repository root). Only CIFAR-100 has such a layout; other datasets must name the file.
    """
    explicit = cfg.DISTILLER.TEACHER_WEIGHTS
    if explicit:
        return os.path.expanduser(explicit)
    dataset_type = cfg.DATASET.TYPE
    if dataset_type == "cifar100":
        return os.path.join(CIFAR_TEACHER_DIR, f"{cfg.DISTILLER.TEACHER}_vanilla", "ckpt_epoch_240.pth")
    raise ConfigError(
        f"{TEACHER_KEY} is empty and DATASET.TYPE = {dataset_type!r} has no default teacher location "
        f"(only cifar100 uses mdistiller's {MDISTILLER_LAYOUT}); set {TEACHER_KEY} to the checkpoint "
        f"of {cfg.DISTILLER.TEACHER!r}, e.g. torchvision's ImageNet weights for imagenet"
    )


def load_teacher_weights(model: nn.Module, cfg: CfgNode) -> str:
    """Load the teacher checkpoint that ``cfg`` points to into ``model``; returns the path used."""
    path = resolve_teacher_path(cfg)
    load_weights(model, path, key_name=TEACHER_KEY)
    return path


def load_weights(
    model: nn.Module,
    path: str,
    key_name: str = TEACHER_KEY,
    *,
    state_dict: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Load the checkpoint at ``path`` into ``model`` (strictly); ``key_name`` is the config key named in errors.

    A caller that has already read (and perhaps filtered) the checkpoint passes it as
    ``state_dict``; ``path`` then only names the source in messages.
    """
    checkpoint = _read_checkpoint(path, key_name) if state_dict is None else state_dict
    state_dict = extract_state_dict(checkpoint, path)
    _check_compatible(model, state_dict, path, key_name)
    model.load_state_dict(state_dict, strict=False)  # strictness checked above, num_batches_tracked aside
    return model


def load_backbone_weights(model: nn.Module, path: str, key_name: str = BACKBONE_KEY) -> nn.Module:
    """Fill a segmentation model's backbone from an ImageNet checkpoint of torchvision's layout.

    The backbone (``model.get_backbone()``) keeps torchvision's parameter names; the entries
    it has no use for (the ImageNet classifier: ``backbone.imagenet_extra_prefixes``) are
    dropped, and every other key must fit, strictly, as for a teacher. The decoder and
    classifier keep their initialisation.
    """
    get_backbone = getattr(model, "get_backbone", None)
    if get_backbone is None:
        raise ConfigError(
            f"{key_name} = {path!r}, but {_describe(model)[0]} has no backbone to fill; the key is for "
            "segmentation models (kdharness/models/segmentation/); leave it empty"
        )
    backbone = get_backbone()
    state_dict = extract_state_dict(_read_checkpoint(path, key_name), path)
    extra = tuple(getattr(backbone, "imagenet_extra_prefixes", ()))
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(extra)} if extra else state_dict
    _check_compatible(backbone, state_dict, path, key_name)
    backbone.load_state_dict(state_dict, strict=False)  # strictness checked above, num_batches_tracked aside
    return model


def _read_checkpoint(path: str, key_name: str) -> Any:
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{key_name} = {path!r}: no such file (working directory {os.getcwd()!r}). "
            f"mdistiller's CIFAR-100 teachers are expected at {MDISTILLER_LAYOUT}: download "
            "cifar_teachers.tar from mdistiller's GitHub release and unpack it into download_ckpts/, "
            f"or set {key_name} to the checkpoint file"
        )
    if os.path.isdir(path):
        raise CheckpointError(f"{key_name} = {path!r} is a directory; expected a checkpoint file (.pth)")
    check_checkpoint_format(path, key_name)
    return load_weights_only(path, "cpu", source=f"{key_name} = {path!r}")


def check_checkpoint_format(path: str, key_name: str = TEACHER_KEY) -> None:
    """Refuse a file that is no ``torch.save`` output, saying what it is instead.

    ``torch.save`` writes a zip archive (``PK\\x03\\x04``) or, in the legacy format, a
    pickle (``\\x80`` then the protocol). Anything else fed to ``torch.load`` fails with
    an error about the unpickler (``KeyError: 116`` for a saved URL, an advice to allow-list
    globals for an HTML page): the usual culprits are named here instead.
    """
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    if head.startswith(_ZIP_MAGIC) or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return
    raise CheckpointError(
        f"{key_name} = {path!r} is not a PyTorch checkpoint: {_describe_file(head)}. "
        f"Point {key_name} to the .pth file written by torch.save (download it again if needed)"
    )


def _describe_file(head: bytes) -> str:
    if not head:
        return "the file is empty"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "it is a tar archive; unpack it (tar xf) and point to the checkpoint inside"
    if head.startswith(b"\x1f\x8b"):
        return "it is a gzip archive; unpack it first"
    try:  # incremental: a character cut at the end of `head` is not an error
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return f"it starts with the bytes {head[:8]!r}, neither a zip archive nor a pickle"
    first = text.strip().splitlines()[0][:80] if text.strip() else ""
    lowered = text.lower()
    if lowered.startswith("version https://git-lfs"):
        return "it is a git-lfs pointer, not the file (run `git lfs pull` in its repository)"
    if "<html" in lowered or "<!doctype" in lowered:
        return f"it is an HTML page (a failed download saves the server's page, e.g. 'Not Found'), starting {first!r}"
    return f"it is a text file starting {first!r}"


def extract_state_dict(checkpoint: Any, path: str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The model weights inside ``checkpoint``, with wrapper prefixes removed.

    Accepts mdistiller's ``{"model": ...}``, ``{"state_dict": ...}`` or a bare state_dict;
    strips DataParallel/DDP's ``module.`` and then a distiller's ``student.`` when every key
    carries it.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path!r} holds a {type(checkpoint).__name__}, not a dict of weights")
    state_dict: Any = checkpoint
    for entry in ("model", "state_dict"):
        if isinstance(checkpoint.get(entry), Mapping):
            state_dict = checkpoint[entry]
            break
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if not tensors or not all(isinstance(k, str) for k in tensors):
        raise CheckpointError(
            f"{path!r} has no weights: expected a state_dict, or one under 'model' (mdistiller) or "
            f"'state_dict'; top-level keys: {_preview(list(map(str, checkpoint)))}"
        )
    if len(tensors) != len(state_dict):
        others = [k for k in state_dict if k not in tensors]
        raise CheckpointError(f"{path!r}: the state_dict has non-tensor entries: {_preview(others)}")
    for prefix in ("module.", "student."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def _check_compatible(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: str, key_name: str) -> None:
    expected = model.state_dict()
    # Checkpoints from before PyTorch 0.4.1 lack BN's counters; they do not affect the model.
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {_preview(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_preview(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches: {_preview(mismatched)}")
    hint = ""
    if unexpected and any(k.startswith(("student.", "teacher.")) for k in unexpected):
        hint = " It looks like a whole-distiller checkpoint; save or pass the student/teacher weights alone."
    arch, num_classes = _describe(model)
    raise CheckpointError(
        f"{key_name} = {path!r} does not fit the model: {'; '.join(parts)}. "
        f"Is this a checkpoint of {arch} with {num_classes} classes?{hint}"
    )


def _describe(model: nn.Module) -> tuple[str, str]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture") or type(model).__name__
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None and hasattr(model, "get_classifier"):
        num_classes = getattr(model.get_classifier(), "out_features", None)
    return arch, str(num_classes if num_classes is not None else "?")


def _preview(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else "")
