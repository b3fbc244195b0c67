"""Name -> object registries, shaped like mdistiller's plain dicts.

mdistiller keeps `distiller_dict` and `trainer_dict` as plain dicts, and plugins written
for it (ickd_plugin among them) only ever do `registry[name] = obj`. Our `Registry` is a
dict subclass so that such code works unchanged, and adds two things mdistiller lacks:
a decorator for registration and a lookup error that lists the allowed names.

Plugins are discovered through the ``kdharness.plugins`` entry-point group: each entry
point names a callable ``register(distiller_dict, CFG, trainer_dict)``, the same one-call
signature a user would call by hand on a real mdistiller checkout.
"""
from __future__ import annotations

import os
from importlib.metadata import entry_points
from typing import Any, Callable, TypeVar

T = TypeVar("T")

PLUGIN_ENTRY_POINT_GROUP = "kdharness.plugins"


class Registry(dict):
    """A dict of named components whose missing-key error says what exists."""

    def __init__(self, kind: str, config_key: str | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.config_key = config_key

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@distiller_dict.register("KD")``."""

        def decorate(obj: T) -> T:
            if name in self and self[name] is not obj:
                raise KeyError(f"{self.kind} {name!r} is already registered as {self[name]!r}")
            self[name] = obj
            return obj

        return decorate

    def __missing__(self, name: Any) -> Any:
        where = f" (config key {self.config_key})" if self.config_key else ""
        raise KeyError(
            f"unknown {self.kind} {name!r}{where}; registered: {', '.join(sorted(map(str, self)))}"
        )


distiller_dict = Registry("distiller", "DISTILLER.TYPE")
trainer_dict = Registry("trainer", "SOLVER.TRAINER")
dataset_dict = Registry("dataset", "DATASET.TYPE")

_plugins_loaded = False


def register_distiller(name: str) -> Callable[[T], T]:
    """``@register_distiller("KD")``: the decorator form of ``distiller_dict[name] = cls``."""
    return distiller_dict.register(name)


def register_trainer(name: str) -> Callable[[T], T]:
    return trainer_dict.register(name)


def register_dataset(name: str) -> Callable[[T], T]:
    return dataset_dict.register(name)


def load_builtin_components() -> None:
    """Import the host's own datasets, distillers, trainers and models (which register
    themselves), then the installed plugins: a config can only be checked after that."""
    import kdharness.data  # noqa: F401
    import kdharness.distillers  # noqa: F401
    import kdharness.engine.trainer  # noqa: F401
    import kdharness.engine.dot  # noqa: F401  (the dot / crd_dot trainers)
    import kdharness.models  # noqa: F401

    load_plugins()


def load_plugins() -> list[str]:
    """Call every installed plugin's ``register(distiller_dict, CFG, trainer_dict)`` once.

    Returns the names of the entry points that were loaded. Setting the environment
    variable KDHARNESS_NO_PLUGINS=1 skips them (to tell a broken plugin from a host bug). A plugin that fails to import
    is an error, not a silent skip: a user who installed it expects its distillers to exist.
    """
    global _plugins_loaded
    from kdharness.config import CFG  # late import: config imports nothing from here

    loaded = []
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
