"""Memory bank: the no-augmentation pass, the on-disk cache (reuse, invalidation, corruption), refresh."""
from __future__ import annotations

import os

import pytest
import torch

from ickd_plugin.memory_bank import (
    MemoryBank,
    bank_cache_key,
    cache_path,
    load_bank_cache,
    no_augmentation_view,
)
from test_ickd_distiller import AddNoise, TinyNet, count_forwards, make_ickd, make_trainer


def cached_ickd(cache_dir, **ickd):
    return make_ickd(BASE="KD", **{"BANK.USE_CACHE": True, "BANK.CACHE_DIR": str(cache_dir)}, **ickd)


def bank_file(distiller, trainer) -> str:
    view = no_augmentation_view(trainer.train_loader.dataset, trainer.val_loader.dataset)
    key = bank_cache_key(distiller.teacher, view, distiller.opts.bank_dtype)
    return cache_path(distiller.opts.cache_dir, key)


def build(distiller) -> tuple[list[int], object]:
    trainer = make_trainer(distiller)
    calls = count_forwards(distiller.teacher)
    distiller.trainer_hooks()[0].before_train(trainer)
    return calls, trainer


def test_bank_holds_teacher_features_without_augmentation() -> None:
    distiller = make_ickd(BASE="KD")
    _, trainer = build(distiller)
    dataset = trainer.train_loader.dataset
    with torch.no_grad():
        _, feats = distiller.teacher.eval()(dataset.images)
    assert torch.allclose(distiller.bank.features, feats["pooled_feat"], atol=1e-6)
    assert distiller.bank.labels.tolist() == dataset.targets
    assert torch.allclose(distiller.bank.inv_norms, 1 / feats["pooled_feat"].norm(dim=1), atol=1e-5)
    assert isinstance(dataset.transform, AddNoise), "the view is a copy: the training set keeps its augmentation"


def test_cache_is_reused_and_build_is_idempotent(tmp_path) -> None:
    first = cached_ickd(tmp_path)
    calls, trainer = build(first)
    assert calls[0] > 0
    assert os.listdir(tmp_path) == [os.path.basename(bank_file(first, trainer))]  # no temporary file left
    n_first = calls[0]
    first.trainer_hooks()[0].before_train(trainer)
    assert calls[0] == n_first, "a second before_train with the same teacher is a no-op"
    second = cached_ickd(tmp_path)  # same seed: same teacher weights
    calls, _ = build(second)
    assert calls[0] == 0, "the cached bank must be loaded, not recomputed"
    assert torch.equal(second.bank.features, first.bank.features)
    assert torch.equal(second.bank.labels, first.bank.labels)


def test_changed_teacher_rebuilds(tmp_path) -> None:
    build(cached_ickd(tmp_path))
    changed = cached_ickd(tmp_path)
    with torch.no_grad():
        changed.teacher.fc.bias.add_(1.0)
    calls, _ = build(changed)
    assert calls[0] > 0
    assert len(os.listdir(tmp_path)) == 2


def _rewrite(path: str, edit) -> None:
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)


