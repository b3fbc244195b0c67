"""Memory bank: the no-augmentation pass, the on-disk cache (reuse, invalidation, corruption), refresh."""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from float_tolerance import sum_atol
from ickd_plugin.bank_cache import bank_cache_key, cache_path, load_bank_cache
from ickd_plugin.memory_bank import MemoryBank
from ickd_plugin.training_view import no_augmentation_view
from test_ickd_distiller import AddNoise, TensorSet, TinyNet, count_forwards, make_data, make_ickd, make_trainer

# The stand-in datasets keep their images in `images`, which the cache key cannot see; the
# warning that says so is tested once, below.
# Bank features against a float64-bounded reference: numerics, run on a second kernel path too.
pytestmark = [pytest.mark.filterwarnings("ignore:ICKD memory-bank cache key:UserWarning"), pytest.mark.numerics]


class Scale:
    """A deterministic transform other than the validation one."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


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


def _pooled_atol(teacher, images: torch.Tensor) -> float:
    """Float32 error bound of TinyNet's pooled feature (Linear -> eval BatchNorm -> ReLU), twice
    (the bank pass and the reference both round): the Linear's sum over its inputs, carried
    through the BatchNorm's scale |gamma| / sqrt(running_var + eps); ReLU adds none."""
    linear, bn = teacher.body[0], teacher.body[1]
    scale = bn.weight.abs() / (bn.running_var + bn.eps).sqrt()
    pre_bn = images.flatten(1).abs() @ linear.weight.abs().t() + linear.bias.abs() + bn.running_mean.abs()
    magnitude = pre_bn * scale + bn.bias.abs()
    return 2 * sum_atol(magnitude.max().item(), n_terms=linear.in_features + 1)


def test_bank_holds_teacher_features_without_augmentation() -> None:
    distiller = make_ickd(BASE="KD")
    _, trainer = build(distiller)
    dataset = trainer.train_loader.dataset
    with torch.no_grad():
        _, feats = distiller.teacher.eval()(dataset.images)
    # The bank pass runs the teacher in other batch shapes (another GEMM blocking, another
    # summation order): allow float32's bound on the linear layer's sums, through BN's scale.
    assert torch.allclose(distiller.bank.features, feats["pooled_feat"], rtol=0.0, atol=_pooled_atol(distiller.teacher, dataset.images))
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
    other_transform = no_augmentation_view(trainer.train_loader.dataset, SimpleNamespace(transform=Scale(2.0)))
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


def _distributed_worker(rank: int, world: int, init_file: str, out_dir: str, dtype: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        distiller = make_ickd(BASE="KD", PARADIGM="online", **{"BANK.DTYPE": dtype})
        trainer = make_trainer(distiller)
        distiller.trainer_hooks()[0].before_train(trainer)  # each rank passes over its shard, then broadcasts it
        built = distiller.bank.features.clone()
        # each rank refreshes different rows; after the all-gather every bank holds all updates
        index = torch.tensor([rank, 10 + rank])
        distiller._pending_refresh = (index, torch.full((2, built.shape[1]), float(rank + 1)))
        distiller.refresh_bank()
        torch.save({"built": built, "refreshed": distiller.bank.features}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned gloo processes: ~10 s of start-up on 2 cores
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_distributed_build_and_refresh_keep_ranks_identical(tmp_path, dtype: str) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path), dtype), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = make_ickd(BASE="KD", PARADIGM="online", **{"BANK.DTYPE": dtype})
    single_trainer = make_trainer(single)
    single.trainer_hooks()[0].before_train(single_trainer)
    assert results[0]["built"].dtype == getattr(torch, dtype)
    # Shards and the single pass sum in other orders (float32 bound); a bfloat16 bank may then
    # round such a value to the neighbouring bfloat16, one ulp: eps relative.
    rtol = torch.finfo(getattr(torch, dtype)).eps if dtype != "float32" else 0.0
    atol = _pooled_atol(single.teacher, single_trainer.train_loader.dataset.images)
    assert torch.allclose(results[0]["built"].float(), single.bank.features.float(), rtol=rtol, atol=atol)
    assert torch.equal(results[0]["built"], results[1]["built"])
    assert torch.equal(results[0]["refreshed"], results[1]["refreshed"])
    expected = results[0]["built"].clone()
    for rank in range(2):
        for row in (rank, 10 + rank):
            expected[row] = 0.5 * expected[row] + 0.5 * (rank + 1)
    assert torch.allclose(results[0]["refreshed"].float(), expected.float(), atol=1e-6)


