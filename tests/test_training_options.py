"""The options the converged-regime study needs (issue 21): label smoothing on every
distiller's cross-entropy, a class-balanced training subset, test evaluation every N epochs
and the fit on the un-augmented training set."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from fixtures_data import write_fashion_mnist_fixture
from harness_utils import REPO, run_config
from kdharness.compose import load_config
from kdharness.config import ConfigError, get_cfg_defaults
from kdharness.data.indexed import train_subset_positions
from kdharness.distillers import distiller_dict
from kdharness.engine.trainer import method_name

VANILLA_CFG = REPO / "configs" / "fashion_mnist" / "vanilla" / "res8.yaml"


class Fixed(nn.Module):
    """A "network" returning given logits (and an empty feature dict), so losses are checked by hand."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, image):
        return self.logits, {}


def _smoothed_ce_by_hand(logits: torch.Tensor, target: torch.Tensor, eps: float) -> float:
    total = 0.0
    for row, label in zip(logits.tolist(), target.tolist()):
        log_norm = math.log(sum(math.exp(v) for v in row))
        log_p = [v - log_norm for v in row]
        total += -(1 - eps) * log_p[label] - eps * sum(log_p) / len(row)
    return total / len(target)


def _cfg(**solver):
    cfg = get_cfg_defaults()
    for key, value in solver.items():
        cfg.SOLVER[key] = value
    return cfg


LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
TARGET = torch.tensor([0, 1])


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_is_every_distillers_cross_entropy(eps):
    expected = _smoothed_ce_by_hand(LOGITS, TARGET, eps)
    vanilla = distiller_dict["NONE"](Fixed(LOGITS), None, _cfg(LABEL_SMOOTHING=eps))
    _, losses = vanilla.forward_train(image=torch.zeros(2), target=TARGET)
    assert losses["loss_ce"].item() == pytest.approx(expected, rel=1e-5)
    cfg = _cfg(LABEL_SMOOTHING=eps)
    kd = distiller_dict["KD"](Fixed(LOGITS), Fixed(LOGITS.flip(1)), cfg)
    _, losses = kd.forward_train(image=torch.zeros(2), target=TARGET)
    assert losses["loss_ce"].item() == pytest.approx(cfg.KD.LOSS.CE_WEIGHT * expected, rel=1e-5)
    dkd = distiller_dict["DKD"](Fixed(LOGITS), Fixed(LOGITS.flip(1)), cfg)
    _, losses = dkd.forward_train(image=torch.zeros(2), target=TARGET, epoch=1)
    assert losses["loss_ce"].item() == pytest.approx(cfg.DKD.CE_WEIGHT * expected, rel=1e-5)


def test_a_distiller_built_without_a_harness_config_uses_the_plain_cross_entropy():
    """mdistiller's two-argument form (and its CFG, which has no SOLVER.LABEL_SMOOTHING)."""
    plain = distiller_dict["NONE"](Fixed(LOGITS))
    _, losses = plain.forward_train(image=torch.zeros(2), target=TARGET)
    assert losses["loss_ce"].item() == pytest.approx(_smoothed_ce_by_hand(LOGITS, TARGET, 0.0), rel=1e-5)


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_label_smoothing_outside_0_1_is_refused(value):
    with pytest.raises(ConfigError, match=r"SOLVER.LABEL_SMOOTHING = .*expected a number in \[0, 1\)"):
        load_config(str(VANILLA_CFG), ["SOLVER.LABEL_SMOOTHING", value])


def test_label_smoothing_names_its_leaderboard_column():
    cfg = load_config(str(VANILLA_CFG), ["SOLVER.LABEL_SMOOTHING", "0.1"])
    assert method_name(cfg) == "LS"
    cfg = load_config(str(REPO / "configs/fashion_mnist/kd/res14_res8.yaml"), ["SOLVER.LABEL_SMOOTHING", "0.1"])
    assert method_name(cfg) == "KD+LS"
    assert method_name(load_config(str(VANILLA_CFG))) == "vanilla"


def _subset_cfg(n: int, balanced: bool):
    cfg = get_cfg_defaults()
    cfg.DATASET.TRAIN_SUBSET = n
    cfg.DATASET.TRAIN_SUBSET_BALANCED = balanced
    return cfg


