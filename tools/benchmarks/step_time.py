"""Training-step time of KD, DKD, CRD, ICKD+KD and ICKD+DKD on the same batch and networks.

What is timed is exactly one step of the harness's trainer (`BaseTrainer._run_step`): the
batch moved to the device, zero_grad, the distiller's forward (teacher, student, the
method's losses; for ICKD also retrieval from the memory bank and the in-context logits),
backward, the SGD step, and the trainer's bookkeeping (accuracy, loss values). It is the
time a user sees per iteration, minus data loading (the batch is ready in memory).

Each method is built the way `kdharness.engine.build.build_distiller` builds it, from the
method's shipped config (``configs/cifar100/<method>/<pair>.yaml``, ICKD from
``configs/cifar100/ickd*/`` when present, else its base's config with ``DISTILLER.TYPE
ICKD``), except that the teacher keeps its random initialisation: step time does not depend
on the weights' values, and no checkpoint is needed. Every method gets a copy of the same
student and the same teacher. State whose size matters is realistic: CRD's memories and
ICKD's bank hold ``num_data`` (CIFAR-100: 50 000) rows; the bank is filled from random
features through the plugin's `MemoryBank.fill`, not by a teacher pass over 50k images.
"""
from __future__ import annotations

import copy
import inspect
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import yaml

from kdharness.bench import hardware_info, paired_ratios, resolve_device, round_robin, summarize
from kdharness.results.summaries import ickd_base

METHODS: tuple[str, ...] = ("KD", "DKD", "CRD", "ICKD+KD", "ICKD+DKD")
REFERENCE_METHOD = "KD"
CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"
DATASET = "cifar100"
INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 100
NUM_DATA = 50_000  # CIFAR-100's training set: the size of CRD's memories and ICKD's bank


@dataclass(frozen=True)
class Pair:
    """A teacher -> student pair: which config files to read, and which networks to put in.

    ``config_pair`` is the file stem under ``configs/cifar100/<method>/``; ``teacher`` and
    ``student`` (when set) override the config's networks, so a small pair can reuse the
    published recipe of a large one (hyper-parameters do not change the step's cost).
    """

    name: str
    config_pair: str
    teacher: str | None = None
    student: str | None = None


PAIRS: dict[str, Pair] = {
    # The reference pair (mdistiller's headline CIFAR-100 result).
    "res32x4_res8x4": Pair("res32x4_res8x4", "res32x4_res8x4"),
    # Small enough for a 2-core CPU: same recipe and CIFAR-100 shapes, 7x / 15x fewer FLOPs.
    "res14_res8": Pair("res14_res8", "res32x4_res8x4", teacher="resnet14", student="resnet8"),
}


def default_pair(device: torch.device) -> str:
    return "res32x4_res8x4" if device.type == "cuda" else "res14_res8"


def resolve_pair(name: str | Pair, config_root: Path = CONFIG_ROOT) -> Pair:
    """A known pair, or any pair that has shipped configs (``configs/cifar100/kd/<name>.yaml``)."""
    if isinstance(name, Pair):
        return name
    if name in PAIRS:
        return PAIRS[name]
    if (config_root / DATASET / "kd" / f"{name}.yaml").is_file():
        return Pair(name, name)
    known = sorted(set(PAIRS) | {p.stem for p in (config_root / DATASET / "kd").glob("*.yaml")})
    raise ValueError(f"--pair {name!r}: no configs for it; known pairs: {', '.join(known)}")


def method_config(method: str, pair: Pair, config_root: Path = CONFIG_ROOT) -> tuple[Path, list[str]]:
    """(YAML file, extra overrides) that configure ``method`` for ``pair``.

    ``"ICKD+X"`` uses a shipped offline ICKD config whose ``ICKD.BASE`` is X when one exists
    (any ``configs/cifar100/ickd*/`` folder), else X's own config with ``DISTILLER.TYPE ICKD
    ICKD.BASE X`` and the ICKD defaults.
    """
    if method.startswith("ICKD+"):
        base = method.split("+", 1)[1]
        for path in sorted((config_root / DATASET).glob(f"ickd*/{pair.config_pair}.yaml")):
            document = yaml.safe_load(path.read_text()) or {}
            node = document.get("ICKD") or {}
            if (document.get("DISTILLER") or {}).get("TYPE") != "ICKD":
                continue
            if node.get("BASE", "KD") == base and node.get("PARADIGM", "offline") == "offline":
                return path, []
        return config_root / DATASET / base.lower() / f"{pair.config_pair}.yaml", ["DISTILLER.TYPE", "ICKD", "ICKD.BASE", base]
    return config_root / DATASET / method.lower() / f"{pair.config_pair}.yaml", []


