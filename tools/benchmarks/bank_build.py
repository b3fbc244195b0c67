"""Memory-bank build time of offline ICKD, as a ratio to one plain no-grad teacher pass.

Filling the offline bank is, by design, one eval-mode teacher pass over the training set
(seen without augmentation) plus keeping each sample's pooled feature. The benchmark puts
the plugin's code next to the least any implementation must do, on the same data, the same
DataLoader settings and the same teacher:

* ``teacher_pass``: ``for image, ... in loader: teacher(image)`` under no_grad (reference);
* ``extract+fill``: the plugin's `extract_features` (the pass, with a forward hook on the
  classifier keeping the pooled features) followed by `MemoryBank.fill` (sort by dataset
  index when needed, inverse norms, class -> rows table); its peak memory (the bank, the
  networks' activations for one batch, the transients) is measured once, untimed;
* ``build_bank``: what the trainer's `before_train` hook runs, `ICKD.build_bank(trainer)`,
  with the disk cache off: the cache key (a sha256 of the teacher's weights, the labels and
  the transform), the pass, the fill and the capacity check;
* ``build_bank_cached``: the same with the disk cache on and warm: the key, reading and
  verifying the cached file, the fill (what a second run with the same teacher pays).

The data are synthetic CIFAR-shaped tensors held in memory, so loading costs almost
nothing and any overhead of the bank code shows up undiluted (a real loader that decodes
and normalises images makes both sides slower by the same amount and the ratio smaller).
"""
from __future__ import annotations

import tempfile
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks.step_time import (
    CONFIG_ROOT,
    DATASET,
    Pair,
    INPUT_SHAPE,
    NUM_CLASSES,
    construct_distiller,
    default_pair,
    load_method_config,
    resolve_pair,
)
from kdharness.bench import PeakMemory, hardware_info, paired_ratios, resolve_device, round_robin, summarize

REFERENCE = "teacher_pass"


class SyntheticImageSet(Dataset):
    """``num_samples`` random CIFAR-shaped images in one tensor, returning ``(image, target, index)``.

    Has what the plugin reads from a training set: ``targets`` (balanced classes) and a
    ``transform`` attribute (None: the images are already tensors), like `IndexedDataset`.
    """

    def __init__(self, num_samples: int, num_classes: int = NUM_CLASSES, seed: int = 0, transform: Any = None) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(num_samples, *INPUT_SHAPE, generator=generator)
        self.targets = (torch.randperm(num_samples, generator=generator) % num_classes).tolist()
        self.num_classes = num_classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index], index