def test_balanced_subset_takes_the_first_n_over_c_of_each_class_in_dataset_order():
    targets = [2, 0, 0, 1, 2, 2, 0, 1, 1, 0, 2, 1]
    assert train_subset_positions(_subset_cfg(6, True), True, targets) == [0, 1, 2, 3, 4, 7]
    assert train_subset_positions(_subset_cfg(6, False), True, targets) == [0, 1, 2, 3, 4, 5]
    assert train_subset_positions(_subset_cfg(6, True), False, targets) is None  # the val split stays whole
    assert train_subset_positions(_subset_cfg(0, True), True, targets) is None


def test_balanced_subset_refuses_what_it_cannot_balance():
    targets = [0, 0, 0, 1, 2, 2]
    with pytest.raises(ConfigError, match="expected a multiple of 3"):
        train_subset_positions(_subset_cfg(4, True), True, targets)
    with pytest.raises(ConfigError, match="needs 2 samples per class, but class 1 .* has only 1"):
        train_subset_positions(_subset_cfg(6, True), True, targets)


def test_balanced_subset_of_the_real_loader(tmp_path):
    from kdharness.data.fashion_mnist import build_fashion_mnist

    root = write_fashion_mnist_fixture(tmp_path / "fm", n_train=60, n_test=10)
    cfg = get_cfg_defaults()
    cfg.DATASET.ROOT, cfg.DATASET.TRAIN_SUBSET, cfg.DATASET.TRAIN_SUBSET_BALANCED = str(root), 20, True
    subset = build_fashion_mnist(cfg, train=True)
    full = build_fashion_mnist(_root_cfg(root), train=True)
    assert np.bincount(subset.targets, minlength=10).tolist() == [2] * 10
    chosen = train_subset_positions(cfg, True, full.targets)
    assert np.array_equal(subset.data, full.data[chosen])


def _root_cfg(root: Path):
    cfg = get_cfg_defaults()
    cfg.DATASET.ROOT = str(root)
    return cfg


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory) -> Path:
    return write_fashion_mnist_fixture(tmp_path_factory.mktemp("fashion"), n_train=48, n_test=20)


def _opts(root: Path, prefix: Path, *extra: str) -> list[str]:
    return [
        "DATASET.ROOT", str(root), "DATASET.NUM_WORKERS", "0", "DATASET.TRAIN_SUBSET", "0",
        "SOLVER.EPOCHS", "3", "SOLVER.BATCH_SIZE", "16", "LOG.PREFIX", str(prefix),
        "LOG.TENSORBOARD_FREQ", "0", *extra,
    ]


def test_eval_freq_evaluates_every_n_epochs_and_the_last(fashion_root, tmp_path):
    summary = run_config(VANILLA_CFG, _opts(fashion_root, tmp_path, "LOG.EVAL_FREQ", "2"))
    history = summary["history"]
    assert [("test_acc" in entry) for entry in history] == [False, True, True]
    assert all("train_acc" in entry for entry in history)
    evaluated = [entry["test_acc"] for entry in history if "test_acc" in entry]
    assert summary["best_top1"] == max(evaluated) and summary["last_top1"] == history[-1]["test_acc"]
    assert summary["best_epoch"] in (2, 3)


def test_eval_train_set_measures_the_fit_without_changing_training(fashion_root, tmp_path):
    from kdharness.engine.build import build_trainer
    from kdharness.engine.trainer import validate

    plain = run_config(VANILLA_CFG, _opts(fashion_root, tmp_path / "a"))
    cfg = load_config(str(VANILLA_CFG), _opts(fashion_root, tmp_path / "b", "LOG.EVAL_TRAIN_SET", "True"))
    trainer = build_trainer(cfg, [], device="cpu")
    fitted = trainer.train()
    for a, b in zip(plain["history"], fitted["history"]):  # training is the same, to the bit
        assert a["train_loss"] == b["train_loss"] and a["test_acc"] == b["test_acc"]
    assert "train_eval_acc" not in plain["history"][-1]
    # the last entry is the student's top-1 on the 48 training images through the test transform
    acc, _, _ = validate(trainer.train_eval_loader, trainer.distiller, torch.device("cpu"))
    assert fitted["history"][-1]["train_eval_acc"] == acc
    assert len(trainer.train_eval_loader.dataset) == 48
    image, _ = trainer.train_eval_loader.dataset[0]
    assert torch.equal(image, trainer.val_loader.dataset.transform(trainer.train_loader.dataset.raw[0][0]))
