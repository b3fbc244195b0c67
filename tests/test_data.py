"""The data layer: on-disk formats, deterministic augmentation, CRD indices, sampler, loaders."""
from __future__ import annotations

import copy
import gzip
import os
import pickle
import random
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

import kdharness.data.fashion_mnist as fm
from kdharness.config import ConfigError, get_cfg_defaults
from kdharness.data import EpochSampler, IndexedDataset, build_datasets, build_loaders, build_transform, uses_crd
from kdharness.data.cifar100 import CIFAR100
from kdharness.registry import dataset_dict
from fixtures_data import (
    idx_bytes,
    write_cifar100_fixture,
    write_fashion_mnist_fixture,
    write_imagefolder_fixture,
)

REAL_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar100_fixture(root / "cifar")
    write_fashion_mnist_fixture(root / "fashion")
    write_imagefolder_fixture(root / "folder")
    return root


@pytest.fixture
def no_system_fashion(monkeypatch):
    """Hide Debian's copy so that "not found" and "found under ROOT" are really tested."""
    monkeypatch.setattr(fm, "SYSTEM_DIRS", ())


def make_cfg(dataset_type: str, root, **overrides):
    cfg = get_cfg_defaults()
    cfg.DATASET.TYPE = dataset_type
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.DOWNLOAD = False
    cfg.DATASET.NUM_WORKERS = 0
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return cfg


# ---------------------------------------------------------------- raw datasets and formats


def test_datasets_registered():
    assert {"cifar100", "imagenet", "fashion_mnist"} <= set(dataset_dict)


def test_cifar100_fixture_reads_back(data_root):
    cfg = make_cfg("cifar100", data_root / "cifar")
    train, test = dataset_dict["cifar100"](cfg, True), dataset_dict["cifar100"](cfg, False)
    assert (len(train), len(test), train.num_classes) == (200, 100, 100)
    with open(data_root / "cifar" / "cifar-100-python" / "train", "rb") as handle:
        entry = pickle.load(handle, encoding="latin1")
    assert train.targets == entry["fine_labels"]
    image, target = train[7]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (32, 32)
    assert target == entry["fine_labels"][7]
    assert np.array_equal(np.asarray(image), entry["data"][7].reshape(3, 32, 32).transpose(1, 2, 0))


def test_fashion_mnist_fixture_padding_and_channels(data_root, no_system_fashion):
    cfg = make_cfg("fashion_mnist", data_root / "fashion")
    train, test = dataset_dict["fashion_mnist"](cfg, True), dataset_dict["fashion_mnist"](cfg, False)
    assert (len(train), len(test), train.num_classes) == (300, 100, 10)
    assert set(train.targets) == set(range(10))
    image, target = train[3]
    assert image.mode == "RGB" and image.size == (32, 32) and target == train.targets[3]
    pixels = np.asarray(image)
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])
    assert not pixels[:2].any() and not pixels[-2:].any() and not pixels[:, :2].any() and not pixels[:, -2:].any()
    with gzip.open(data_root / "fashion" / "train-images-idx3-ubyte.gz") as handle:
        original = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    assert np.array_equal(pixels[2:30, 2:30, 0], original[3])


@pytest.mark.parametrize("layout", ["fashion-mnist", os.path.join("FashionMNIST", "raw")])
def test_fashion_mnist_layouts_and_uncompressed_names(tmp_path, no_system_fashion, layout):
    write_fashion_mnist_fixture(tmp_path / layout, n_train=20, n_test=10, compressed=False)
    assert not list((tmp_path / layout).glob("*.gz"))
    dataset = dataset_dict["fashion_mnist"](make_cfg("fashion_mnist", tmp_path), False)
    assert len(dataset) == 10 and dataset[0][0].size == (32, 32)


def test_imagefolder_fixture_reads_back(data_root):
    cfg = make_cfg("imagenet", data_root / "folder")
    train = dataset_dict["imagenet"](cfg, True)
    assert (len(train), train.num_classes) == (12, 3)
    assert train.targets == [0] * 4 + [1] * 4 + [2] * 4
    assert train[5][0].mode == "RGB" and train[5][1] == 1


