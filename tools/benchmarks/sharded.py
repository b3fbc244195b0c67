"""Sharded vs replicated memory bank under torch.distributed: step time, memory and traffic per rank.

For each world size W, W gloo processes (CPU) hold the same random bank twice: whole on
every rank (`MemoryBank`, the default) and split in contiguous slices (`ShardedMemoryBank`,
``ICKD.BANK.SHARDED``). Each repetition times, interleaved, the in-context part of one ICKD
step for every rank's batch of ``b`` queries (the rest of the step is the same either way):

* ``replicated``: `retrieve` over the whole local bank, then the selected rows' features;
* ``sharded``: `sharded_retrieve` (gather the global batch, local candidates, merge, fetch
  the selected rows from their owners).

A repetition's time is the slowest rank's (a step waits for it). Each rank measures its
bank's bytes; the bytes each rank receives per sharded step are counted from the shapes
the collectives move (the fetched rows from the actual owners of this step's rows).
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
from typing import Any, Callable, Sequence

import torch

from kdharness.bench import DTYPES, hardware_info, paired_ratios, summarize

DEFAULTS = {"worlds": (2, 4), "sizes": (50_000,), "dims": (256,), "batches": (64,), "dtypes": ("fp32", "fp16")}
QUICK = {"worlds": (2, 3), "sizes": (20_000,), "dims": (256,), "batches": (32,), "dtypes": ("fp32", "fp16")}
NUM_CLASSES = 100


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bank_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.buffers())


def received_bytes(world: int, batch: int, dim: int, k: int, n: int, remote_rows: int, element: int) -> dict[str, int]:
    """Bytes one rank receives in one sharded step, by collective (shapes of `sharded_retrieve`'s messages)."""
    others = world - 1
    return {
        "batch_sizes": others * 8,
        "queries": others * batch * dim * 4,  # float32 queries
        "labels_and_indices": others * batch * 2 * 8,
        "candidates": others * world * batch * (k + n) * (4 + 8),  # every rank's candidates for the global batch
        "selected_rows": remote_rows * dim * element,
    }


def _worker(rank: int, world: int, port: int, case: dict[str, Any], warmup: int, repeats: int, out: str) -> None:
    import torch.distributed as dist

    from ickd_plugin.distributed import shard_bounds
    from ickd_plugin.memory_bank import MemoryBank
    from ickd_plugin.retrieval import retrieve
    from ickd_plugin.sharded_bank import ShardedMemoryBank
    from ickd_plugin.sharded_retrieval import sharded_retrieve

    if os.path.exists("/sys/class/net/lo"):  # keep gloo on the loopback interface
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(case["threads"])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        rows, dim, batch, dtype, k, n = (case[name] for name in ("rows", "dim", "batch", "dtype", "k", "n"))
        g = torch.Generator().manual_seed(0)
        labels = torch.randint(0, NUM_CLASSES, (rows,), generator=g)
        start, stop = shard_bounds(rows, rank, world)
        replicated = MemoryBank(DTYPES[dtype])
        sharded = ShardedMemoryBank(DTYPES[dtype])
        features = torch.empty(rows, dim, dtype=DTYPES[dtype])
        for first in range(0, rows, 65536):  # the same bank on every rank, generated in blocks
            block = features[first : first + 65536]
            block.copy_(torch.randn(block.shape, generator=g))
        replicated.fill(features, labels, torch.arange(rows), NUM_CLASSES, "cpu")
        sharded.fill_shard(features[start:stop].clone(), labels[start:stop], torch.arange(start, stop),
                           NUM_CLASSES, rows, "cpu")
        del features
        q = torch.Generator().manual_seed(1 + rank)
        queries = torch.randn(batch, dim, generator=q)
        query_labels = torch.randint(0, NUM_CLASSES, (batch,), generator=q)
        index = torch.randint(0, rows, (batch,), generator=q)

        def run_replicated() -> None:
            found = retrieve(queries, query_labels, replicated.rows_for(index), replicated.features,
                             replicated.inv_norms, replicated.class_rows, k, n)
            replicated.features[found.pos_rows], replicated.features[found.neg_rows]

        def run_sharded() -> Any:
            return sharded_retrieve(sharded, queries, query_labels, index, k, n)

        candidates: dict[str, Callable[[], Any]] = {"replicated": run_replicated, "sharded": run_sharded}
        times: dict[str, list[float]] = {name: [] for name in candidates}
        names = list(candidates)
        for repetition in range(warmup + repeats):
            shift = repetition % len(names)
            for name in names[shift:] + names[:shift]:
                dist.barrier()
                began = time.perf_counter()
                candidates[name]()
                elapsed = torch.tensor([time.perf_counter() - began], dtype=torch.float64)
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the step waits for the slowest rank
                if repetition >= warmup:
                    times[name].append(float(elapsed))
        found, _, _ = run_sharded()
        stops = torch.tensor([shard_bounds(rows, r, world)[1] for r in range(world)])
        selected = torch.cat([found.pos_rows, found.neg_rows], dim=1)
        remote = torch.tensor([int((torch.searchsorted(stops, selected, right=True) != rank).sum())])
        memory = torch.tensor([_bank_bytes(replicated), sharded.local_bytes()], dtype=torch.float64)
        dist.all_reduce(remote, op=dist.ReduceOp.MAX)
        maxima = memory.clone()
        dist.all_reduce(maxima, op=dist.ReduceOp.MAX)
        if rank == 0:
            torch.save({"times": times, "remote_rows_max": int(remote), "bank_bytes_max": maxima.tolist(),
                        "bank_bytes_rank0": memory.tolist()}, out)
    finally:
        dist.destroy_process_group()


def bench_sharded(
    worlds: Sequence[int] = DEFAULTS["worlds"],
    sizes: Sequence[int] = DEFAULTS["sizes"],
    dims: Sequence[int] = DEFAULTS["dims"],
    batches: Sequence[int] = DEFAULTS["batches"],
    dtypes: Sequence[str] = DEFAULTS["dtypes"],
    k: int = 8,
    n: int = 8,
    warmup: int = 1,
    repeats: int = 5,
    threads: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One record: per (world, rows, dim, batch per rank, dtype), median step times (slowest rank),
    the paired ratio sharded / replicated, the bank bytes per rank, and bytes received per step."""
    import torch.multiprocessing as mp

    cases = []
    for world in worlds:
        for rows in sizes:
            for dim in dims:
                for batch in batches:
                    for dtype in dtypes:
                        if progress:
                            progress(f"sharded bank: W={world} M={rows} D={dim} b={batch} {dtype}")
                        case = {"rows": rows, "dim": dim, "batch": batch, "dtype": dtype, "k": k, "n": n,
                                "threads": threads}
                        with tempfile.TemporaryDirectory() as tmp:
                            out = os.path.join(tmp, "rank0.pt")
                            mp.spawn(_worker, args=(world, _free_port(), case, warmup, repeats, out), nprocs=world, join=True)
                            result = torch.load(out, weights_only=True)
                        times = result["times"]
                        element = torch.empty(0, dtype=DTYPES[dtype]).element_size()
                        traffic = received_bytes(world, batch, dim, k, n, result["remote_rows_max"], element)
                        cases.append({
                            "world": world, "bank_size": rows, "dim": dim, "batch_per_rank": batch, "dtype": dtype,
                            "replicated_ms": {key: v * 1e3 for key, v in summarize(times["replicated"]).items() if key != "n"},
                            "sharded_ms": {key: v * 1e3 for key, v in summarize(times["sharded"]).items() if key != "n"},
                            "ratio_sharded_to_replicated": paired_ratios(times, "replicated")["sharded"],
                            "bank_bytes_per_rank": {"replicated": int(result["bank_bytes_max"][0]),
                                                    "sharded": int(result["bank_bytes_max"][1])},
                            "received_bytes_per_step": {**traffic, "total": sum(traffic.values())},
                            "samples_s": times,
                        })
    return {"k": k, "n": n, "warmup": warmup, "repeats": repeats, "threads_per_rank": threads, "backend": "gloo",
            "cases": cases, "hardware": hardware_info(torch.device("cpu"))}
