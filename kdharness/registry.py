"""Name -> object registries, shaped like mdistiller's plain dicts.

mdistiller keeps `distiller_dict` and `trainer_dict` as plain dicts, and plugins written
for it (ickd_plugin among them) only ever do `registry[name] = obj`. Our `Registry` is a
dict subclass so that such code works unchanged, and adds two things mdistiller lacks:
a decorator for registration and a lookup error that lists the allowed names.

This module is the ground floor: it imports nothing of the host. The components register
themselves when their modules are imported; importing all of them, and the plugins, is
`kdharness.compose`'s job, at the top.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

T = TypeVar("T")


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


def register_distiller(name: str) -> Callable[[T], T]:
    """``@register_distiller("KD")``: the decorator form of ``distiller_dict[name] = cls``."""
    return distiller_dict.register(name)


def register_trainer(name: str) -> Callable[[T], T]:
    return trainer_dict.register(name)


def register_dataset(name: str, task: str = "classification") -> Callable[[T], T]:
    """``@register_dataset("cityscapes", task="segmentation")``: the builder, tagged with the task
    its samples are for (its ``task`` attribute), which ``DATASET.TASK`` must name."""
    register = dataset_dict.register(name)

    def decorate(builder: T) -> T:
        builder.task = task  # type: ignore[attr-defined]
        return register(builder)

    return decorate