@pytest.mark.parametrize(
    "damage,reason",
    [
        (lambda p: _rewrite(p, lambda d: d.__setitem__("key", "0" * 64)), "key mismatch"),
        (lambda p: _rewrite(p, lambda d: d["features"].mul_(2)), "checksum mismatch"),
        (lambda p: open(p, "r+b").truncate(os.path.getsize(p) // 2), "unreadable"),
        (lambda p: open(p, "wb").write(b"not a torch file"), "unreadable"),
    ],
    ids=["key", "checksum", "truncated", "garbage"],
)
def test_bad_cache_file_warns_and_rebuilds(tmp_path, damage, reason: str) -> None:
    first = cached_ickd(tmp_path)
    _, trainer = build(first)
    path = bank_file(first, trainer)
    damage(path)
    second = cached_ickd(tmp_path)
    with pytest.warns(UserWarning, match=rf"(?s){path}.*{reason}.*rebuilding"):
        calls, _ = build(second)
    assert calls[0] > 0
    assert torch.allclose(second.bank.features, first.bank.features)
    assert load_bank_cache(path, bank_key(second, trainer)) is not None, "the rebuilt bank is written back"


def bank_key(distiller, trainer) -> str:
    view = no_augmentation_view(trainer.train_loader.dataset, trainer.val_loader.dataset)
    return bank_cache_key(distiller.teacher, view, distiller.opts.bank_dtype)


def test_key_depends_on_weights_data_transform_and_dtype() -> None:
    torch.manual_seed(0)
    teacher = TinyNet()
    distiller = make_ickd(BASE="KD")
    trainer = make_trainer(distiller)
    view = no_augmentation_view(trainer.train_loader.dataset, trainer.val_loader.dataset)
    key = bank_cache_key(teacher, view, torch.float32)
    assert bank_cache_key(teacher, view, torch.float32) == key
    assert bank_cache_key(teacher, view, torch.float16) != key
    other_transform = no_augmentation_view(trainer.train_loader.dataset, trainer.train_loader.dataset)
    assert bank_cache_key(teacher, other_transform, torch.float32) != key
    relabelled = no_augmentation_view(trainer.train_loader.dataset, trainer.val_loader.dataset)
    relabelled.targets = list(reversed(relabelled.targets))
    assert bank_cache_key(teacher, relabelled, torch.float32) != key
    with torch.no_grad():
        teacher.body[0].weight[0, 0] += 1e-3
    assert bank_cache_key(teacher, view, torch.float32) != key


def test_refresh_formula_on_one_row() -> None:
    bank = MemoryBank()
    bank.fill(torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]), torch.tensor([0, 1, 1]), torch.arange(3), 2, "cpu")
    # row 1 <- 0.5 * [0, 2] + 0.5 * [4, 0] = [2, 1]; |[2, 1]| = sqrt(5); index 7 is not in the bank
    bank.refresh(torch.tensor([1, -1]), torch.tensor([[4.0, 0.0], [9.0, 9.0]]), momentum=0.5)
    assert bank.features.tolist() == [[1.0, 0.0], [2.0, 1.0], [3.0, 4.0]]
    assert torch.allclose(bank.inv_norms, torch.tensor([1.0, 5 ** -0.5, 0.2]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_bank(dtype: torch.dtype) -> None:
    name = {torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
    distiller = make_ickd(BASE="KD", **{"BANK.DTYPE": name})
    _, trainer = build(distiller)
    assert distiller.bank.features.dtype == dtype
    image, target, index = next(iter(trainer.train_loader))
    _, losses = distiller.train()(image=image, target=target, index=index, epoch=1)
    assert torch.isfinite(losses["loss_picd"]) and torch.isfinite(losses["loss_nicd"])


def test_persistent_bank_loads_into_an_empty_one() -> None:
    source = MemoryBank(persistent=True)
    source.fill(torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1]), torch.arange(5), 2, "cpu")
    target = MemoryBank(persistent=True)
    target.load_state_dict(source.state_dict())
    assert target.is_built and torch.equal(target.features, source.features)
    assert torch.equal(target.class_rows, source.class_rows)
    assert MemoryBank(persistent=False).state_dict() == {}


def _distributed_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        distiller = make_ickd(BASE="KD", PARADIGM="online")
        trainer = make_trainer(distiller)
        distiller.trainer_hooks()[0].before_train(trainer)  # each rank reads rows rank::world, then all-gather
        built = distiller.bank.features.clone()
        # each rank refreshes different rows; after the all-gather every bank holds all updates
        index = torch.tensor([rank, 10 + rank])
        distiller._pending_refresh = (index, torch.full((2, built.shape[1]), float(rank + 1)))
        distiller.refresh_bank()
        torch.save({"built": built, "refreshed": distiller.bank.features}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned gloo processes: ~10 s of start-up on 2 cores
def test_distributed_build_and_refresh_keep_ranks_identical(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = make_ickd(BASE="KD", PARADIGM="online")
    single.trainer_hooks()[0].before_train(make_trainer(single))
    assert torch.allclose(results[0]["built"], single.bank.features, atol=1e-6)
    assert torch.equal(results[0]["built"], results[1]["built"])
    assert torch.equal(results[0]["refreshed"], results[1]["refreshed"])
    expected = results[0]["built"].clone()
    for rank in range(2):
        for row in (rank, 10 + rank):
            expected[row] = 0.5 * expected[row] + 0.5 * (rank + 1)
    assert torch.allclose(results[0]["refreshed"], expected, atol=1e-6)