def load_method_config(
    method: str, pair: Pair, batch_size: int, log_prefix: str, extra: Sequence[str] = (), config_root: Path = CONFIG_ROOT
) -> tuple[Any, str]:
    """The frozen config of ``method`` (with bench overrides) and a description of its source."""
    from kdharness.compose import load_config

    path, overrides = method_config(method, pair, config_root)
    opts = list(overrides) + [
        "SOLVER.BATCH_SIZE", str(batch_size),
        "DATASET.NUM_WORKERS", "0",
        "LOG.PREFIX", log_prefix,
        "LOG.TENSORBOARD_FREQ", "0",
        "LOG.SAVE_STEP_FREQ", "0",
        "EXPERIMENT.NAME", "bench_" + method.replace("+", "_").lower(),
    ]
    if pair.teacher:
        opts += ["DISTILLER.TEACHER", pair.teacher]
    if pair.student:
        opts += ["DISTILLER.STUDENT", pair.student]
    if method.startswith("ICKD"):
        opts += ["ICKD.BANK.USE_CACHE", "False"]
    opts += list(extra)
    cfg = load_config(str(path), opts)
    return cfg, " ".join([str(path.relative_to(config_root.parent) if path.is_relative_to(config_root.parent) else path), *overrides])


def construct_distiller(cfg: Any, student: nn.Module, teacher: nn.Module | None, num_data: int) -> nn.Module:
    """`build_distiller` without the checkpoint: same class, same arguments, same frozen teacher."""
    from kdharness.distillers._base import TEACHER_NONE, TEACHER_PRETRAINED
    from kdharness.engine.build import teacher_requirement
    from kdharness.registry import distiller_dict

    cls = distiller_dict[cfg.DISTILLER.TYPE]
    requirement = teacher_requirement(cfg)
    if requirement == TEACHER_NONE:
        teacher = None
    elif requirement == TEACHER_PRETRAINED and teacher is not None:
        teacher.requires_grad_(False)
    kwargs: dict[str, Any] = {}
    if "num_data" in inspect.signature(cls).parameters:
        kwargs["num_data"] = num_data
    return cls(student, teacher, cfg, **kwargs)


def method_state_bytes(distiller: nn.Module) -> int:
    """Bytes of the method's own buffers (CRD memories, ICKD bank), i.e. outside the two networks."""
    return sum(
        buffer.numel() * buffer.element_size()
        for name, buffer in distiller.named_buffers()
        if not name.startswith(("student.", "teacher."))
    )


@dataclass
class SyntheticBatch:
    """One training batch plus the per-sample state a realistic bank or memory implies."""

    image: torch.Tensor  # [B, 3, 32, 32]
    target: torch.Tensor  # [B]
    index: torch.Tensor  # [B] dataset indices
    bank_labels: torch.Tensor  # [num_data]: label of every training sample (balanced classes)
    generator: torch.Generator

    def data(self, crd_k: int | None) -> tuple[torch.Tensor, ...]:
        """What the train loader yields: (image, target, index[, contrastive_index])."""
        if crd_k is None:
            return self.image, self.target, self.index
        contrastive = torch.randint(0, self.bank_labels.numel(), (self.index.numel(), crd_k + 1), generator=self.generator)
        contrastive[:, 0] = self.index
        return self.image, self.target, self.index, contrastive


def synthetic_batch(batch_size: int, num_data: int, num_classes: int, seed: int = 0) -> SyntheticBatch:
    generator = torch.Generator().manual_seed(seed)
    bank_labels = torch.randperm(num_data, generator=generator) % num_classes
    index = torch.randperm(num_data, generator=generator)[:batch_size]
    image = torch.randn(batch_size, *INPUT_SHAPE, generator=generator)
    return SyntheticBatch(image, bank_labels[index].clone(), index, bank_labels, generator)


def fill_bank_randomly(distiller: nn.Module, batch: SyntheticBatch, num_classes: int, device: torch.device, seed: int = 0) -> int:
    """Fill an ICKD distiller's bank with random non-negative features (post-ReLU, like pooled
    features) through the plugin's `MemoryBank.fill`; returns the feature width."""
    from ickd_plugin.features import find_classifier

    dim = find_classifier(distiller.bank_model).in_features
    num_data = batch.bank_labels.numel()
    generator = torch.Generator().manual_seed(seed + 1)
    features = torch.randn(num_data, dim, generator=generator).abs_()
    bank_device = torch.device("cpu") if distiller.opts.bank_device == "cpu" else device
    distiller.bank.fill(features, batch.bank_labels, torch.arange(num_data), num_classes, bank_device)
    return dim