# -- what filling a bank costs in memory -------------------------------------------------------
def test_fill_keeps_ready_features_and_orders_rows_by_dataset_index() -> None:
    features = torch.randn(4, 3, dtype=torch.float16)
    bank = MemoryBank(torch.float16)
    bank.fill(features, torch.tensor([0, 1, 1, 0]), torch.arange(4), 2, "cpu")
    assert bank.features.data_ptr() == features.data_ptr(), "rows in order and dtype: no copy"

    bank.fill(features, torch.tensor([0, 1, 1, 0]), torch.tensor([7, 2, 5, 3]), 2, "cpu")
    assert torch.equal(bank.features, features[[1, 3, 2, 0]])  # indices 2, 3, 5, 7
    assert bank.labels.tolist() == [1, 0, 1, 0]
    assert bank.rows_for(torch.tensor([7, 2, 4])).tolist() == [3, 0, -1]
    with pytest.raises(ValueError, match="same dataset index"):
        bank.fill(features, torch.tensor([0, 1, 1, 0]), torch.tensor([3, 1, 3, 0]), 2, "cpu")


def test_extract_features_returns_the_banks_dtype_in_dataset_order() -> None:
    from ickd_plugin.teacher_pass import extract_features

    distiller = make_ickd(BASE="KD")
    trainer = make_trainer(distiller)
    view = no_augmentation_view(trainer.train_loader.dataset, trainer.val_loader.dataset)
    teacher = distiller.teacher
    full, labels, indices = extract_features(teacher, teacher.fc, view, batch_size=5)
    half, _, _ = extract_features(teacher, teacher.fc, view, batch_size=7, dtype=torch.float16)
    assert full.dtype == torch.float32 and half.dtype == torch.float16
    assert indices.tolist() == list(range(len(view))) and labels.tolist() == view.targets
    assert torch.equal(half, full.half()), "each batch is rounded to the bank's dtype, nothing else"


_PEAK_SCRIPT = r"""
import resource, sys
import torch, torch.nn as nn
from ickd_plugin.bank_cache import load_bank_cache, save_bank_cache
from ickd_plugin.memory_bank import MemoryBank
from ickd_plugin.teacher_pass import extract_features

ROWS, DIM = 200_000, 512

class Wide(nn.Module):  # tiny input, wide pooled feature: the bank dominates the memory
    def __init__(self):
        super().__init__()
        self.expand, self.fc = nn.Linear(4, DIM), nn.Linear(DIM, 10)
    def forward(self, x):
        return self.fc(torch.relu(self.expand(x)))

class Data(torch.utils.data.Dataset):
    def __init__(self):
        self.x, self.targets, self.transform = torch.randn(ROWS, 4), torch.arange(ROWS) % 10, None
    def __len__(self):
        return ROWS
    def __getitem__(self, i):
        return self.x[i], self.targets[i], i

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

torch.set_num_threads(1)
phase, path = sys.argv[1], sys.argv[2]
before = rss()
if phase == "build":  # the teacher pass fills the bank, which is written to the cache
    model, data = Wide(), Data()
    before = rss()
    features, labels, indices = extract_features(model, model.fc, data, batch_size=4096, dtype=torch.float16)
    bank = MemoryBank(torch.float16)
    bank.fill(features, labels, indices, 10, "cpu", key="k")
    del features
    save_bank_cache(path, "k", bank.features, bank.labels, indices)
else:  # a later run reads the cache instead
    features, labels, indices = load_bank_cache(path, "k")
    MemoryBank(torch.float16).fill(features, labels, indices, 10, "cpu")
# VmHWM, this process image's own peak: getrusage's ru_maxrss survives exec on Linux, so it
# reports the forking parent's size when that was larger (a pytest worker that loaded models).
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(peak - before, ROWS * DIM * 2)
"""