def test_train_subset_keeps_targets_consistent(data_root, no_system_fashion):
    for dataset_type, sub in (("cifar100", "cifar"), ("fashion_mnist", "fashion"), ("imagenet", "folder")):
        full = dataset_dict[dataset_type](make_cfg(dataset_type, data_root / sub), True)
        cfg = make_cfg(dataset_type, data_root / sub, **{"DATASET.TRAIN_SUBSET": 5})
        subset, val = dataset_dict[dataset_type](cfg, True), dataset_dict[dataset_type](cfg, False)
        assert len(subset) == 5 and subset.targets == full.targets[:5]
        assert [subset[i][1] for i in range(5)] == full.targets[:5]
        assert np.array_equal(np.asarray(subset[4][0]), np.asarray(full[4][0]))
        assert len(val) > 5, "TRAIN_SUBSET must not cut the validation split"
    cfg = make_cfg("cifar100", data_root / "cifar", **{"DATASET.TRAIN_SUBSET": 10_000})
    with pytest.raises(ConfigError, match=r"DATASET.TRAIN_SUBSET = 10000.*only 200"):
        dataset_dict["cifar100"](cfg, True)


# ---------------------------------------------------------------- errors


def test_cifar100_missing_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"DATASET.ROOT.*cifar-100-python/.*DATASET.DOWNLOAD"):
        dataset_dict["cifar100"](make_cfg("cifar100", tmp_path), True)


def test_cifar100_missing_and_download_fails(tmp_path, monkeypatch):
    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(CIFAR100, "download", offline)
    cfg = make_cfg("cifar100", tmp_path, **{"DATASET.DOWNLOAD": True})
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python/.*downloading it failed.*no network"):
        dataset_dict["cifar100"](cfg, True)


def test_cifar100_corrupt_pickle(tmp_path):
    write_cifar100_fixture(tmp_path, n_train=10, n_test=10)
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="unreadable"):
        dataset_dict["cifar100"](make_cfg("cifar100", tmp_path), True)


def test_imagenet_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"val folder .*val"):
        dataset_dict["imagenet"](make_cfg("imagenet", tmp_path), False)


def test_fashion_mnist_missing(tmp_path, no_system_fashion):
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte.*DATASET.ROOT.*FashionMNIST.*apt-get"):
        dataset_dict["fashion_mnist"](make_cfg("fashion_mnist", tmp_path), False)


def test_fashion_mnist_bad_magic(tmp_path, no_system_fashion):
    write_fashion_mnist_fixture(tmp_path, n_train=10, n_test=10, compressed=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[2] = 0x0D  # float dtype code: not an image file we accept
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: bad idx magic number 0x00000d03"):
        dataset_dict["fashion_mnist"](make_cfg("fashion_mnist", tmp_path), False)


@pytest.mark.parametrize("compressed", [True, False])
def test_fashion_mnist_truncated(tmp_path, no_system_fashion, compressed):
    write_fashion_mnist_fixture(tmp_path, n_train=10, n_test=10, compressed=compressed)
    path = tmp_path / ("t10k-images-idx3-ubyte" + (".gz" if compressed else ""))
    path.write_bytes(path.read_bytes()[: -40])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte"):
        dataset_dict["fashion_mnist"](make_cfg("fashion_mnist", tmp_path), False)


def test_fashion_mnist_label_count_mismatch(tmp_path, no_system_fashion):
    write_fashion_mnist_fixture(tmp_path, n_train=10, n_test=10, compressed=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(9, np.uint8)))
    with pytest.raises(ValueError, match="one label per image"):
        dataset_dict["fashion_mnist"](make_cfg("fashion_mnist", tmp_path), False)