def bench_step_time(
    pair: str | Pair | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    methods: Sequence[str] = METHODS,
    warmup: int = 3,
    repeats: int = 20,
    num_data: int = NUM_DATA,
    amp: bool = False,
    channels_last: bool = False,
    extra_overrides: Sequence[str] = (),
    seed: int = 0,
    config_root: Path = CONFIG_ROOT,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Median step time of each method, and its paired ratio to KD. Returns a JSON-able record."""
    from kdharness.data.loaders import uses_crd
    from kdharness.engine.build import experiment_name
    from kdharness.models import create_model
    from kdharness.compose import load_builtin_components
    from kdharness.registry import trainer_dict

    load_builtin_components()
    device = device if isinstance(device, torch.device) else resolve_device(device)
    pair_spec = resolve_pair(pair or default_pair(device), config_root)
    methods = list(methods)
    if REFERENCE_METHOD not in methods:
        methods.insert(0, REFERENCE_METHOD)
    extra = list(extra_overrides) + ["SOLVER.AMP", str(bool(amp)), "SOLVER.CHANNELS_LAST", str(bool(channels_last))]
    batch = synthetic_batch(batch_size, num_data, NUM_CLASSES, seed)
    steps: dict[str, Callable[[], Any]] = {}
    details: dict[str, dict[str, Any]] = {}
    trainers = []
    with tempfile.TemporaryDirectory(prefix="kd_bench_") as log_prefix:
        configs = {m: load_method_config(m, pair_spec, batch_size, log_prefix, extra, config_root) for m in methods}
        names = {(cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT) for cfg, _ in configs.values()}
        if len(names) != 1:
            raise ValueError(f"the methods' configs name different networks for pair {pair_spec.name}: {sorted(names)}")
        teacher_name, student_name = names.pop()
        torch.manual_seed(seed)
        teacher = create_model(teacher_name, DATASET, NUM_CLASSES).to(device)
        student = create_model(student_name, DATASET, NUM_CLASSES)
        try:
            for method in methods:
                cfg, source = configs[method]
                if progress:
                    progress(f"building {method} ({source})")
                distiller = construct_distiller(cfg, copy.deepcopy(student), teacher, num_data).to(device)
                if cfg.SOLVER.CHANNELS_LAST:
                    distiller = distiller.to(memory_format=torch.channels_last)
                info: dict[str, Any] = {"config": source}
                if hasattr(distiller, "bank") and hasattr(distiller, "opts"):
                    info["bank_dim"] = fill_bank_randomly(distiller, batch, NUM_CLASSES, device, seed)
                    info["bank_rows"] = num_data
                info["method_state_bytes"] = method_state_bytes(distiller)
                trainer = trainer_dict[cfg.SOLVER.TRAINER](experiment_name(cfg), distiller, None, None, cfg)
                trainers.append(trainer)
                distiller.train()
                data = batch.data(int(cfg.CRD.NCE.K) if uses_crd(cfg) else None)
                if device.type == "cuda" and cfg.DATASET.PIN_MEMORY:
                    data = tuple(t.pin_memory() for t in data)
                steps[method] = _step_function(trainer, data, info)
                details[method] = info
            if progress:
                progress(f"timing {len(methods)} methods x {repeats} steps (+{warmup} warm-up), interleaved")
            times = round_robin(steps, warmup, repeats, device)
        finally:
            for trainer in trainers:
                trainer._release_lock()
                if trainer.tf_writer is not None:
                    trainer.tf_writer.close()
    ratios = paired_ratios(times, REFERENCE_METHOD)
    results = {}
    for method in methods:
        stats = summarize(times[method])
        ratio = ratios[method]
        results[method] = {
            "median_ms": stats["median"] * 1e3,
            "q1_ms": stats["q1"] * 1e3,
            "q3_ms": stats["q3"] * 1e3,
            "iqr_ms": stats["iqr"] * 1e3,
            "ratio_to_kd": ratio["median"],
            "ratio_q1": ratio["q1"],
            "ratio_q3": ratio["q3"],
            "ratio_iqr": ratio["iqr"],
            "samples_ms": [t * 1e3 for t in times[method]],
            **details[method],
        }
        base = ickd_base(method)
        if base in times:  # ICKD+X against X itself, paired the same way
            to_base = paired_ratios({method: times[method], base: times[base]}, base)[method]
            results[method].update(base=base, ratio_to_base=to_base["median"], ratio_to_base_q1=to_base["q1"],
                                   ratio_to_base_q3=to_base["q3"])
    return {
        "benchmark": "step_time",
        "pair": pair_spec.name,
        "teacher": teacher_name,
        "student": student_name,
        "dataset_shapes": DATASET,
        "input_shape": list(INPUT_SHAPE),
        "num_classes": NUM_CLASSES,
        "num_data": num_data,
        "batch_size": batch_size,
        "device": str(device),
        "amp": bool(amp),
        "channels_last": bool(channels_last),
        "warmup": warmup,
        "repeats": repeats,
        "reference": REFERENCE_METHOD,
        "methods": results,
        "hardware": hardware_info(device),
    }


def _step_function(trainer: Any, data: tuple[torch.Tensor, ...], info: dict[str, Any]) -> Callable[[], None]:
    """One trainer step on ``data`` plus the `after_step` hooks, as `BaseTrainer.train_epoch` runs them."""
    counter = [0]

    def step() -> None:
        losses = trainer._run_step(data, 1, counter[0])
        counter[0] += 1
        trainer._call_hooks("after_step", counter[0], losses)
        info["loss_terms"] = sorted(losses)

    return step
