"""A memory-bank cache that cannot be written or read is a warning: the bank is built and training goes on."""
from __future__ import annotations

import os

import pytest
import torch

from ickd_plugin.bank_cache import bank_cache_key, cache_path
from ickd_plugin.training_view import no_augmentation_view
from test_ickd_distiller import first_batch, make_ickd, make_trainer


def _step(distiller, trainer) -> torch.Tensor:
    distiller.train()
    image, target, index = first_batch(trainer)
    _, losses = distiller(image=image, target=target, index=index, epoch=1)
    return sum(loss.mean() for loss in losses.values())


def test_a_cache_directory_that_cannot_be_created_is_a_warning(tmp_path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    # a path through a regular file fails for every user, root included (unlike a chmod)
    distiller = make_ickd(BASE="KD", **{"BANK.USE_CACHE": True, "BANK.CACHE_DIR": str(blocker / "cache")})
    trainer = make_trainer(distiller)
    with pytest.warns(UserWarning, match=r"could not write it \(.*ENOTDIR\); training on without the cache"):
        distiller.trainer_hooks()[0].before_train(trainer)
    assert distiller.bank.is_built
    assert torch.isfinite(_step(distiller, trainer))


def test_an_unreadable_cache_file_is_a_warning_and_the_bank_is_rebuilt(tmp_path) -> None:
    distiller = make_ickd(BASE="KD", **{"BANK.USE_CACHE": True, "BANK.CACHE_DIR": str(tmp_path)})
    trainer = make_trainer(distiller)
    view = no_augmentation_view(trainer.train_loader.dataset, trainer.val_loader.dataset)
    path = cache_path(str(tmp_path), bank_cache_key(distiller.teacher, view, torch.float32))
    os.makedirs(path)  # where the cache file should be, a directory: reading it fails
    with pytest.warns(UserWarning, match=r"unreadable or truncated \(IsADirectoryError"):
        distiller.trainer_hooks()[0].before_train(trainer)
    assert distiller.bank.is_built
    assert torch.isfinite(_step(distiller, trainer))
