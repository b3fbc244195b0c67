"""ickd_plugin: In-Context Knowledge Distillation (IC-KD) for any mdistiller-compatible harness.

One call plugs it in::

    from mdistiller.distillers import distiller_dict
    from mdistiller.engine import trainer_dict
    from mdistiller.engine.cfg import CFG
    import ickd_plugin
    ickd_plugin.register(distiller_dict, CFG, trainer_dict)

after which ``DISTILLER.TYPE: ICKD`` (with ``SOLVER.TRAINER: ickd`` on mdistiller) trains
IC-KD on top of the distiller named by ``ICKD.BASE``. With an unmodified mdistiller
checkout, ``python -m ickd_plugin.mdistiller --mdistiller PATH --cfg CFG`` does that call and
runs mdistiller's own ``tools/train.py`` (`ickd_plugin.mdistiller`). kdharness calls `register` itself
through its ``kdharness.plugins`` entry point. The package never imports its host.
"""
from __future__ import annotations

from typing import Any, MutableMapping

from ickd_plugin.config import ICKDOptions, get_ickd_defaults, parse_ickd_config
from ickd_plugin.dense_distiller import DenseICKD
from ickd_plugin.distiller import ICKD, ICKDHooks, build_base_distiller
from ickd_plugin.registration import ickd_distiller_class
from ickd_plugin.memory_bank import MemoryBank
from ickd_plugin.trainer import make_ickd_trainer

__all__ = [
    "DenseICKD",
    "ICKD",
    "ICKDHooks",
    "ICKDOptions",
    "MemoryBank",
    "build_base_distiller",
    "get_ickd_defaults",
    "ickd_distiller_class",
    "make_ickd_trainer",
    "parse_ickd_config",
    "register",
]

# Host trainers that get an ICKD variant: mdistiller's "base" and, for ICKD.BASE CRD, "crd".
_WRAPPED_TRAINERS = {"base": "ickd", "crd": "ickd_crd"}


def register(
    distiller_dict: MutableMapping[str, Any],
    CFG: Any,
    trainer_dict: MutableMapping[str, Any] | None = None,
) -> None:
    """Add ``distiller_dict["ICKD"]``, ``CFG.ICKD`` (defaults, if absent) and ICKD trainers. Idempotent.

    ``trainer_dict["ickd"]`` wraps ``trainer_dict["base"]`` (and ``"ickd_crd"`` wraps ``"crd"``
    when present) so that mdistiller's trainers fill and refresh the bank and pass the index.
    """
    current = distiller_dict.get("ICKD") if hasattr(distiller_dict, "get") else None
    if getattr(current, "registry", None) is not distiller_dict:
        distiller_dict["ICKD"] = ickd_distiller_class(distiller_dict)
    if "ICKD" not in CFG:
        frozen = CFG.is_frozen()
        if frozen:
            CFG.defrost()
        try:
            CFG.ICKD = get_ickd_defaults()
        finally:
            if frozen:
                CFG.freeze()
    if trainer_dict is not None:
        for base_name, ickd_name in _WRAPPED_TRAINERS.items():
            if base_name in trainer_dict and not getattr(trainer_dict.get(ickd_name), "_ickd_trainer", False):
                trainer_dict[ickd_name] = make_ickd_trainer(trainer_dict[base_name])
