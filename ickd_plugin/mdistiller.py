"""Train with a real mdistiller checkout and ICKD, without editing mdistiller.

    python -m ickd_plugin.mdistiller --mdistiller PATH --cfg CFG [--resume] [KEY VALUE ...]
    python tools/train_mdistiller.py  --mdistiller PATH --cfg CFG [--resume] [KEY VALUE ...]

`register()` must run in the process that merges the config, before the merge (the YAML's
``ICKD:`` node needs ``CFG.ICKD``), so mdistiller's own ``tools/train.py`` cannot be used as
it is. This launcher registers ICKD, loads ``PATH/tools/train.py`` as a module and runs its
unmodified ``main(cfg, resume, opts)`` after doing what its ``__main__`` block does (the same
arguments, ``merge_from_file``, ``merge_from_list``, ``freeze``). Before freezing it adapts
what mdistiller hard-codes:

* ``DISTILLER.TYPE ICKD`` needs an ICKD trainer: ``SOLVER.TRAINER`` ``base`` or ``crd`` becomes
  ``ickd``, or ``ickd_crd`` for ``ICKD.BASE CRD`` (with a note);
* mdistiller passes ``num_data`` to the distiller and builds the contrastive loader only when
  ``DISTILLER.TYPE`` is ``CRD``; for ``ICKD.BASE CRD`` the launcher gives ``train.py`` a
  ``get_dataset`` that builds CRD's loaders and an ``ICKD`` that receives their ``num_data``
  (only the module's own names are replaced; mdistiller's registries and files are untouched);
* ``LOG.WANDB True`` without wandb installed becomes False with a note (mdistiller's own
  fallback assigns to the frozen config and stops);
* ICKD with several visible GPUs stops before anything is built: train.py wraps the
  distiller in ``DataParallel`` over all of them, which splits the images but not the
  dataset indices ICKD needs (one GPU per run: ``CUDA_VISIBLE_DEVICES=0``).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any, Sequence

import torch

import ickd_plugin

# mdistiller's trainer names and their ICKD counterparts (what `register` adds).
ICKD_TRAINER_FOR = {"base": "ickd", "crd": "ickd_crd", "ickd": "ickd", "ickd_crd": "ickd_crd"}
TRAIN_SCRIPT = os.path.join("tools", "train.py")
ROOT_ENV = "MDISTILLER_ROOT"


def _note(message: str) -> None:
    print(f"[ickd_plugin.mdistiller] {message}", flush=True)


def find_root(path: str | None) -> str:
    """The mdistiller checkout: `path`, else $MDISTILLER_ROOT, else the importable package's parent."""
    candidates = [path] if path else []
    if not path and os.environ.get(ROOT_ENV):
        candidates.append(os.environ[ROOT_ENV])
    if not candidates:
        spec = importlib.util.find_spec("mdistiller")
        if spec is not None and spec.origin:
            candidates.append(os.path.dirname(os.path.dirname(spec.origin)))
    for root in candidates:
        root = os.path.abspath(os.path.expanduser(root))
        if os.path.isfile(os.path.join(root, "mdistiller", "__init__.py")) and os.path.isfile(
            os.path.join(root, TRAIN_SCRIPT)
        ):
            return root
    seen = ", ".join(repr(c) for c in candidates) or f"no --mdistiller, no ${ROOT_ENV}, no importable mdistiller"
    raise SystemExit(
        f"--mdistiller: expected the root of an mdistiller checkout (holding mdistiller/__init__.py "
        f"and {TRAIN_SCRIPT}); got {seen}"
    )