def bench_bank_build(
    pair: str | Pair | None = None,
    num_samples: int | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    num_workers: int = 0,
    bank_dtype: str | None = None,
    warmup: int = 1,
    repeats: int = 5,
    seed: int = 0,
    config_root: Any = CONFIG_ROOT,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Times of the bank-building variants and their paired ratios to a plain teacher pass.

    ``num_samples`` defaults to 2048 on CPU and 50 000 (all of CIFAR-100) on GPU, where a
    small set would let fixed costs (hashing the teacher for the cache key) dominate.
    ``batch_size`` and ``bank_dtype`` default to the config's ``ICKD.BANK.BATCH_SIZE`` and
    ``ICKD.BANK.DTYPE``; the plain pass uses the same batch size and workers.
    """
    from ickd_plugin import MemoryBank
    from ickd_plugin.features import find_classifier
    from ickd_plugin.teacher_pass import extract_features
    from ickd_plugin.training_view import no_augmentation_view
    from kdharness.models import create_model
    from kdharness.compose import load_builtin_components

    load_builtin_components()
    device = device if isinstance(device, torch.device) else resolve_device(device)
    pair_spec = resolve_pair(pair or default_pair(device), config_root)
    num_samples = int(num_samples or (50_000 if device.type == "cuda" else 2048))
    train_set = SyntheticImageSet(num_samples, NUM_CLASSES, seed)
    val_set = SyntheticImageSet(1, NUM_CLASSES, seed)
    with tempfile.TemporaryDirectory(prefix="kd_bench_bank_") as scratch:
        # K = N = 1 so that any sample count with >= 2 per class passes the capacity check;
        # K and N do not enter the build.
        common = ["ICKD.K", "1", "ICKD.N", "1", "DATASET.NUM_WORKERS", str(num_workers)]
        if batch_size:
            common += ["ICKD.BANK.BATCH_SIZE", str(batch_size)]
        if bank_dtype:
            common += ["ICKD.BANK.DTYPE", bank_dtype]
        cfg, source = load_method_config("ICKD+KD", pair_spec, 64, scratch, common + ["ICKD.BANK.USE_CACHE", "False"], config_root)
        cached_cfg, _ = load_method_config(
            "ICKD+KD", pair_spec, 64, scratch,
            common + ["ICKD.BANK.USE_CACHE", "True", "ICKD.BANK.CACHE_DIR", f"{scratch}/cache"], config_root,
        )
        torch.manual_seed(seed)
        teacher = create_model(cfg.DISTILLER.TEACHER, DATASET, NUM_CLASSES).to(device).eval()
        student = create_model(cfg.DISTILLER.STUDENT, DATASET, NUM_CLASSES).to(device)
        uncached = construct_distiller(cfg, student, teacher, num_samples)
        cached = construct_distiller(cached_cfg, student, teacher, num_samples)
        batch = int(cfg.ICKD.BANK.BATCH_SIZE)
        dtype = uncached.opts.bank_dtype
        trainer = _TrainerView(
            DataLoader(train_set, batch_size=64, num_workers=num_workers),
            DataLoader(val_set, batch_size=64),
        )
        classifier = find_classifier(teacher)
        view = no_augmentation_view(train_set, val_set)
        pin = device.type == "cuda"

        @torch.no_grad()
        def teacher_pass() -> None:
            loader = DataLoader(view, batch_size=batch, shuffle=False, num_workers=num_workers, pin_memory=pin)
            for image, _target, _index in loader:
                teacher(image.to(device, non_blocking=True))

        def extract_and_fill() -> None:
            features, labels, indices = extract_features(teacher, classifier, view, batch, num_workers, dtype, device)
            MemoryBank(dtype).fill(features, labels, indices, classifier.out_features, device)

        def build(distiller: Any) -> Callable[[], None]:
            def run() -> None:
                distiller.bank = MemoryBank(dtype, persistent=False)  # empty: force a real build
                distiller.build_bank(trainer)

            return run

        candidates = {
            REFERENCE: teacher_pass,
            "extract+fill": extract_and_fill,
            "build_bank": build(uncached),
            "build_bank_cached": build(cached),
        }
        if progress:
            progress(f"bank build: {num_samples} samples through {cfg.DISTILLER.TEACHER}, {len(candidates)} variants "
                     f"x {repeats} (+{warmup} warm-up; the first cached build writes the cache)")
        build(cached)()  # write the cache once, so every timed cached build is a hit
        times = round_robin(candidates, warmup, repeats, device)
        with PeakMemory(device) as peak:  # once, untimed: the profiler slows a CPU run down
            extract_and_fill()
    ratios = paired_ratios(times, REFERENCE)
    results = {}
    for name, samples in times.items():
        stats = summarize(samples)
        results[name] = {
            "median_ms": stats["median"] * 1e3,
            "q1_ms": stats["q1"] * 1e3,
            "q3_ms": stats["q3"] * 1e3,
            "iqr_ms": stats["iqr"] * 1e3,
            "per_sample_us": stats["median"] * 1e6 / num_samples,
            "ratio_to_teacher_pass": ratios[name]["median"],
            "ratio_q1": ratios[name]["q1"],
            "ratio_q3": ratios[name]["q3"],
            "samples_ms": [t * 1e3 for t in samples],
        }
    feature_dim = classifier.in_features
    return {
        "benchmark": "bank_build",
        "pair": pair_spec.name,
        "teacher": cfg.DISTILLER.TEACHER,
        "config": source,
        "num_samples": num_samples,
        "feature_dim": feature_dim,
        "bank_dtype": str(dtype).replace("torch.", ""),
        "bank_bytes": num_samples * feature_dim * torch.empty(0, dtype=dtype).element_size(),
        "build_peak_bytes": peak.peak_bytes,
        "batch_size": batch,
        "num_workers": num_workers,
        "device": str(device),
        "warmup": warmup,
        "repeats": repeats,
        "reference": REFERENCE,
        "candidates": results,
        "hardware": hardware_info(device),
    }


class _TrainerView:
    """The part of a trainer that `ICKD.build_bank` reads: the two loaders."""

    def __init__(self, train_loader: DataLoader, val_loader: DataLoader) -> None:
        self.train_loader = train_loader
        self.val_loader = val_loader
