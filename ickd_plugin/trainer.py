"""A trainer subclass for hosts whose trainer knows nothing of ICKD (mdistiller).

mdistiller's trainers have no hooks; its BaseTrainer drops each batch's dataset index before
calling the distiller and its CRDTrainer drops the epoch, but ICKD needs both (self-exclusion
and bank refresh; the warm-up ramp) and a filled bank. `make_ickd_trainer(base_cls)` adds
exactly that, without copying any of the base's logic: the first train_epoch() fills the bank
(after train(resume=True) has loaded a checkpoint, so a bank restored from it is not built
twice), train_iter() leaves the index and the epoch on the distiller before the base's step
and refreshes the bank after it. A host trainer that calls distiller hooks itself (it has a
`hooks` attribute, as kdharness' does) is left to do so.
"""
from __future__ import annotations

from typing import Any

from ickd_plugin.distiller import EPOCH_STASH, INDEX_STASH
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
    # mdistiller's train() loads the checkpoint and then calls train_epoch(); preparing there
    # sees the restored bank. A base without train_epoch is prepared at the start of train().
    prepare_in_epoch = callable(getattr(base_cls, "train_epoch", None))

    class ICKDTrainer(base_cls):  # type: ignore[misc, valid-type]
        _ickd_trainer = True

        def _host_calls_hooks(self) -> bool:
            return hasattr(self, "hooks")

        def _ickd_before_train(self) -> None:
            if self._host_calls_hooks() or getattr(self, "_ickd_prepared", False):
                return
            self._ickd_prepared = True
            for hook in _distiller_hooks(self.distiller):
                if hasattr(hook, "before_train"):
                    hook.before_train(self)

        def train(self, resume: bool = False, *args: Any, **kwargs: Any) -> Any:
            if not prepare_in_epoch:
                self._ickd_before_train()
            return super().train(resume, *args, **kwargs)

        if prepare_in_epoch:

            def train_epoch(self, epoch: int, *args: Any, **kwargs: Any) -> Any:
                self._ickd_before_train()
                return super().train_epoch(epoch, *args, **kwargs)

        def train_iter(self, data: Any, epoch: int, train_meters: Any, *args: Any, **kwargs: Any) -> Any:
            distiller = unwrap(self.distiller)
            if len(data) > 2:
                setattr(distiller, INDEX_STASH, data[2])
            setattr(distiller, EPOCH_STASH, epoch)
            result = super().train_iter(data, epoch, train_meters, *args, **kwargs)
            if not self._host_calls_hooks():
                self._ickd_step = getattr(self, "_ickd_step", 0) + 1
                for hook in _distiller_hooks(self.distiller):
                    if hasattr(hook, "after_step"):
                        hook.after_step(self, self._ickd_step, None)
            return result

    ICKDTrainer.__name__ = ICKDTrainer.__qualname__ = f"ICKD{base_cls.__name__}"
    return ICKDTrainer