def load_train_module(root: str) -> ModuleType:
    """``root/tools/train.py`` as a module (its ``__main__`` block does not run)."""
    if root not in sys.path:
        sys.path.insert(0, root)
    path = os.path.join(root, TRAIN_SCRIPT)
    spec = importlib.util.spec_from_file_location("mdistiller_tools_train", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    for name in ("main", "cfg", "distiller_dict", "get_dataset", "trainer_dict"):
        if not hasattr(module, name):
            raise SystemExit(f"{path} defines no `{name}`; expected mdistiller's tools/train.py")
    return module


def register_into_mdistiller() -> tuple[Any, Any, Any]:
    """Import mdistiller's registries and CFG (from sys.path) and register ICKD into them."""
    distiller_dict = importlib.import_module("mdistiller.distillers").distiller_dict
    trainer_dict = importlib.import_module("mdistiller.engine").trainer_dict
    cfg = importlib.import_module("mdistiller.engine.cfg").CFG
    ickd_plugin.register(distiller_dict, cfg, trainer_dict)
    return distiller_dict, cfg, trainer_dict


def check_devices(cfg: Any) -> None:
    """Refuse ICKD under mdistiller's multi-GPU DataParallel (it would fail at the first step)."""
    count = torch.cuda.device_count()
    if cfg.DISTILLER.TYPE == "ICKD" and count > 1:
        raise SystemExit(
            f"DISTILLER.TYPE ICKD: mdistiller's train.py wraps the distiller in DataParallel over all "
            f"{count} visible GPUs, which splits each batch's images but not their dataset indices; "
            f"run on one GPU, e.g. CUDA_VISIBLE_DEVICES=0"
        )


def check_ickd_values(cfg: Any, distiller_dict: Any) -> None:
    """Bad ``ICKD.*`` values stop here, before mdistiller's train.py reads data or weights."""
    if cfg.DISTILLER.TYPE == "ICKD":
        try:
            distiller_dict["ICKD"].check_config(cfg)
        except ValueError as error:
            raise SystemExit(f"error: {error}") from error


def uses_crd_base(cfg: Any) -> bool:
    return cfg.DISTILLER.TYPE == "ICKD" and cfg.ICKD.BASE == "CRD"


def adapt_config(cfg: Any) -> None:
    """Set (with a note) what mdistiller's train.py needs for ICKD; `cfg` is not frozen yet."""
    if cfg.DISTILLER.TYPE == "ICKD":
        trainer = cfg.SOLVER.TRAINER
        if trainer in ICKD_TRAINER_FOR:
            wanted = "ickd_crd" if uses_crd_base(cfg) else "ickd"
            if trainer != wanted:
                _note(f"SOLVER.TRAINER {trainer!r} -> {wanted!r} (ICKD with base {cfg.ICKD.BASE} on mdistiller)")
                cfg.SOLVER.TRAINER = wanted
    if "LOG" in cfg and cfg.LOG.get("WANDB", False) and importlib.util.find_spec("wandb") is None:
        _note("LOG.WANDB True but wandb is not installed: LOG.WANDB -> False (tensorboard logs only)")
        cfg.LOG.WANDB = False


def patch_for_crd_base(train: ModuleType) -> None:
    """Give train.py's ``main`` CRD's loaders and ``num_data`` when ICKD.BASE is CRD.

    mdistiller keys both on ``DISTILLER.TYPE == "CRD"``. Only the train module's names
    ``get_dataset`` and ``distiller_dict`` are replaced (by a wrapper and a copy).
    """
    original_get_dataset = train.get_dataset
    ickd_cls = train.distiller_dict["ICKD"]
    sizes: dict[str, int] = {}

    def get_dataset(cfg: Any) -> Any:
        if not uses_crd_base(cfg):
            return original_get_dataset(cfg)
        as_crd = cfg.clone()
        as_crd.defrost()
        as_crd.DISTILLER.TYPE = "CRD"
        loaders = original_get_dataset(as_crd)
        sizes["num_data"] = loaders[2]
        return loaders

    class ICKD(ickd_cls):  # type: ignore[misc, valid-type]
        def __init__(self, student: Any, teacher: Any, cfg: Any, num_data: int | None = None) -> None:
            super().__init__(student, teacher, cfg, sizes.get("num_data") if num_data is None else num_data)

    ICKD.__qualname__ = "ICKD"
    train.get_dataset = get_dataset
    train.distiller_dict = {**train.distiller_dict, "ICKD": ICKD}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        "python -m ickd_plugin.mdistiller",
        description="mdistiller's tools/train.py with ICKD registered (same --cfg, --resume and KEY VALUE opts).",
    )
    parser.add_argument("--mdistiller", default=None, help=f"mdistiller checkout (default: ${ROOT_ENV})")
    parser.add_argument("--cfg", type=str, default="")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    root = find_root(args.mdistiller)
    if root not in sys.path:
        sys.path.insert(0, root)
    distiller_dict, _, _ = register_into_mdistiller()
    train = load_train_module(root)
    cfg = train.cfg
    if not args.cfg or not os.path.isfile(args.cfg):
        raise SystemExit(f"--cfg: no such config file: {args.cfg!r}")
    cfg.merge_from_file(args.cfg)
    cfg.merge_from_list(args.opts)
    adapt_config(cfg)
    check_ickd_values(cfg, distiller_dict)
    check_devices(cfg)
    if uses_crd_base(cfg):
        patch_for_crd_base(train)
    cfg.freeze()
    train.main(cfg, args.resume, args.opts)


if __name__ == "__main__":
    main()
