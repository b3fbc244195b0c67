"""What a task changes in a run: its running training score, its evaluation, its words.

A task differs in its data, model, loss and metric, not in its training loop, checkpoints
or run directory (docs/architecture.md). The one `BaseTrainer` asks the run's task
(``DATASET.TASK``) to score a training batch, to evaluate a loader, to word the epoch's
line and to name its result in ``summary.json``; everything else is shared.

- classification: top-1/top-5 (percent), mdistiller's ``validate``; the best epoch is the
  best ``test_acc``; ``summary.json`` holds ``best_top1``, ``last_top1``, ``last_top5``.
- segmentation: mIoU, pixel accuracy and per-class IoU from one confusion matrix over the
  whole loader (`kdharness.engine.seg_metrics`), the loss a per-pixel cross-entropy without
  the ignored pixels; the best epoch is the best ``test_miou``; ``summary.json`` holds
  ``best_miou``, ``last_miou``, ``last_pixel_acc``, ``last_per_class_iou``. The running
  training score is the pixel accuracy of the training batches (in the ``top1`` meter).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from kdharness.config import IGNORE_INDEX, SEGMENTATION, is_segmentation
from kdharness.engine.seg_metrics import confusion_matrix, segmentation_scores
from kdharness.engine.utils import AverageMeter, accuracy, shows_progress



def _is_main_process() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0


def _progress(loader: Any, desc: str = "eval") -> Any:
    return tqdm(loader, desc=desc, leave=False, disable=not (_is_main_process() and shows_progress()))


def validate(val_loader, distiller: nn.Module, device: torch.device) -> tuple[float, float, float]:
    """Top-1, top-5 (percent) and mean cross-entropy of the student on `val_loader`."""
    meters = {name: AverageMeter() for name in ("loss", "top1", "top5")}
    distiller.eval()
    with torch.no_grad():
        for data in _progress(val_loader):
            image, target = data[0].to(device, non_blocking=True), data[1].to(device, non_blocking=True)
            output = distiller(image=image)
            top1, top5 = accuracy(output, target, topk=(1, 5))
            n = image.size(0)
            meters["loss"].update(F.cross_entropy(output, target).item(), n)
            meters["top1"].update(top1, n)
            meters["top5"].update(top5, n)
    return meters["top1"].avg, meters["top5"].avg, meters["loss"].avg


def validate_segmentation(val_loader, distiller: nn.Module, device: torch.device) -> dict[str, Any]:
    """``{"miou", "pixel_acc", "per_class_iou", "loss"}`` of the student on `val_loader`.

    The logits must be at the masks' resolution (every segmentation model's contract). The
    confusion matrix is summed over the loader, then scored once; ``loss`` is the per-pixel
    cross-entropy averaged over every labelled pixel of the loader.
    """
    confusion: torch.Tensor | None = None
    loss_sum, pixels = 0.0, 0
    distiller.eval()
    with torch.no_grad():
        for data in _progress(val_loader):
            image, target = data[0].to(device, non_blocking=True), data[1].to(device, non_blocking=True).long()
            output = distiller(image=image)
            if output.shape[-2:] != target.shape[-2:]:
                raise ValueError(
                    f"segmentation logits of size {tuple(output.shape[-2:])} for masks of size {tuple(target.shape[-2:])}; "
                    "a segmentation model must return logits at its input's resolution"
                )
            batch = confusion_matrix(output.argmax(1), target, output.size(1), IGNORE_INDEX)
            confusion = batch if confusion is None else confusion + batch
            labelled = int((target != IGNORE_INDEX).sum())
            if labelled:
                loss_sum += F.cross_entropy(output.float(), target, ignore_index=IGNORE_INDEX, reduction="sum").item()
                pixels += labelled
    if confusion is None:
        raise ValueError("the validation loader yielded no batch")
    scores: dict[str, Any] = segmentation_scores(confusion.cpu())
    scores["loss"] = loss_sum / pixels if pixels else float("nan")
    return scores


class ClassificationTask:
    """Image -> class: mdistiller's top-1/top-5."""

    name = "classification"
    metric = "top-1"
    primary = "test_acc"  # the history key whose best value is the run's best

    def update_train_meters(self, meters: dict[str, AverageMeter], preds: torch.Tensor, target: torch.Tensor) -> None:
        top1, top5 = accuracy(preds, target, topk=(1, 5))
        n = target.size(0)
        meters["top1"].update(top1, n)
        meters["top5"].update(top5, n)

    def progress(self, meters: dict[str, AverageMeter]) -> str:
        return f"Top-1:{meters['top1'].avg:.3f}| Top-5:{meters['top5'].avg:.3f}"

    def evaluate(self, loader, distiller: nn.Module, device: torch.device, prefix: str) -> tuple[OrderedDict[str, float], dict[str, Any]]:
        """Scalars for the epoch's metrics (``test_acc``, ``test_acc_top5``, ``test_loss``; the
        training-set view has no top-5) and nothing beyond them."""
        top1, top5, loss = validate(loader, distiller, device)
        scores = OrderedDict([(f"{prefix}_acc", top1)])
        if prefix == "test":
            scores[f"{prefix}_acc_top5"] = top5
        scores[f"{prefix}_loss"] = loss
        return scores, {}

    def epoch_text(self, metrics: dict[str, float]) -> str:
        text = f"top-1 {metrics['train_acc']:.2f}"
        if "test_acc" in metrics:
            text += f" | test top-1 {metrics['test_acc']:.2f}, top-5 {metrics['test_acc_top5']:.2f}"
            if "train_eval_acc" in metrics:
                text += f" | train set without augmentation {metrics['train_eval_acc']:.2f}"
        return text

    def summary_fields(self, last_evaluated: dict[str, Any], best: float) -> dict[str, Any]:
        return {
            "best_top1": best,
            "last_top1": last_evaluated.get("test_acc"),
            "last_top5": last_evaluated.get("test_acc_top5"),
        }


