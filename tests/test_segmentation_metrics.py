"""Segmentation's numbers: the confusion matrix and mIoU against hand counts and a brute force,
the poly schedule, and the per-pixel cross-entropy's ignore index."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from kdharness.config import IGNORE_INDEX, get_cfg_defaults
from kdharness.distillers._base import Vanilla
from kdharness.engine.seg_metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy, segmentation_scores
from kdharness.engine.utils import learning_rate

PRED = torch.tensor([[0, 0, 1], [1, 2, 2]])
TARGET = torch.tensor([[0, 1, 1], [IGNORE_INDEX, 2, 0]])


def test_confusion_matrix_by_hand():
    # pairs (true, predicted): (0,0) (1,0) (1,1) [ignored] (2,2) (0,2)
    confusion = confusion_matrix(PRED, TARGET, 3)
    assert confusion.tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 1]]
    assert confusion.dtype == torch.int64


def test_miou_pixel_accuracy_by_hand():
    confusion = confusion_matrix(PRED, TARGET, 3)
    # IoU0 = 1 / (2 + 2 - 1), IoU1 = 1 / (2 + 1 - 1), IoU2 = 1 / (1 + 2 - 1)
    assert iou_per_class(confusion) == pytest.approx([100 / 3, 50.0, 50.0])
    assert mean_iou(confusion) == pytest.approx(100 * 4 / 9)
    assert pixel_accuracy(confusion) == pytest.approx(60.0)  # 3 of 5 labelled pixels


def test_absent_class_is_left_out_but_a_false_positive_class_counts():
    absent = segmentation_scores(confusion_matrix(PRED, TARGET, 4))  # class 3: never true, never predicted
    assert math.isnan(absent["per_class_iou"][3])
    assert absent["miou"] == pytest.approx(100 * 4 / 9)
    predicted = PRED.clone()
    predicted[0, 0] = 3  # class 3 predicted on a pixel of class 0: IoU 0, counted
    scores = segmentation_scores(confusion_matrix(predicted, TARGET, 4))
    assert scores["per_class_iou"][3] == 0.0
    # IoU0 = 0 / (2 + 1 - 0) = 0; IoU1 = 1/2; IoU2 = 1/2; IoU3 = 0
    assert scores["miou"] == pytest.approx(100 * (0 + 0.5 + 0.5 + 0) / 4)


def test_only_ignored_pixels_give_no_score():
    confusion = confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), IGNORE_INDEX), 3)
    assert int(confusion.sum()) == 0
    assert math.isnan(mean_iou(confusion)) and math.isnan(pixel_accuracy(confusion))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_and_miou_against_brute_force(seed):
    generator = torch.Generator().manual_seed(seed)
    classes = 5
    pred = torch.randint(0, classes, (3, 7, 9), generator=generator)
    target = torch.randint(0, classes, (3, 7, 9), generator=generator)
    target[torch.rand(target.shape, generator=generator) < 0.2] = IGNORE_INDEX
    counts = [[0] * classes for _ in range(classes)]
    for p, t in zip(pred.reshape(-1).tolist(), target.reshape(-1).tolist()):
        if t != IGNORE_INDEX:
            counts[t][p] += 1
    confusion = confusion_matrix(pred, target, classes)
    assert confusion.tolist() == counts
    ious = []
    for c in range(classes):
        tp = counts[c][c]
        fn = sum(counts[c]) - tp
        fp = sum(counts[r][c] for r in range(classes)) - tp
        if tp + fp + fn:
            ious.append(100 * tp / (tp + fp + fn))
    assert mean_iou(confusion) == pytest.approx(sum(ious) / len(ious))
    labelled = sum(map(sum, counts))
    assert pixel_accuracy(confusion) == pytest.approx(100 * sum(counts[c][c] for c in range(classes)) / labelled)


def test_accumulating_batches_equals_one_pass():
    generator = torch.Generator().manual_seed(3)
    pred = torch.randint(0, 4, (6, 5, 5), generator=generator)
    target = torch.randint(0, 4, (6, 5, 5), generator=generator)
    whole = confusion_matrix(pred, target, 4)
    parts = confusion_matrix(pred[:2], target[:2], 4) + confusion_matrix(pred[2:], target[2:], 4)
    assert torch.equal(whole, parts)


def test_unmapped_labels_are_refused_with_the_values():
    target = TARGET.clone()
    target[0, 0] = 33  # a Cityscapes labelId that was not mapped to a train id
    with pytest.raises(ValueError, match=r"\[33\].*train ids"):
        confusion_matrix(PRED, target, 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(PRED, TARGET[:1], 3)


def _poly_cfg(power=0.9, epochs=4, lr=0.02):
    cfg = get_cfg_defaults()
    cfg.SOLVER.SCHEDULER, cfg.SOLVER.POLY_POWER, cfg.SOLVER.EPOCHS, cfg.SOLVER.LR = "poly", power, epochs, lr
    return cfg


def test_poly_schedule_is_the_per_iteration_formula():
    cfg = _poly_cfg()
    steps_per_epoch, total = 10, 40
    for iteration in (0, 1, 9, 10, 25, 39):
        epoch, step = divmod(iteration, steps_per_epoch)
        expected = 0.02 * (1 - iteration / total) ** 0.9  # DeepLab's / CIRKD's adjust_lr
        assert learning_rate(epoch + 1, cfg, step / steps_per_epoch) == pytest.approx(expected)
    assert learning_rate(5, cfg) == 0.0  # past the end: never negative
    assert learning_rate(3, _poly_cfg(power=1.0)) == pytest.approx(0.02 * 0.5)  # power 1 is linear


def test_segmentation_ce_ignores_the_ignore_index_and_is_zero_without_labels():
    cfg = get_cfg_defaults()
    cfg.DATASET.TASK = "segmentation"
    distiller = Vanilla(nn.Identity(), None, cfg)
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 5.0]]]])  # [1, 2 classes, 1, 2 pixels]
    target = torch.tensor([[[0, IGNORE_INDEX]]])
    expected = -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]  # the first pixel alone
    assert distiller.ce_loss(logits, target) == pytest.approx(float(expected))
    empty = distiller.ce_loss(logits, torch.full_like(target, IGNORE_INDEX))
    assert float(empty) == 0.0 and torch.isfinite(empty)
    # a classification config keeps cross-entropy's default: label 255 would be a class
    assert Vanilla(nn.Identity(), None, get_cfg_defaults()).segmentation is False
