"""Segmentation loaders on fixtures in the real formats, the joint transforms, Fashion-MNIST
scenes, and how they reach the loaders (image, mask, index) as classification's (image, target, index)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_data import write_fashion_mnist_fixture
from seg_fixtures import write_cityscapes_fixture, write_voc_fixture
from kdharness.compose import load_config
from kdharness.config import IGNORE_INDEX, ConfigError, get_cfg_defaults
from kdharness.data import build_datasets, build_loaders
from kdharness.data.cityscapes import LABEL_TO_TRAIN_ID, build_cityscapes, to_train_ids
from kdharness.data.fashion_mnist import FashionMNIST, find_files
from kdharness.data.fashion_mnist_scenes import SceneSpec, build_fashion_mnist_scenes, make_scene
from kdharness.data.indexed import IndexedDataset
from kdharness.data.seg_transforms import SegmentationEval, SegmentationTrain
from kdharness.data.voc import build_voc, build_voc_aug


def _cfg(dataset: str, root, **dataset_keys):
    cfg = get_cfg_defaults()
    cfg.DATASET.TYPE, cfg.DATASET.TASK, cfg.DATASET.ROOT = dataset, "segmentation", str(root)
    for key, value in dataset_keys.items():
        cfg.DATASET[key] = value
    return cfg


# -- Cityscapes ---------------------------------------------------------------------------------
def test_cityscapes_train_ids_mapping():
    ids = np.arange(256, dtype=np.uint8)
    mapped = to_train_ids(ids)
    assert [int(mapped[k]) for k in sorted(LABEL_TO_TRAIN_ID)] == list(range(19))
    assert all(int(mapped[k]) == IGNORE_INDEX for k in range(256) if k not in LABEL_TO_TRAIN_ID)


def test_cityscapes_reads_the_official_layout(tmp_path):
    written = write_cityscapes_fixture(tmp_path / "cityscapes")
    for train, split in ((True, "train"), (False, "val")):
        dataset = build_cityscapes(_cfg("cityscapes", tmp_path), train)  # ROOT/cityscapes is found too
        assert dataset.task == "segmentation" and dataset.num_classes == 19
        assert len(dataset) == len(written[split])
        for index, labels in enumerate(written[split]):
            image, mask = dataset[index]
            assert image.mode == "RGB" and image.size == (64, 32)
            expected = np.vectorize(lambda v: LABEL_TO_TRAIN_ID.get(int(v), IGNORE_INDEX))(labels)
            assert np.array_equal(np.array(mask), expected)
    assert "leftImg8bit" in dataset.source


def test_cityscapes_errors_name_the_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="leftImg8bit/ and gtFine/"):
        build_cityscapes(_cfg("cityscapes", tmp_path), True)
    write_cityscapes_fixture(tmp_path)
    victim = next((tmp_path / "gtFine" / "val").rglob("*_labelIds.png"))
    victim.unlink()
    with pytest.raises(FileNotFoundError, match="has no label file"):
        build_cityscapes(_cfg("cityscapes", tmp_path), False)


# -- Pascal VOC -----------------------------------------------------------------------------
def test_voc_reads_palette_masks_and_lists(tmp_path):
    written = write_voc_fixture(tmp_path / "VOCdevkit" / "VOC2012", aug=True)
    train = build_voc(_cfg("voc", tmp_path), True)
    val = build_voc(_cfg("voc", tmp_path), False)
    assert (len(train), len(val), train.num_classes) == (4, 2, 21)
    image, mask = val[1]
    assert image.size == (52, 36) and np.array_equal(np.array(mask), written["val"][1])
    assert int(np.array(mask)[0].max()) == IGNORE_INDEX  # the borders stay 255
    with Image.open(val.pairs[0][1]) as raw:
        assert raw.mode == "P"  # the fixture's masks are palette PNGs, as VOC's
    aug = build_voc_aug(_cfg("voc_aug", tmp_path), True)
    assert len(aug) == 6 and np.array_equal(np.array(aug[5][1]), written["train_aug"][5])
    assert len(build_voc_aug(_cfg("voc_aug", tmp_path), False)) == 2  # validation: val.txt


def test_voc_refuses_colour_masks_and_missing_files(tmp_path):
    write_voc_fixture(tmp_path)
    mask_path = tmp_path / "SegmentationClass" / "2007_val_0000.png"
    Image.open(mask_path).convert("RGB").save(mask_path)
    with pytest.raises(ValueError, match="class indices"):
        build_voc(_cfg("voc", tmp_path), False)[0]
    (tmp_path / "JPEGImages" / "2007_train_0001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="2007_train_0001.jpg"):
        build_voc(_cfg("voc", tmp_path), True)
    with pytest.raises(FileNotFoundError, match="train_aug.txt"):
        build_voc_aug(_cfg("voc_aug", tmp_path), True)


def test_train_subset_keeps_the_first_images_and_refuses_balance(tmp_path):
    write_voc_fixture(tmp_path)
    assert len(build_voc(_cfg("voc", tmp_path, TRAIN_SUBSET=3), True)) == 3
    assert len(build_voc(_cfg("voc", tmp_path, TRAIN_SUBSET=3), False)) == 2  # val stays whole
    with pytest.raises(ConfigError, match="TRAIN_SUBSET_BALANCED"):
        build_voc(_cfg("voc", tmp_path, TRAIN_SUBSET=2, TRAIN_SUBSET_BALANCED=True), True)


# -- transforms -------------------------------------------------------------------------------
def _pair(height=20, width=30):
    labels = (np.arange(height * width).reshape(height, width) % 7).astype(np.uint8)
    image = np.stack([labels * 30, labels * 10, 255 - labels * 30], -1).astype(np.uint8)
    return Image.fromarray(image), Image.fromarray(labels)


def test_train_transform_pads_with_ignore_and_keeps_image_and_mask_aligned():
    image, mask = _pair()
    transform = SegmentationTrain((40, 50), (1.0, 1.0), (0.0,) * 3, (1.0,) * 3)
    for seed in range(6):
        torch.manual_seed(seed)
        tensor, target = transform(image, mask)
        assert tensor.shape == (3, 40, 50) and target.shape == (40, 50) and target.dtype == torch.int64
        padded = target == IGNORE_INDEX
        assert int(padded.sum()) == 40 * 50 - 20 * 30  # padding only, scale 1
        assert float(tensor[:, padded].abs().max()) == 0.0  # the image is padded with 0
        # the red channel is the label * 30 / 255 wherever there is a label: crop and flip kept them aligned
        assert torch.allclose(tensor[0][~padded], target[~padded].float() * 30 / 255, atol=1e-6)


def test_train_transform_scales_crops_and_flips():
    image, mask = _pair(32, 32)
    transform = SegmentationTrain((16, 16), (0.5, 2.0), (0.0,) * 3, (1.0,) * 3)
    labels_seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        tensor, target = transform(image, mask)
        assert tensor.shape == (3, 16, 16) and target.shape == (16, 16)
        labels_seen |= set(target.unique().tolist())
        # nearest-neighbour masks keep the label set (no averaged labels)
        assert labels_seen <= set(range(7)) | {IGNORE_INDEX}
        torch.manual_seed(seed)
        again = transform(image, mask)
        assert torch.equal(again[0], tensor) and torch.equal(again[1], target)  # a pure function of the RNG
    assert len(labels_seen) > 3
    whole = SegmentationTrain((32, 32), (1.0, 1.0), (0.0,) * 3, (1.0,) * 3)  # no scale, no crop: only the flip
    plain = torch.from_numpy(np.array(mask, dtype=np.int64))
    seen = []
    for seed in range(12):
        torch.manual_seed(seed)
        target = whole(image, mask)[1]
        assert torch.equal(target, plain) or torch.equal(target, plain.flip(-1))
        seen.append(torch.equal(target, plain))
    assert any(seen) and not all(seen)


def test_eval_transform_is_the_whole_image():
    image, mask = _pair()
    tensor, target = SegmentationEval((0.5,) * 3, (0.25,) * 3)(image, mask)
    assert tensor.shape == (3, 20, 30) and torch.equal(target, torch.from_numpy(np.array(mask, dtype=np.int64)))
    assert torch.allclose(tensor[2], (torch.from_numpy(np.array(image)[..., 2]).float() / 255 - 0.5) / 0.25)
    with pytest.raises(ValueError, match="same"):
        SegmentationEval((0.5,) * 3, (0.25,) * 3)(image, mask.resize((10, 10)))


# -- Fashion-MNIST scenes ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def fashion_items(tmp_path_factory):
    root = write_fashion_mnist_fixture(tmp_path_factory.mktemp("fashion"), n_train=60, n_test=30)
    train = FashionMNIST(*find_files(str(root), True))
    test = FashionMNIST(*find_files(str(root), False))
    return root, train, test


def test_scene_labels_follow_foreground_and_occlusion(fashion_items):
    _, items, _ = fashion_items
    spec = SceneSpec(size=48, min_items=2, max_items=4, min_scale=0.75, max_scale=1.5, threshold=0.1, seed=3)
    labels = np.asarray(items.targets)
    for index in range(12):
        canvas, mask, pasted = make_scene(items.data, labels, spec, True, index)
        assert canvas.shape == mask.shape == (48, 48) and 2 <= len(pasted) <= 4
        assert set(np.unique(mask)) <= set(range(11))
        # repaint by hand: each item's foreground overwrites the label, in paint order
        expected = np.zeros((48, 48), np.uint8)
        for item in pasted:
            resized = np.asarray(Image.fromarray(items.data[item["source"]]).resize((item["side"],) * 2, Image.BILINEAR))
            window = expected[item["top"]: item["top"] + item["side"], item["left"]: item["left"] + item["side"]]
            window[resized > 0.1 * 255] = item["label"] + 1
            assert item["top"] + item["side"] <= 48 and item["left"] + item["side"] <= 48
        assert np.array_equal(mask, expected)
        last = pasted[-1]  # the last item is never occluded: the image shows it where it is foreground
        resized = np.asarray(Image.fromarray(items.data[last["source"]]).resize((last["side"],) * 2, Image.BILINEAR))
        window = canvas[last["top"]: last["top"] + last["side"], last["left"]: last["left"] + last["side"]]
        assert np.array_equal(window[resized > 25.5], resized[resized > 25.5])
        assert (canvas[mask == 0] <= 25).all()  # background: black, or an item's faint halo


def test_scenes_are_deterministic_split_pure_and_from_their_own_split(fashion_items):
    root, train_items, test_items = fashion_items
    cfg = _cfg("fashion_mnist_scenes", root)
    cfg.DATASET.SCENES.NUM_TRAIN, cfg.DATASET.SCENES.NUM_TEST = 20, 8
    train, again, test = (build_fashion_mnist_scenes(cfg, True), build_fashion_mnist_scenes(cfg, True),
                          build_fashion_mnist_scenes(cfg, False))
    assert (len(train), len(test), train.num_classes) == (20, 8, 11)
    assert np.array_equal(train.canvases, again.canvases) and np.array_equal(train.masks, again.masks)
    cfg.DATASET.SCENES.NUM_TRAIN = 5  # scene i does not depend on how many are made
    assert np.array_equal(build_fashion_mnist_scenes(cfg, True).masks, train.masks[:5])
    cfg.DATASET.SCENES.SEED = 1
    assert not np.array_equal(build_fashion_mnist_scenes(cfg, True).masks, train.masks[:5])
    # test scenes draw from the test split: their items are test images
    spec = SceneSpec.from_cfg(cfg)
    _, _, pasted = make_scene(test_items.data, np.asarray(test_items.targets), spec, False, 0)
    assert all(item["source"] < len(test_items) for item in pasted)
    image, mask = train[0]
    assert image.mode == "RGB" and image.size == (64, 64) and mask.size == (64, 64)


def test_scenes_keys_are_checked_before_anything_runs(tmp_path):
    base = ["DATASET.TYPE", "fashion_mnist_scenes", "DATASET.TASK", "segmentation",
            "DISTILLER.STUDENT", "deeplabv3_cifar_resnet8", "DISTILLER.TEACHER", "deeplabv3_cifar_resnet8"]
    load_config(None, base)  # fine
    for override, match in ((["DATASET.SCENES.MAX_ITEMS", "1"], "MAX_ITEMS"),
                            (["DATASET.SCENES.MAX_SCALE", "3.0"], "does not fit"),
                            (["DATASET.CROP_SIZE", "[64]"], "CROP_SIZE"),
                            (["DATASET.SCALE_RANGE", "[2.0, 0.5]"], "SCALE_RANGE"),
                            (["DATASET.TASK", "classification"], "segmentation dataset"),
                            (["DATASET.TASK", "detection"], "DATASET.TASK")):
        with pytest.raises(ConfigError, match=match):
            load_config(None, base + override)
    with pytest.raises(ConfigError, match="classification dataset"):
        load_config(None, ["DATASET.TYPE", "fashion_mnist", "DATASET.TASK", "segmentation"])


# -- through IndexedDataset and the loaders --------------------------------------------------------
def test_loaders_yield_image_mask_index_reproducibly(tmp_path):
    write_voc_fixture(tmp_path)
    cfg = _cfg("voc", tmp_path, CROP_SIZE=[24, 24], NUM_WORKERS=0)
    cfg.SOLVER.BATCH_SIZE, cfg.DATASET.TEST.BATCH_SIZE = 2, 1
    train_set, val_set, num_classes = build_datasets(cfg, log=False)
    assert num_classes == 21 and len(train_set) == 4
    image, mask, index = train_set[(1, 2)]
    again = train_set[(1, 2)]
    assert torch.equal(image, again[0]) and torch.equal(mask, again[1]) and index == 2
    assert not torch.equal(mask, train_set[(2, 2)][1]) or not torch.equal(image, train_set[(2, 2)][0])
    train_loader, val_loader = build_loaders(cfg, train_set, val_set)
    train_loader.sampler.set_epoch(1)
    images, masks, indices = next(iter(train_loader))
    assert images.shape == (2, 3, 24, 24) and masks.shape == (2, 24, 24) and indices.shape == (2,)
    sizes = [tuple(batch[0].shape[-2:]) for batch in val_loader]
    assert sizes == [(40, 48), (36, 52)]  # whole validation images, one per batch
    cfg.DATASET.TEST.BATCH_SIZE = 2
    _, val_loader = build_loaders(cfg, train_set, val_set)
    with pytest.raises(ValueError, match="DATASET.TEST.BATCH_SIZE 1"):
        next(iter(val_loader))


def test_crd_is_refused_for_segmentation(tmp_path):
    write_voc_fixture(tmp_path)
    raw = build_voc(_cfg("voc", tmp_path), True)
    with pytest.raises(ConfigError, match="CRD"):
        IndexedDataset(raw, None, crd_k=4)
