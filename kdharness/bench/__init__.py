"""Measuring tools behind `tools/bench.py`: timing, statistics, hardware and memory probes.

Every benchmark here follows the same rules, because a single timing on a shared machine
says little:

* everything compared is measured in ONE process, on the same inputs;
* a few warm-up iterations first (allocator, kernel selection, caches), then repeated timed
  iterations, reported as the median and the inter-quartile range (IQR), which ignore the
  occasional iteration that another process on the machine slowed down;
* the candidates are interleaved round-robin (one iteration of each per repetition, in a
  rotating order), so a burst of machine noise hits all of them alike; ratios are taken per
  repetition (paired) and then summarised, which also cancels slow drifts (thermal, load).

The benchmarks themselves (step time, bank build, retrieval, sharded bank) measure the plugin
too, which the host never imports, so they live with the tools: `tools/benchmarks/`; each
returns a plain JSON-serialisable record, and `tools/bench.py` prints them and writes them to a file.
"""
from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from kdharness.engine.run_info import cpu_model

__all__ = [
    "DTYPES",
    "PeakMemory",
    "available_memory_bytes",
    "format_table",
    "hardware_info",
    "paired_ratios",
    "resolve_device",
    "round_robin",
    "summarize",
    "synchronize",
]

# Names accepted on the command line and written to the JSON records.
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str | None) -> torch.device:
    """``"auto"``/None -> CUDA when present, else CPU; otherwise ``torch.device(name)``."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels: CUDA launches are asynchronous, so a timer alone measures launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, IQR, min and count of a list of measurements (same unit as the input).

    Quartiles by linear interpolation (numpy's default), written out so the record does not
    depend on a numpy version.
    """
    values = sorted(float(v) for v in samples)
    if not values:
        raise ValueError("no measurements to summarise")

    def quantile(q: float) -> float:
        position = q * (len(values) - 1)
        low = int(position)
        high = min(low + 1, len(values) - 1)
        return values[low] + (values[high] - values[low]) * (position - low)

    q1, median, q3 = quantile(0.25), quantile(0.5), quantile(0.75)
    return {"median": median, "q1": q1, "q3": q3, "iqr": q3 - q1, "min": values[0], "n": len(values)}


def paired_ratios(samples: Mapping[str, Sequence[float]], reference: str) -> dict[str, dict[str, float]]:
    """Per-repetition ratios ``samples[name][i] / samples[reference][i]``, summarised.

    Repetition ``i`` of every candidate ran back to back, so the paired ratio compares
    measurements taken under the same machine conditions.
    """
    base = samples[reference]
    out = {}
    for name, values in samples.items():
        if len(values) != len(base):
            raise ValueError(f"{name} has {len(values)} measurements and {reference} {len(base)}; expected paired runs")
        out[name] = summarize([v / b for v, b in zip(values, base)])
    return out


def round_robin(
    candidates: Mapping[str, Callable[[], Any]],
    warmup: int,
    repeats: int,
    device: torch.device,
) -> dict[str, list[float]]:
    """Time each candidate ``repeats`` times (seconds), interleaved, after ``warmup`` rounds.

    Repetition ``r`` runs the candidates in the order rotated by ``r``, so none is always
    first (after a context switch) or always last. Each call is bracketed by a device
    synchronisation: the time is the call's full cost, not its launch.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"warmup = {warmup}, repeats = {repeats}; expected warmup >= 0 and repeats >= 1")
    names = list(candidates)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repetition in range(warmup + repeats):
        shift = repetition % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            candidates[name]()
            synchronize(device)
            elapsed = time.perf_counter() - start
            if repetition >= warmup:
                times[name].append(elapsed)
    return times


# ----------------------------------------------------------------------------- machine


def _meminfo_bytes(field: str) -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can use now: free GPU memory, or the OS's MemAvailable."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return _meminfo_bytes("MemAvailable")


def hardware_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on; the load average says how busy the machine was."""
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable_cores = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "hostname": platform.node(),
        "device": str(device),
        "memory_total_bytes": _meminfo_bytes("MemTotal"),
        "memory_available_bytes": _meminfo_bytes("MemAvailable"),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    try:
        info["load_average_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_bytes"] = int(props.total_memory)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


# ----------------------------------------------------------------------------- memory


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence C++ writes to fd 2 (the CPU-only profiler logs a harmless "no GPU" line there)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_from_profile(profiler: Any) -> int | None:
    """Peak of the running sum of the profiler's allocation/free records (bytes), or None."""
    try:
        records = sorted(
            (event.start_ns(), event.nbytes())
            for event in profiler.profiler.kineto_results.events()
            if event.name() == "[memory]"
        )
    except Exception:  # the record layout is not public API: degrade to "unknown"
        return None
    current = peak = 0
    for _start, nbytes in records:
        current += nbytes
        peak = max(peak, current)
    return peak


class PeakMemory:
    """Context manager: the peak memory allocated inside the block beyond what was held before.

    CUDA: the caching allocator's ``max_memory_allocated`` (exact). CPU: the running sum of
    torch's allocation and free records from ``torch.profiler`` with ``profile_memory``
    (torch tensors only); the process's resident size is no use here, since freed blocks stay
    resident in the C allocator and the next allocation reuses them. Run the block once,
    outside any timing: the profiler slows it down. ``peak_bytes`` is None when unknown.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes: int | None = None
        self._start = 0
        self._profiler: Any = None
        self._quiet: Any = None

    def __enter__(self) -> "PeakMemory":
        synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            from torch.profiler import ProfilerActivity, profile

            self._quiet = _quiet_stderr()
            self._quiet.__enter__()
            self._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._profiler.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        if self.device.type == "cuda":
            self.peak_bytes = max(0, int(torch.cuda.max_memory_allocated(self.device)) - self._start)
            return
        try:
            self._profiler.__exit__(*exc)
        finally:
            self._quiet.__exit__(None, None, None)
        self.peak_bytes = _peak_from_profile(self._profiler)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width text table (no dependency), numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        # first column (a name) left-aligned, the others (numbers) right-aligned
        lines.append("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths))))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)