@pytest.mark.skipif(not os.path.isdir(REAL_FASHION_MNIST), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    cfg = make_cfg("fashion_mnist", REAL_FASHION_MNIST)  # an explicit ROOT never falls back (test_bad_input.py)
    train, test = dataset_dict["fashion_mnist"](cfg, True), dataset_dict["fashion_mnist"](cfg, False)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.num_classes == 10 and set(train.targets) == set(range(10)) == set(test.targets)
    assert train[0][0].size == (32, 32)


# ---------------------------------------------------------------- transforms


def test_transforms_shapes_and_constants(data_root):
    image = Image.fromarray(np.full((32, 32, 3), 128, np.uint8))
    for dataset_type in ("cifar100", "fashion_mnist"):
        for train in (True, False):
            assert build_transform(dataset_type, train)(image).shape == (3, 32, 32)
    normalize = build_transform("cifar100", False).transforms[-1]
    assert tuple(normalize.mean) == (0.5071, 0.4865, 0.4409) and tuple(normalize.std) == (0.2673, 0.2564, 0.2762)
    big = Image.fromarray(np.zeros((300, 260, 3), np.uint8))
    assert build_transform("imagenet", True)(big).shape == (3, 224, 224)
    assert build_transform("imagenet", False)(big).shape == (3, 224, 224)
    with pytest.raises(ConfigError, match="DATASET.TYPE = 'mnist'"):
        build_transform("mnist", True)


# ---------------------------------------------------------------- IndexedDataset


@pytest.fixture(scope="module")
def cifar_raw(data_root):
    return dataset_dict["cifar100"](make_cfg("cifar100", data_root / "cifar"), True)


def test_pair_key_is_deterministic_and_isolated(cifar_raw):
    dataset = IndexedDataset(cifar_raw, build_transform("cifar100", True), seed=3)
    torch_state, random_state, numpy_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    first = dataset[(2, 11)]
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == random_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))
    torch.rand(5), random.random(), np.random.rand()  # a moved global RNG must not matter
    again = dataset[(2, 11)]
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:] == (cifar_raw.targets[11], 11)
    other_epoch = [not torch.equal(dataset[(2, i)][0], dataset[(3, i)][0]) for i in range(8)]
    assert sum(other_epoch) >= 6, "a new epoch should usually draw a new crop/flip"
    other_seed = IndexedDataset(cifar_raw, build_transform("cifar100", True), seed=4)
    assert sum(not torch.equal(dataset[(2, i)][0], other_seed[(2, i)][0]) for i in range(8)) >= 6


def test_int_key_and_return_shapes(cifar_raw):
    plain = IndexedDataset(cifar_raw, build_transform("cifar100", False), with_index=False)
    image, target = plain[4]
    assert image.shape == (3, 32, 32) and target == cifar_raw.targets[4]
    indexed = IndexedDataset(cifar_raw, build_transform("cifar100", True))
    assert len(indexed[4]) == 3 and indexed[4][2] == 4
    assert (len(indexed), indexed.num_classes, indexed.raw) == (200, 100, cifar_raw)
    with pytest.raises(IndexError):
        indexed[200]


def test_copy_with_test_transform_is_a_view(cifar_raw):
    train = IndexedDataset(cifar_raw, build_transform("cifar100", True), crd_k=8)
    view = copy.copy(train)
    view.transform = build_transform("cifar100", False)
    assert train.transform is not view.transform and view.raw is train.raw
    assert torch.equal(view[(0, 5)][0], view[(9, 5)][0]), "the test transform has no randomness"
    assert torch.equal(view[(0, 5)][0], build_transform("cifar100", False)(cifar_raw[5][0]))


@pytest.mark.parametrize("mode", ["exact", "relax"])
def test_crd_contrastive_indices(cifar_raw, mode):
    k = 40
    dataset = IndexedDataset(cifar_raw, build_transform("cifar100", True), crd_k=k, crd_mode=mode)
    targets = np.asarray(cifar_raw.targets)
    for index in range(0, 200, 17):
        image, target, returned, contrast = dataset[(1, index)]
        assert returned == index and contrast.dtype == np.int64 and contrast.shape == (k + 1,)
        if mode == "exact":
            assert contrast[0] == index
        assert targets[contrast[0]] == target
        assert (targets[contrast[1:]] != target).all(), "negatives must come from other classes"
        assert len(set(contrast[1:].tolist())) == k, "k below the pool size: no repeats (as mdistiller)"
        assert np.array_equal(contrast, dataset[(1, index)][3])
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4, sampler=[(0, i) for i in range(4)])))
    assert batch[3].dtype == torch.int64 and batch[3].shape == (4, k + 1)


def test_crd_more_negatives_than_pool_uses_replacement(cifar_raw):
    dataset = IndexedDataset(cifar_raw, None, crd_k=500)
    contrast = dataset[(0, 0)][3]
    assert contrast.shape == (501,)
    assert (np.asarray(cifar_raw.targets)[contrast[1:]] != cifar_raw.targets[0]).all()


def test_crd_rejects_bad_mode(cifar_raw):
    with pytest.raises(ConfigError, match="CRD.MODE = 'loose'"):
        IndexedDataset(cifar_raw, None, crd_k=4, crd_mode="loose")


# ---------------------------------------------------------------- EpochSampler