@pytest.mark.slow  # subprocesses building and reading a 200 MB bank: ~15 s on 2 cores
@pytest.mark.parametrize("phase", ["build", "load"])
def test_bank_build_save_and_load_peak_memory_stays_near_the_bank_size(tmp_path, phase: str) -> None:
    """Build (pass + fill + cache write) in one process, cache read + fill in another, as a run does
    one or the other: each peaks within 1.5 banks + 64 MiB of resident memory above its starting
    point. A float32 staging copy alone would be two banks (fp16 bank). One process per phase, since
    memory the allocator keeps after the build would otherwise count against the read."""
    import subprocess
    import sys

    path = str(tmp_path / "bank.pt")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for step in (["build"] if phase == "build" else ["build", "load"]):
        result = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, step, path], capture_output=True, text=True,
                                timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
    extra, bank_bytes = (int(v) for v in result.stdout.split())
    assert extra <= 1.5 * bank_bytes + (64 << 20), f"{phase}: peak {extra / 2**20:.0f} MiB above start for a {bank_bytes / 2**20:.0f} MiB bank"


# -- the cache key follows the bank's content (issue 12 §3.1) -----------------------------------
class ArraySet(TensorSet):
    """TensorSet whose images live in a `data` array, as torchvision's CIFAR / MNIST and kdharness."""

    def __init__(self, data: np.ndarray, targets: list[int], transform=None) -> None:
        super().__init__(torch.from_numpy(data), targets, transform)
        self.data = data


def _array_view(data: np.ndarray, transform) -> ArraySet:
    targets = [i % 3 for i in range(len(data))]
    return no_augmentation_view(ArraySet(data, targets), SimpleNamespace(transform=transform))


def test_key_tells_apart_transforms_that_print_alike() -> None:
    from torchvision import transforms

    teacher = TinyNet()
    data = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    same, double = transforms.Lambda(lambda x: x), transforms.Lambda(lambda x: 2 * x)
    assert repr(same) == repr(double)  # what the old key hashed
    assert bank_cache_key(teacher, _array_view(data, same), torch.float32) != bank_cache_key(
        teacher, _array_view(data, double), torch.float32
    )


def test_key_follows_the_images_not_only_the_labels() -> None:
    teacher = TinyNet()
    data = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    key = bank_cache_key(teacher, _array_view(data, Scale(1.0)), torch.float32)
    changed = data.copy()
    changed[4, 3] += 1.0  # an item the 8 fingerprint reads (0, 3, 5, 8, ...) skip: only the data hash sees it
    assert 4 not in {round(i * 19 / 7) for i in range(8)}
    assert bank_cache_key(teacher, _array_view(changed, Scale(1.0)), torch.float32) != key
    assert bank_cache_key(teacher, _array_view(data.copy(), Scale(1.0)), torch.float32) == key


def test_key_follows_files_by_size_and_mtime(tmp_path) -> None:
    files = []
    for i in range(4):
        path = tmp_path / f"{i}.bin"
        path.write_bytes(bytes([i]) * 10)
        files.append(str(path))

    class FileSet(TensorSet):  # ImageFolder-like: `samples` holds (path, label)
        def __init__(self) -> None:
            super().__init__(torch.zeros(4, 8), [0, 1, 0, 1], None)
            self.samples = [(path, label) for path, label in zip(files, self.targets)]

    teacher = TinyNet()

    def key() -> str:
        return bank_cache_key(teacher, no_augmentation_view(FileSet(), SimpleNamespace(transform=None)), torch.float32)

    before = key()
    os.utime(files[2], ns=(1_000_000_000, 1_000_000_000))
    assert key() != before


def test_key_warns_when_it_cannot_see_the_images() -> None:
    distiller = make_ickd(BASE="KD")
    trainer = make_trainer(distiller)
    view = no_augmentation_view(trainer.train_loader.dataset, trainer.val_loader.dataset)
    with pytest.warns(UserWarning, match="neither an image array"):
        bank_cache_key(distiller.teacher, view, torch.float32)


