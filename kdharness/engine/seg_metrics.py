"""Segmentation scores from a confusion matrix: mIoU, pixel accuracy, per-class IoU.

Pure functions. A confusion matrix is accumulated over the whole validation set and the
scores are read from it once, as the field reports them (CIRKD, mmsegmentation): the IoU
of a class is over all its pixels in the set, not a mean of per-image IoUs.

Our choices, where conventions differ:
- pixels labelled ``IGNORE_INDEX`` (255) count nowhere, neither as truth nor as prediction;
- a class with no pixel in the ground truth and none predicted (union 0) has no IoU (NaN in
  the per-class list) and is left out of the mean, so a validation set without, say,
  trains is not penalised for them; a class that is predicted but never present has IoU 0
  and counts;
- every score is in percent, like top-1.
"""
from __future__ import annotations

import math

import torch

from kdharness.config import IGNORE_INDEX


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """``[num_classes, num_classes]`` int64 counts: row = true class, column = predicted class.

    ``pred`` and ``target`` hold class indices of the same shape (any shape). Target pixels
    equal to ``ignore_index`` are left out; any other target outside ``[0, num_classes)`` is
    an error (a mask that was not mapped to train ids), as is a prediction outside it.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        bad = sorted({int(v) for v in target[(target < 0) | (target >= num_classes)].unique()[:5]})
        raise ValueError(
            f"target labels {bad} are outside [0, {num_classes}) and are not the ignore index {ignore_index}; "
            "the masks must hold train ids (check the dataset's label mapping)"
        )
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"predicted classes outside [0, {num_classes})")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(confusion: torch.Tensor) -> list[float]:
    """IoU (percent) of each class, ``tp / (tp + fp + fn)``; NaN where the class is neither
    present nor predicted."""
    confusion = confusion.double()
    tp = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - tp
    return [float(100.0 * t / u) if u > 0 else math.nan for t, u in zip(tp.tolist(), union.tolist())]


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean of the defined per-class IoUs (percent); NaN when no class is defined (no labelled pixel)."""
    defined = [value for value in iou_per_class(confusion) if not math.isnan(value)]
    return sum(defined) / len(defined) if defined else math.nan


def pixel_accuracy(confusion: torch.Tensor) -> float:
    """Correct labelled pixels over labelled pixels (percent); NaN with no labelled pixel."""
    total = int(confusion.sum())
    return 100.0 * int(confusion.diagonal().sum()) / total if total else math.nan


def segmentation_scores(confusion: torch.Tensor) -> dict[str, float | list[float]]:
    """``{"miou", "pixel_acc", "per_class_iou"}`` from one confusion matrix."""
    return {
        "miou": mean_iou(confusion),
        "pixel_acc": pixel_accuracy(confusion),
        "per_class_iou": iou_per_class(confusion),
    }
