"""Retrieval time and memory of ICKD's memory bank, against the machine's own matmul throughput.

Retrieval (the plugin's `ickd_plugin.retrieval.retrieve`) is, per chunk of bank rows, one
``[B x D] @ [D x M_chunk]`` matmul in the bank's dtype, a per-column scale by 1/|H_r|
(cosine similarity), a gather of each query's own-class columns (positives), a mask of the
own class and a top-N with exact tie-breaking (negatives); then a top-K over the positives.
Its FLOPs are those of the matmul, so the natural yardstick is a plain matmul of the same
shape and dtype on the same device, timed in the same process and interleaved with it:

* ``matmul``: the similarity product ``q @ H[chunk].T`` over the same chunks that
  `retrieve` uses (the chunking only bounds the similarity block's memory; it is the shape
  the hardware sees), computed as retrieval computes it (`similarity_product`: one matmul
  in the bank's dtype, except a half bank on a CPU, which is upcast block by block and
  multiplied in float32 because that is faster there);
* ``matmul_native``: the plain ``q @ H[chunk].T`` in the bank's dtype, whatever the device:
  on a CPU without half-precision matrix units it shows why the upcast is used;
* ``matmul+topk``: ``matmul`` plus ``torch.topk(N)`` per chunk: the least any top-N
  retrieval must do;
* ``retrieve``: the plugin's function, exactly as the ICKD step calls it;
* ``retrieve[gather]`` and ``retrieve[by_class]``: the same call with each way of reading the
  positives forced (same rows, different cost: a ``[B, M]`` table of class rows, or one class
  at a time; `retrieve` picks by the table's size). by_class only where it applies (one
  similarity block).

The grid's ``classes`` (optional) sets the number of classes; otherwise CIFAR-100-like banks
get 100 and larger ones 1000. A dense (segmentation) bank is few classes with large ones:
e.g. ``--sizes 64000 --dims 64 --batches 1024 --classes 11``.

``fraction_of_matmul = t(matmul) / t(retrieve)``: 1.0 means retrieval runs at the speed of
the matmul it contains; 0.25 means three quarters of its time is spent elsewhere (masks,
top-k, tie-breaking, gathers). Memory: the bank's bytes (features) plus its per-row
tables, and the peak extra memory one `retrieve` call allocates.
"""
from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch

from kdharness.bench import (
    DTYPES,
    PeakMemory,
    available_memory_bytes,
    hardware_info,
    resolve_device,
    round_robin,
    summarize,
)

# Grids (bank rows, feature dims, batch sizes, dtypes). CIFAR-100 has 50k training images,
# ImageNet 1.28M; 4M stands for a larger corpus.
GRIDS: dict[str, dict[str, tuple]] = {
    "quick": {"sizes": (50_000,), "dims": (256, 2048), "batches": (64,), "dtypes": ("fp32", "fp16", "bf16")},
    "full": {
        "sizes": (50_000, 1_280_000, 4_000_000),
        "dims": (256, 512, 1024, 2048),
        "batches": (64, 128, 256, 512),
        "dtypes": ("fp32", "fp16", "bf16"),
    },
}

# Bytes per similarity-block element that `retrieve` may hold at once (float32 scores, the
# masked copy, the tie-breaking cumsum/slot tensors in int64, boolean masks), rounded up.
_WORKSPACE_BYTES_PER_ELEMENT = 64
# Fraction of the free memory a case may plan to use; the rest is left to the machine.
_MEMORY_HEADROOM = 0.8


@dataclass(frozen=True)
class Case:
    bank_size: int
    dim: int
    batch: int
    dtype: str
    classes: int = 0  # 0: by the bank's size (`num_classes`)

    @property
    def num_classes(self) -> int:
        """`classes` if set, else CIFAR-100-like classes for a CIFAR-sized bank, ImageNet-like ones above."""
        if self.classes:
            return self.classes
        return 100 if self.bank_size <= 100_000 else 1000


def bank_bytes(bank_size: int, dim: int, dtype: str) -> int:
    return bank_size * dim * torch.empty(0, dtype=DTYPES[dtype]).element_size()