# -- refresh and rows_for at the edges (issue 12 §3.2) ------------------------------------------
def test_refresh_keeps_row_zeros_update_next_to_an_unknown_index() -> None:
    bank = MemoryBank()
    bank.fill(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1]), torch.arange(2), 2, "cpu")
    # the unknown index comes first and once was clamped onto row 0, overwriting its update
    bank.refresh(bank.rows_for(torch.tensor([9, 0])), torch.tensor([[7.0, 7.0], [3.0, 4.0]]), momentum=0.5)
    assert bank.features.tolist() == [[2.0, 2.0], [0.0, 2.0]]  # row 0: 0.5 * [1, 0] + 0.5 * [3, 4]
    assert torch.allclose(bank.inv_norms, torch.tensor([8 ** -0.5, 0.5]))


def test_refresh_takes_the_first_of_repeated_rows() -> None:
    bank = MemoryBank()
    bank.fill(torch.zeros(2, 2), torch.tensor([0, 1]), torch.arange(2), 2, "cpu")
    bank.refresh(torch.tensor([1, 1, -1]), torch.tensor([[2.0, 2.0], [8.0, 8.0], [5.0, 5.0]]), momentum=0.5)
    assert bank.features.tolist() == [[0.0, 0.0], [1.0, 1.0]]


def test_rows_for_is_minus_one_outside_the_bank() -> None:
    bank = MemoryBank()
    assert bank.rows_for(torch.tensor([0, 3])).tolist() == [-1, -1], "an empty bank holds nothing"
    bank.fill(torch.randn(3, 2), torch.tensor([0, 1, 1]), torch.tensor([0, 2, 4]), 2, "cpu")
    assert bank.rows_for(torch.tensor([4, 5, 100, -3, 1, 2])).tolist() == [2, -1, -1, -1, -1, 1]


# -- the no-augmentation view is verified (issue 12 §3.3) ---------------------------------------
class Forwarding(torch.utils.data.Dataset):
    """A wrapper that forwards attribute reads to the dataset it wraps (and so augments through it)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name: str):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        return self.inner[i]


def test_view_refuses_a_wrapper_that_only_forwards_transform() -> None:
    train, val = make_data()
    wrapped = Forwarding(train)
    assert hasattr(wrapped, "transform")  # what the old check looked at
    with pytest.raises(ValueError, match=r"Forwarding only forwards `transform`.*augmentation on"):
        no_augmentation_view(wrapped, val)


def test_view_refuses_a_dataset_that_still_augments() -> None:
    class AugmentsAnyway(TensorSet):  # owns `transform`, yet adds its own noise in __getitem__
        def __getitem__(self, i: int):
            image, target, index = super().__getitem__(i)
            return image + torch.randn_like(image), target, index

    train, val = make_data()
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match="two reads of item 0 .* differ"):
        no_augmentation_view(AugmentsAnyway(train.images, train.targets, AddNoise()), val)
    assert torch.equal(torch.get_rng_state(), state), "the check consumes no global randomness"


# -- float16 range and TAU (issue 12 §3.5) ------------------------------------------------------
class Huge(torch.nn.Module):
    """Pooled features of about 1e5: beyond float16's 65504."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(x.abs() + 1e5)


def test_float16_bank_refuses_features_beyond_its_range() -> None:
    from ickd_plugin.teacher_pass import extract_features

    train, _ = make_data()
    train.transform = None
    model = Huge()
    with pytest.raises(ValueError, match=r"float16 cannot hold .*65504.*bfloat16"):
        extract_features(model, model.fc, train, batch_size=4, dtype=torch.float16)
    features, _, _ = extract_features(model, model.fc, train, batch_size=4, dtype=torch.bfloat16)
    assert torch.isfinite(features.float()).all()
    bank = MemoryBank(torch.float16)
    with pytest.raises(ValueError, match="float16 cannot hold"):
        bank.fill(torch.full((3, 2), 7e4), torch.tensor([0, 1, 1]), torch.arange(3), 2, "cpu")
    bank.fill(torch.full((3, 2), 6e4), torch.tensor([0, 1, 1]), torch.arange(3), 2, "cpu")
    with pytest.raises(ValueError, match="float16 cannot hold .* refreshing"):
        bank.refresh(torch.tensor([0]), torch.full((1, 2), 1e5), momentum=0.5)


