"""Show what ICKD distils from: `python tools/show_context.py --cfg FILE [--ckpt PATH] [KEY VALUE ...]`.

Builds the config's memory bank exactly as training does (the offline teacher's checkpoint
from the config, or `--ckpt`; the on-disk bank cache is reused), picks a few training
images with a fixed seed and writes two PNGs:

* OUT (default ickd_context.png): per query, its Top-K same-class bank samples with their
  cosine similarity s and PICD weight w, and its Top-N different-class samples with s; for a
  segmentation config (dense ICKD) the queries and samples are bank pixels, each shown
  outlined in its own training image;
* OUT's stem + "_heatmap.png": query class x negative class counts over a sample of queries.

`--ckpt` takes a teacher checkpoint (the network whose features fill the bank: the teacher,
or the student for ICKD.PARADIGM teacher_free) or a whole run checkpoint (`latest`, `best`):
the distiller's state, including an online / teacher-free run's bank.
"""
from __future__ import annotations

import argparse
import os
import sys
from types import SimpleNamespace

from kdharness.compose import load_config
from kdharness.config import ConfigError
from kdharness.engine.checkpoint import CheckpointError

CKPT_FLAG = "--ckpt"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="show_context.py", description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cfg", required=True, help="an ICKD config (DISTILLER.TYPE ICKD)")
    parser.add_argument(CKPT_FLAG, help="teacher (bank network) or run checkpoint; default: the config's teacher")
    parser.add_argument("--out", default="ickd_context.png", help="the grid PNG; the heatmap goes beside it (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=4, help="query images in the grid (default: %(default)s)")
    parser.add_argument("--show", type=int, default=8, help="at most this many positives and negatives per query (default: %(default)s)")
    parser.add_argument("--heatmap-queries", type=int, default=2000,
                        help="queries sampled for the heatmap, 0 = the whole bank (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the query sample (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, e.g. ICKD.K 4")
    return parser


def heatmap_path(out: str) -> str:
    stem, ext = os.path.splitext(out)
    return f"{stem}_heatmap{ext or '.png'}"


def build_ickd(cfg, ckpt: str | None, num_classes: int, num_data: int, device):
    """The config's ICKD distiller with the bank network's weights (config teacher or `ckpt`)."""
    import torch

    from kdharness.distillers._base import TEACHER_NONE, TEACHER_PRETRAINED
    from kdharness.engine.build import teacher_requirement
    from kdharness.engine.checkpoint import load_checkpoint
    from kdharness.models import create_model
    from kdharness.models.weights import load_weights, resolve_teacher_path
    from kdharness.registry import distiller_dict

    requirement = teacher_requirement(cfg)
    student = create_model(cfg.DISTILLER.STUDENT, cfg.DATASET.TYPE, num_classes)
    teacher = None if requirement == TEACHER_NONE else create_model(cfg.DISTILLER.TEACHER, cfg.DATASET.TYPE, num_classes)
    distiller = distiller_dict[cfg.DISTILLER.TYPE](student, teacher, cfg, num_data=num_data)
    if ckpt:
        state = load_checkpoint(ckpt)
        weights = state.get("model", state) if isinstance(state, dict) else state
        if isinstance(weights, dict) and any(str(key).startswith("student.") for key in weights):
            missing, unexpected = distiller.load_state_dict(weights, strict=False)
            if [k for k in missing if not k.startswith("bank.")] or unexpected:
                raise ValueError(
                    f"{CKPT_FLAG} = {ckpt!r} is a run checkpoint of another configuration: missing {missing[:5]}, "
                    f"unexpected {unexpected[:5]}; pass the --cfg (and overrides) it was trained with"
                )
        else:
            load_weights(distiller.bank_model, ckpt, CKPT_FLAG, state_dict=weights)
    elif requirement == TEACHER_PRETRAINED:
        load_weights(teacher, resolve_teacher_path(cfg))
    else:
        print(f"warning: ICKD.PARADIGM {cfg.ICKD.PARADIGM}: without {CKPT_FLAG} the bank comes from an untrained "
              "network; pass a run checkpoint (output/.../latest) to see what that run retrieved", file=sys.stderr)
    return distiller.to(torch.device(device))


def dense_images(distiller, train_loader, val_loader, device):
    """``image_of(row)`` for a dense bank: the row's training image, seen without augmentation and
    stretched to 0-255 for display, with the row's pixel outlined (each retrieved pixel in its own image)."""
    import numpy as np
    import torch

    from ickd_plugin.context_figure import mark_pixel
    from ickd_plugin.training_view import no_augmentation_view

    bank = distiller.bank
    view = no_augmentation_view(train_loader.dataset, val_loader.dataset)
    position_of = {int(view[i][2]): i for i in range(len(view))} if len(view) <= 100_000 else None

    def image_of(row: int) -> np.ndarray:
        image_id = int(bank.image_ids[row])
        image = view[position_of[image_id] if position_of is not None else image_id][0]
        with torch.no_grad():
            grid = tuple(distiller.teacher(image[None].to(device))[1][distiller.dense_opts.feature].shape[-2:])
        pixels = image.float()
        pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min()).clamp_min(1e-12) * 255
        array = pixels.permute(1, 2, 0).to(torch.uint8).cpu().numpy()
        return mark_pixel(array if array.shape[2] == 3 else np.repeat(array, 3, axis=2), int(bank.pixel_ids[row]), grid)

    return image_of


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.cfg, args.opts)
        if cfg.DISTILLER.TYPE != "ICKD":
            raise ConfigError(f"DISTILLER.TYPE = {cfg.DISTILLER.TYPE!r} in {args.cfg}; show_context needs an ICKD config")
        if args.ckpt and not os.path.isfile(args.ckpt):
            raise FileNotFoundError(f"{CKPT_FLAG} = {args.ckpt!r}: no such file (working directory {os.getcwd()!r})")
        for flag, value, low in (("--queries", args.queries, 1), ("--show", args.show, 1), ("--heatmap-queries", args.heatmap_queries, 0)):
            if value < low:
                raise ValueError(f"{flag} = {value}; expected an integer >= {low}")
        import numpy as np
        import torch

        from ickd_plugin.context_figure import (
            hard_negative_counts,
            query_contexts,
            render_context_grid,
            render_negative_heatmap,
        )
        from kdharness.data import build_datasets, build_loaders

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        train_set, val_set, num_classes = build_datasets(cfg)
        train_loader, val_loader = build_loaders(cfg, train_set, val_set)
        distiller = build_ickd(cfg, args.ckpt, num_classes, len(train_set), device)
        distiller.eval()
        distiller.build_bank(SimpleNamespace(train_loader=train_loader, val_loader=val_loader, distiller=distiller, cfg=cfg))
        bank, opts = distiller.bank, distiller.opts
        generator = torch.Generator().manual_seed(args.seed)
        order = torch.randperm(bank.num_rows, generator=generator)
        rows = order[: min(args.queries, bank.num_rows)]
        contexts = query_contexts(bank, rows, opts.k, opts.n, opts.tau, opts.all_same_class, show=args.show)
        raw = getattr(train_set, "raw", train_set)
        names = list(getattr(raw, "classes", None) or [str(c) for c in range(num_classes)])
        if getattr(bank, "image_ids", None) is not None and bank.image_ids.numel():
            image_of, what = dense_images(distiller, train_loader, val_loader, device), "pixels"
        else:
            # bank rows are in dataset-index order: row r holds the sample whose index is the r-th held one
            index_of_row = (bank.row_of_index >= 0).nonzero().squeeze(1).cpu()

            def image_of(row: int) -> np.ndarray:
                return np.asarray(raw[int(index_of_row[row])][0].convert("RGB"))

            what = "samples"
        title = (f"{cfg.DISTILLER.TEACHER if distiller.teacher is not None else cfg.DISTILLER.STUDENT} bank "
                 f"({bank.num_rows} {what}), K={opts.k}, N={opts.n}, tau1={opts.tau:g}"
                 + (", IC-KD-all" if opts.all_same_class else ""))
        render_context_grid(contexts, image_of, names, args.out, title=title)
        sample = order if args.heatmap_queries == 0 else order[: args.heatmap_queries]
        counts = hard_negative_counts(bank, sample, opts.n, num_classes)
        render_negative_heatmap(counts, names, heatmap_path(args.out),
                                title=f"classes of the Top-{opts.n} negatives of {sample.numel()} queries")
    except (ConfigError, CheckpointError, FileNotFoundError, ImportError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} and {heatmap_path(args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
