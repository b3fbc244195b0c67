"""Top-1/top-5 of a checkpoint: `python tools/eval.py --cfg FILE --ckpt output/.../student_best`.

For a segmentation config (DATASET.TASK segmentation): mIoU, pixel accuracy and each class's IoU.
Accepts a student checkpoint (weights under "model", as mdistiller writes them), a full
trainer checkpoint (the student is taken from the distiller's state) or a plain state_dict.
"""
from __future__ import annotations

import argparse
import os
import sys

from kdharness.compose import load_config
from kdharness.config import ConfigError

CKPT_FLAG = "--ckpt"  # named in every error about the checkpoint file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("evaluate a trained model")
    parser.add_argument("--cfg", required=True)
    parser.add_argument("--ckpt", required=True, help="checkpoint path")
    parser.add_argument("--model", choices=("student", "teacher"), default="student",
                        help="which config model the checkpoint holds (DISTILLER.STUDENT or DISTILLER.TEACHER)")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.cfg, args.opts)
        if not os.path.isfile(args.ckpt):
            raise FileNotFoundError(f"{CKPT_FLAG} = {args.ckpt!r}: no such file (working directory {os.getcwd()!r})")
        import torch
        from torch.utils.data import DataLoader

        from kdharness.data import IndexedDataset, build_dataset_transform
        from kdharness.data.loaders import eval_collate
        from kdharness.registry import dataset_dict
        from kdharness.engine.checkpoint import load_checkpoint
        from kdharness.engine.tasks import task_for
        from kdharness.distillers._base import Vanilla
        from kdharness.models import create_model
        from kdharness.models.weights import check_checkpoint_format, load_weights

        check_checkpoint_format(args.ckpt, CKPT_FLAG)
        raw_val = dataset_dict[cfg.DATASET.TYPE](cfg, False)
        val_set = IndexedDataset(raw_val, build_dataset_transform(cfg, train=False), with_index=False)
        num_classes = val_set.num_classes
        name = cfg.DISTILLER.STUDENT if args.model == "student" else cfg.DISTILLER.TEACHER
        model = create_model(name, cfg.DATASET.TYPE, num_classes)
        state = load_checkpoint(args.ckpt)
        weights = state.get("model", state)
        if any(k.startswith("student.") for k in weights):  # a full distiller checkpoint
            weights = {k[len("student."):]: v for k, v in weights.items() if k.startswith("student.")}
        load_weights(model, args.ckpt, CKPT_FLAG, state_dict=weights)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        val_loader = DataLoader(val_set, batch_size=cfg.DATASET.TEST.BATCH_SIZE, num_workers=cfg.DATASET.NUM_WORKERS,
                                collate_fn=eval_collate(cfg))
        scores, extra = task_for(cfg).evaluate(val_loader, Vanilla(model, None, cfg).to(device), device, "test")
    except (ConfigError, FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if "test_miou" in scores:
        print(f"{name} on {cfg.DATASET.TYPE}: mIoU {scores['test_miou']:.2f}  pixel acc {scores['test_pixel_acc']:.2f}  "
              f"loss {scores['test_loss']:.4f}")
        classes = getattr(raw_val, "classes", None) or [str(c) for c in range(len(extra["test_per_class_iou"]))]
        for label, iou in zip(classes, extra["test_per_class_iou"]):
            print(f"  {label}: {'absent' if iou is None else f'{iou:.2f}'}")
        return 0
    print(f"{name} on {cfg.DATASET.TYPE}: top-1 {scores['test_acc']:.2f}  top-5 {scores['test_acc_top5']:.2f}  "
          f"loss {scores['test_loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