def aux_bytes(bank_size: int, num_classes: int) -> int:
    """Per-row tables kept beside the features: 1/|H| (float32), label, row-of-index (int64), class table (int64)."""
    per_class = math.ceil(bank_size / num_classes)
    return bank_size * (4 + 8 + 8) + num_classes * per_class * 8


def planned_bytes(bank_size: int, dim: int, batches: Iterable[int], dtype: str, num_classes: int) -> int:
    """Memory a (bank, dim, dtype) group needs at its largest batch: bank, tables, workspace."""
    from ickd_plugin.retrieval import auto_chunk_size

    largest = max(batches)
    workspace = largest * auto_chunk_size(largest, bank_size) * _WORKSPACE_BYTES_PER_ELEMENT
    return bank_bytes(bank_size, dim, dtype) + aux_bytes(bank_size, num_classes) + workspace


def make_bank(bank_size: int, dim: int, dtype: torch.dtype, num_classes: int, device: torch.device, seed: int = 0):
    """(features, 1/|H|, labels, class_rows) of a random bank, built chunk by chunk on ``device``
    so that a large half-precision bank never exists in float32."""
    from ickd_plugin.memory_bank import class_row_table

    generator = torch.Generator(device=device).manual_seed(seed)
    features = torch.empty(bank_size, dim, dtype=dtype, device=device)
    inv_norms = torch.empty(bank_size, dtype=torch.float32, device=device)
    step = max(1, (1 << 26) // dim)
    for start in range(0, bank_size, step):
        stop = min(start + step, bank_size)
        block = torch.randn(stop - start, dim, generator=generator, device=device).abs_()  # post-ReLU features
        stored = block.to(dtype)
        features[start:stop] = stored
        inv_norms[start:stop] = stored.float().norm(dim=1).clamp_min(1e-12).reciprocal()
    labels = torch.randperm(bank_size, generator=generator, device=device) % num_classes
    return features, inv_norms, labels, class_row_table(labels, num_classes)


def _case_candidates(case: Case, bank: tuple, k: int, n: int, device: torch.device, seed: int) -> dict[str, Callable[[], Any]]:
    from ickd_plugin.retrieval import auto_chunk_size, retrieve, similarity_product

    features, inv_norms, labels, class_rows = bank
    generator = torch.Generator(device=device).manual_seed(seed + case.batch)
    self_rows = torch.randperm(case.bank_size, generator=generator, device=device)[: case.batch]
    queries = torch.randn(case.batch, case.dim, generator=generator, device=device).abs_()
    query_labels = labels[self_rows]
    q_native = torch.nn.functional.normalize(queries, dim=1).to(features.dtype)
    q = q_native.float()  # the operands retrieval multiplies
    chunk = auto_chunk_size(case.batch, case.bank_size)

    def matmul() -> None:
        for start in range(0, case.bank_size, chunk):
            similarity_product(q, features[start : start + chunk])

    def matmul_native() -> None:
        for start in range(0, case.bank_size, chunk):
            q_native @ features[start : start + chunk].t()

    def matmul_topk() -> None:
        for start in range(0, case.bank_size, chunk):
            similarity_product(q, features[start : start + chunk]).topk(min(n, chunk), dim=1)

    def run_retrieve(strategy: str = "auto") -> Callable[[], None]:
        return lambda: retrieve(queries, query_labels, self_rows, features, inv_norms, class_rows, k, n, strategy=strategy)

    candidates = {"matmul": matmul, "matmul_native": matmul_native, "matmul+topk": matmul_topk,
                  "retrieve": run_retrieve(), "retrieve[gather]": run_retrieve("gather")}
    if chunk >= case.bank_size:
        candidates["retrieve[by_class]"] = run_retrieve("by_class")
    return candidates


def bench_retrieval(
    devices: Sequence[str | torch.device] | None = None,
    grid: str | dict[str, tuple] = "quick",
    warmup: int = 1,
    repeats: int = 5,
    k: int | None = None,
    n: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time and memory of `retrieve` over a grid, per device; cases that do not fit are skipped with a note.

    ``grid``: ``"quick"``, ``"full"`` or a dict with ``sizes``, ``dims``, ``batches``,
    ``dtypes`` and optionally ``classes``. ``k``/``n`` default to the ICKD defaults (``ICKD.K``, ``ICKD.N``).
    """
    from ickd_plugin import get_ickd_defaults

    defaults = get_ickd_defaults()
    k = int(k or defaults.K)
    n = int(n or defaults.N)
    spec = GRIDS[grid] if isinstance(grid, str) else grid
    devices = [resolve_device(d) if not isinstance(d, torch.device) else d for d in (devices or ["auto"])]
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for device in devices:
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()  # blocks cached by earlier benchmarks would count as used
        for size, classes in ((size, classes) for size in spec["sizes"] for classes in spec.get("classes", (0,))):
            for dim in spec["dims"]:
                for dtype in spec["dtypes"]:
                    num_classes = Case(size, dim, 1, dtype, classes).num_classes
                    need = planned_bytes(size, dim, spec["batches"], dtype, num_classes)
                    free = available_memory_bytes(device)
                    if free is not None and need > _MEMORY_HEADROOM * free:
                        note = (f"needs ~{need / 2**30:.1f} GiB, {_MEMORY_HEADROOM:.0%} of the "
                                f"{free / 2**30:.1f} GiB available on {device} is the limit")
                        skipped.append({"device": str(device), "bank_size": size, "dim": dim, "dtype": dtype, "reason": note})
                        if progress:
                            progress(f"skip {device} M={size} D={dim} {dtype}: {note}")
                        continue
                    bank = make_bank(size, dim, DTYPES[dtype], num_classes, device, seed)
                    for batch in spec["batches"]:
                        case = Case(size, dim, batch, dtype, classes)
                        if progress:
                            progress(f"{device} M={size} D={dim} B={batch} {dtype}")
                        rows.append(_measure_case(case, bank, k, n, device, warmup, repeats, seed))
                    del bank
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    return {
        "benchmark": "retrieval",
        "k": k,
        "n": n,
        "grid": {key: list(value) for key, value in spec.items()},
        "warmup": warmup,
        "repeats": repeats,
        "cases": rows,
        "skipped": skipped,
        "hardware": {str(d): hardware_info(d) for d in devices},
    }


def _measure_case(case: Case, bank: tuple, k: int, n: int, device: torch.device, warmup: int, repeats: int, seed: int) -> dict[str, Any]:
    candidates = _case_candidates(case, bank, k, n, device, seed)
    times = round_robin(candidates, warmup, repeats, device)
    with PeakMemory(device) as peak:
        candidates["retrieve"]()
    stats = {name: summarize(samples) for name, samples in times.items()}
    by_class = stats.get("retrieve[by_class]")
    flops = 2.0 * case.batch * case.dim * case.bank_size
    matmul_s, retrieve_s = stats["matmul"]["median"], stats["retrieve"]["median"]
    return {
        "device": str(device),
        "bank_size": case.bank_size,
        "dim": case.dim,
        "batch": case.batch,
        "dtype": case.dtype,
        "num_classes": case.num_classes,
        "bank_bytes": bank_bytes(case.bank_size, case.dim, case.dtype),
        "aux_bytes": aux_bytes(case.bank_size, case.num_classes),
        "retrieve_median_ms": retrieve_s * 1e3,
        "retrieve_iqr_ms": stats["retrieve"]["iqr"] * 1e3,
        "matmul_median_ms": matmul_s * 1e3,
        "matmul_iqr_ms": stats["matmul"]["iqr"] * 1e3,
        "matmul_native_median_ms": stats["matmul_native"]["median"] * 1e3,
        "matmul_topk_median_ms": stats["matmul+topk"]["median"] * 1e3,
        "matmul_tflops": flops / matmul_s / 1e12,
        "retrieve_effective_tflops": flops / retrieve_s / 1e12,
        "fraction_of_matmul": matmul_s / retrieve_s,
        "retrieve_gather_median_ms": stats["retrieve[gather]"]["median"] * 1e3,
        "retrieve_by_class_median_ms": None if by_class is None else by_class["median"] * 1e3,
        "peak_extra_bytes": peak.peak_bytes,
    }