class SegmentationTask:
    """Image -> per-pixel classes: mIoU (the field's metric), pixel accuracy, per-class IoU."""

    name = SEGMENTATION
    metric = "mIoU"
    primary = "test_miou"

    def update_train_meters(self, meters: dict[str, AverageMeter], preds: torch.Tensor, target: torch.Tensor) -> None:
        labelled = target != IGNORE_INDEX
        count = int(labelled.sum())
        if count:
            correct = int(((preds.argmax(1) == target) & labelled).sum())
            meters["top1"].update(100.0 * correct / count, count)

    def progress(self, meters: dict[str, AverageMeter]) -> str:
        return f"PixelAcc:{meters['top1'].avg:.3f}"

    def evaluate(self, loader, distiller: nn.Module, device: torch.device, prefix: str) -> tuple[OrderedDict[str, float], dict[str, Any]]:
        """Scalars ``<prefix>_miou``, ``<prefix>_pixel_acc``, ``<prefix>_loss`` and, beside them
        (history only: not a scalar for tensorboard), ``<prefix>_per_class_iou``."""
        scores = validate_segmentation(loader, distiller, device)
        scalars = OrderedDict(
            [(f"{prefix}_miou", scores["miou"]), (f"{prefix}_pixel_acc", scores["pixel_acc"]), (f"{prefix}_loss", scores["loss"])]
        )
        # null (JSON has no NaN) for a class neither present nor predicted
        per_class = [None if math.isnan(v) else round(v, 4) for v in scores["per_class_iou"]]
        return scalars, {f"{prefix}_per_class_iou": per_class}

    def epoch_text(self, metrics: dict[str, float]) -> str:
        text = f"pixel acc {metrics['train_acc']:.2f}"
        if "test_miou" in metrics:
            text += f" | test mIoU {metrics['test_miou']:.2f}, pixel acc {metrics['test_pixel_acc']:.2f}"
            if "train_eval_miou" in metrics:
                text += f" | train set without augmentation mIoU {metrics['train_eval_miou']:.2f}"
        return text

    def summary_fields(self, last_evaluated: dict[str, Any], best: float) -> dict[str, Any]:
        return {
            "best_miou": best,
            "last_miou": last_evaluated.get("test_miou"),
            "last_pixel_acc": last_evaluated.get("test_pixel_acc"),
            "last_per_class_iou": last_evaluated.get("test_per_class_iou"),
        }


def task_for(cfg: Any) -> ClassificationTask | SegmentationTask:
    """The task of a config (``DATASET.TASK``)."""
    return SegmentationTask() if is_segmentation(cfg) else ClassificationTask()
