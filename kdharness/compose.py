"""The top floor: put the host together (its datasets, distillers, trainers, models and the
installed plugins), then load a config against it.

Every other module of kdharness sits below this one. The registries are a leaf and the
components register themselves on import; only here is "everything" imported, so the
imports of the house all point down (tests/test_import_graph.py keeps it so).

`load_config` checks what needs only the YAML file and the host's own config tree first,
before anything imports torch: a missing file, a YAML syntax error or a misspelt key of a
host node is reported in a fraction of a second instead of after seconds of imports.
"""
from __future__ import annotations

import os
from importlib.metadata import entry_points
from typing import Iterable

from yacs.config import CfgNode

from kdharness.config import (
    CFG,
    ConfigError,
    get_cfg_defaults,
    merge_config,
    override_pairs,
    read_config_file,
    validate_config,
    validate_values,
)
from kdharness.registry import distiller_dict, trainer_dict

PLUGIN_ENTRY_POINT_GROUP = "kdharness.plugins"

_plugins_loaded = False


def load_builtin_components() -> None:
    """Import the host's own datasets, distillers, trainers and models (which register
    themselves), then the installed plugins: a config can only be checked after that."""
    import kdharness.data  # noqa: F401  (import registers)
    import kdharness.distillers  # noqa: F401
    import kdharness.engine.trainer  # noqa: F401
    import kdharness.engine.dot  # noqa: F401  (the dot / crd_dot trainers)
    import kdharness.models  # noqa: F401

    load_plugins()


def load_plugins() -> list[str]:
    """Call every installed plugin's ``register(distiller_dict, CFG, trainer_dict)`` once.

    Returns the names of the entry points that were loaded. Setting the environment
    variable KDHARNESS_NO_PLUGINS=1 skips them (to tell a broken plugin from a host bug). A
    plugin that fails to import is an error, not a silent skip: a user who installed it
    expects its distillers to exist.
    """
    global _plugins_loaded
    loaded: list[str] = []
    if _plugins_loaded or os.environ.get("KDHARNESS_NO_PLUGINS"):
        return loaded
    for entry in entry_points(group=PLUGIN_ENTRY_POINT_GROUP):
        try:
            register = entry.load()
        except Exception as error:  # pragma: no cover - depends on the installed plugin
            raise ImportError(f"plugin entry point {entry.name!r} ({entry.value}) failed to load: {error}") from error
        register(distiller_dict, CFG, trainer_dict)
        loaded.append(entry.name)
    _plugins_loaded = True
    return loaded


def load_config(path: str | None, opts: Iterable[str] = ()) -> CfgNode:
    """Defaults <- YAML file <- ``KEY VALUE`` overrides, validated; returns a frozen node.

    Raises ConfigError naming the file or the override, the value and what is allowed.
    """
    data = read_config_file(path) if path else {}
    pairs = override_pairs(opts)
    source = path or "<defaults>"
    # Quick pass over the host's nodes: no component is imported yet.
    validate_values(merge_config(get_cfg_defaults(), data, pairs, source, known_nodes_only=True))
    load_builtin_components()
    cfg = merge_config(get_cfg_defaults(), data, pairs, source)
    validate_config(cfg)
    check_distiller_config(cfg)
    check_model_names(cfg)
    cfg.freeze()
    return cfg


def check_distiller_config(cfg: CfgNode) -> None:
    """The distiller's own node (``ICKD.K``, ...), checked before any data or model is built.

    A distiller class may define the classmethod ``check_config(cfg)``, raising ValueError
    that names the key; without it, its values are checked when it is constructed. Its
    ``tasks`` (the host's distillers declare them) must hold ``DATASET.TASK``.
    """
    from kdharness.distillers._base import check_task

    cls = distiller_dict[cfg.DISTILLER.TYPE]
    try:
        check_task(cls, cfg, cfg.DISTILLER.TYPE)
        check = getattr(cls, "check_config", None)
        if check is not None:
            check(cfg)
    except ValueError as error:
        raise ConfigError(str(error)) from error


def check_model_names(cfg: CfgNode) -> None:
    """``DISTILLER.STUDENT`` (and ``TEACHER`` unless the distiller needs none) are models of the dataset."""
    from kdharness.models import check_model_name

    check_model_name(cfg.DISTILLER.STUDENT, cfg.DATASET.TYPE, "DISTILLER.STUDENT")
    requirement = getattr(distiller_dict[cfg.DISTILLER.TYPE], "teacher_requirement", None)
    if requirement is None or requirement(cfg) != "none":
        check_model_name(cfg.DISTILLER.TEACHER, cfg.DATASET.TYPE, "DISTILLER.TEACHER")