def test_sampler_permutation_is_deterministic():
    sampler = EpochSampler(50, seed=1)
    sampler.set_epoch(4)
    pairs = list(sampler)
    assert all(epoch == 4 for epoch, _ in pairs)
    order = [index for _, index in pairs]
    assert sorted(order) == list(range(50)) and order != list(range(50))
    again = EpochSampler(50, seed=1)
    again.set_epoch(4)
    assert [i for _, i in again] == order
    again.set_epoch(5)
    assert [i for _, i in again] != order
    assert EpochSampler(50, seed=2).epoch_indices(4) != order
    assert EpochSampler(5, seed=1, shuffle=False).epoch_indices(3) == [0, 1, 2, 3, 4]


def test_sampler_set_start_skips_consumed_batches():
    sampler = EpochSampler(50, seed=0)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_start(num_batches_done=3, batch_size=8)
    assert len(sampler) == 26 and list(sampler) == full[24:]
    sampler.set_start(10, 8)
    assert len(sampler) == 0 and list(sampler) == []
    sampler.set_epoch(3)
    assert len(sampler) == 50 and len(list(sampler)) == 50


@pytest.mark.parametrize("num_samples", [10, 11])
def test_sampler_shards_like_distributed_sampler(num_samples):
    shards = [EpochSampler(num_samples, seed=0, rank=r, world_size=2) for r in range(2)]
    for shard in shards:
        shard.set_epoch(1)
    parts = [[i for _, i in shard] for shard in shards]
    assert len(parts[0]) == len(parts[1]) == len(shards[0]) == (num_samples + 1) // 2
    assert set(parts[0]) | set(parts[1]) == set(range(num_samples))
    for rank in range(2):
        reference = DistributedSampler(range(num_samples), num_replicas=2, rank=rank, shuffle=False)
        ours = EpochSampler(num_samples, seed=0, shuffle=False, rank=rank, world_size=2)
        assert ours.epoch_indices() == list(reference)


# ---------------------------------------------------------------- build_datasets / build_loaders


def test_uses_crd():
    cfg = get_cfg_defaults()
    assert not uses_crd(cfg)
    cfg.DISTILLER.TYPE = "CRD"
    assert uses_crd(cfg)
    cfg = get_cfg_defaults()
    cfg.ICKD = type(cfg)({"BASE": "CRD"})
    assert uses_crd(cfg)
    cfg.ICKD.BASE = "KD"
    assert not uses_crd(cfg)


def test_build_datasets_and_loaders(data_root):
    cfg = make_cfg(
        "cifar100", data_root / "cifar",
        **{"DISTILLER.TYPE": "CRD", "CRD.NCE.K": 16, "SOLVER.BATCH_SIZE": 32, "DATASET.TEST.BATCH_SIZE": 40},
    )
    train_set, val_set, num_classes = build_datasets(cfg)
    assert num_classes == 100 and (len(train_set), len(val_set)) == (200, 100)
    assert train_set.crd_k == 16 and val_set.crd_k is None and not val_set.with_index
    train_loader, val_loader = build_loaders(cfg, train_set, val_set)
    assert isinstance(train_loader.sampler, EpochSampler) and len(train_loader) == 7
    torch_state = torch.get_rng_state()
    train_loader.sampler.set_epoch(0)
    batches = list(train_loader)
    assert torch.equal(torch.get_rng_state(), torch_state), "iterating must not consume the global RNG"
    assert batches[0][0].shape == (32, 3, 32, 32) and batches[-1][0].shape[0] == 200 - 6 * 32
    assert batches[0][3].shape == (32, 17)
    images, targets = next(iter(val_loader))
    assert images.shape == (40, 3, 32, 32) and targets.tolist() == val_set.targets[:40]
    # resume: the same epoch's tail, bit for bit
    train_loader.sampler.set_start(num_batches_done=5, batch_size=32)
    assert len(train_loader) == 2
    resumed = list(train_loader)
    assert all(torch.equal(a, b) for old, new in zip(batches[5:], resumed) for a, b in zip(old, new))


def test_batches_do_not_depend_on_worker_count(data_root, no_system_fashion):
    cfg = make_cfg("fashion_mnist", data_root / "fashion", **{"SOLVER.BATCH_SIZE": 50, "DATASET.TRAIN_SUBSET": 100})
    train_set, val_set, _ = build_datasets(cfg)
    assert train_set.crd_k is None
    serial, _ = build_loaders(cfg, train_set, val_set)
    cfg.DATASET.NUM_WORKERS = 2
    parallel, _ = build_loaders(cfg, train_set, val_set)
    assert parallel.num_workers == 2 and not parallel.persistent_workers
    for loader in (serial, parallel):
        loader.sampler.set_epoch(7)
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
