"""A trainer subclass for hosts whose trainer knows nothing of ICKD (mdistiller).

mdistiller's BaseTrainer has no hooks and drops each batch's dataset index before calling
the distiller, but ICKD needs the index (self-exclusion, bank refresh) and a filled bank.
`make_ickd_trainer(base_cls)` adds exactly that, without copying any of the base's logic:
train() fills the bank first, train_iter() leaves the index on the distiller before the
base's step and refreshes the bank after it. A host trainer that calls distiller hooks
itself (it has a `hooks` attribute, as kdharness' does) is left to do so.
"""
from __future__ import annotations

from typing import Any

from ickd_plugin.distiller import INDEX_STASH
from ickd_plugin.features import unwrap


def _distiller_hooks(distiller: Any) -> list[Any]:
    getter = getattr(unwrap(distiller), "trainer_hooks", None)
    if not callable(getter):
        return []
    return list(getter())


def make_ickd_trainer(base_cls: type) -> type:
    """Subclass `base_cls` (an mdistiller-style trainer class) so that it can train ICKD."""
    if getattr(base_cls, "_ickd_trainer", False):
        return base_cls

    class ICKDTrainer(base_cls):  # type: ignore[misc, valid-type]
        _ickd_trainer = True

        def _host_calls_hooks(self) -> bool:
            return hasattr(self, "hooks")

        def train(self, resume: bool = False, *args: Any, **kwargs: Any) -> Any:
            if not self._host_calls_hooks():
                for hook in _distiller_hooks(self.distiller):
                    if hasattr(hook, "before_train"):
                        hook.before_train(self)
            return super().train(resume, *args, **kwargs)

        def train_iter(self, data: Any, epoch: int, train_meters: Any, *args: Any, **kwargs: Any) -> Any:
            if len(data) > 2:
                setattr(unwrap(self.distiller), INDEX_STASH, data[2])
            result = super().train_iter(data, epoch, train_meters, *args, **kwargs)
            if not self._host_calls_hooks():
                self._ickd_step = getattr(self, "_ickd_step", 0) + 1
                for hook in _distiller_hooks(self.distiller):
                    if hasattr(hook, "after_step"):
                        hook.after_step(self, self._ickd_step, None)
            return result

    ICKDTrainer.__name__ = ICKDTrainer.__qualname__ = f"ICKD{base_cls.__name__}"
    return ICKDTrainer