def test_denormal_tau_is_refused() -> None:
    from ickd_plugin.config import MIN_TAU, get_ickd_defaults, parse_ickd_config
    from ickd_plugin.losses import context_weights

    node = get_ickd_defaults()
    node.TAU = 1e-40  # > 0, but 1 / TAU overflows float32
    assert torch.isnan(context_weights(torch.tensor([[0.5, 0.4]]), 1e-40)).any(), "what it would do"
    with pytest.raises(ValueError, match=r"ICKD.TAU = 1e-40; expected a number >= 1.175e-38"):
        parse_ickd_config(node)
    weights = context_weights(torch.tensor([[1.0, -1.0, float("-inf")]]), MIN_TAU)
    assert weights.tolist() == [[1.0, 0.0, 0.0]]


# -- no wasted work (issue 12 §3.6) -------------------------------------------------------------
class ContrastiveSet(TensorSet):
    """Draws CRD negatives per item while `is_sample` (mdistiller's CIFAR100InstanceSample switch)."""

    draws = 0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.is_sample = True

    def __getitem__(self, i: int):
        item = super().__getitem__(i)
        if not self.is_sample:
            return item
        type(self).draws += 1
        return (*item, torch.randint(len(self), (16,)))


def test_bank_pass_draws_no_contrastive_negatives() -> None:
    from ickd_plugin.teacher_pass import extract_features

    train, val = make_data()
    contrastive = ContrastiveSet(train.images, train.targets, AddNoise())
    view = no_augmentation_view(contrastive, val)
    assert contrastive.is_sample and not view.is_sample, "the copy is switched off, the training set is not"
    ContrastiveSet.draws = 0
    teacher = TinyNet()
    features, _, indices = extract_features(teacher, teacher.fc, view, batch_size=5)
    assert ContrastiveSet.draws == 0 and indices.tolist() == list(range(len(train)))


def test_kdharness_indexed_dataset_view_drops_contrastive_indices() -> None:
    from kdharness.data.indexed import IndexedDataset

    train, val = make_data()
    raw = [(image, target) for image, target, _ in TensorSet(train.images, train.targets)]

    class Raw(list):
        targets = train.targets
        num_classes = 3

    dataset = IndexedDataset(Raw(raw), AddNoise(), seed=0, with_index=True, crd_k=4)
    view = no_augmentation_view(dataset, val)
    assert dataset.crd_k == 4 and view.crd_k is None
    assert len(view[0]) == 3


# -- what building, loading or reusing the bank says (issue 11 §4) -----------------------------
def test_bank_says_whether_it_was_built_loaded_or_reused(tmp_path, capsys) -> None:
    first = cached_ickd(tmp_path)
    _, trainer = build(first)
    out = capsys.readouterr().out
    assert "[ICKD] memory bank: built by the teacher from 18 training samples without augmentation" in out
    assert f"cached to {bank_file(first, trainer)}" in out and "18 x 6 float32" in out
    first.trainer_hooks()[0].before_train(trainer)
    assert "memory bank: reused, already built for this teacher and data" in capsys.readouterr().out
    build(cached_ickd(tmp_path))
    assert f"memory bank: loaded from the cache {bank_file(first, trainer)}" in capsys.readouterr().out


def test_online_bank_is_taken_from_the_checkpoint_being_resumed(monkeypatch, capsys) -> None:
    """Issue 12 §3.6 (kdharness: `trainer.resume_state` during before_train): no pass on --resume."""
    import ickd_plugin.distiller as distiller_module

    trained = make_ickd(BASE="KD", PARADIGM="online")
    trainer = make_trainer(trained)
    trained.trainer_hooks()[0].before_train(trainer)
    trained.bank.refresh(torch.arange(4), torch.full((4, trained.bank.features.shape[1]), 3.0), momentum=0.5)
    resumed = make_ickd(BASE="KD", PARADIGM="online")
    monkeypatch.setattr(distiller_module, "extract_features", lambda *a, **k: pytest.fail("a bank pass ran"))
    trainer.resume_state = {"model": trained.state_dict()}
    capsys.readouterr()
    resumed.trainer_hooks()[0].before_train(trainer)
    assert torch.equal(resumed.bank.features, trained.bank.features)
    assert torch.equal(resumed.bank.class_rows, trained.bank.class_rows)
    assert "memory bank: restored from the checkpoint being resumed" in capsys.readouterr().out
