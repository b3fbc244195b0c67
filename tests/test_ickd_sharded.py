"""ICKD.BANK.SHARDED: a bank split across gloo ranks must retrieve, and train, as one process.

Spawned gloo ranks (2 and 3, uneven slices: 53 retrieval rows, 49 training samples) against
the single-process unsharded bank. The default run spawns processes that import torch and
ickd_plugin only (retrieval, losses, shard cache); the harness runs (one DDP step, online
checkpoint and resume) import kdharness in every rank and are marked slow; one process with
a one-shard bank checks the distiller's sharded path in the default run.

* Exact arithmetic (integer bank rows with duplicates, queries of four +-1 entries): every
  similarity is exact in float32 whatever the summation order, so ties are real and the
  sharded retrieval must give the same rows AND bit-identical similarities and features,
  ties to the lower global row, the query's own row excluded by dataset index.
* Gaussian data (no ties): same rows; similarities within float32 summation order.
* Losses (PICD / NICD from the fetched rows), one training step (DDP, global batch 12),
  the offline shard cache (same world size: own file; another: re-sliced), and an online
  sharded bank stopped mid-epoch and resumed from its checkpoint.
"""
from __future__ import annotations

import glob
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ickd_plugin.distributed import shard_bounds
from ickd_plugin.losses import aggregate_context_logits, context_weights, nicd_loss, picd_loss
from ickd_plugin.memory_bank import MemoryBank
from ickd_plugin.retrieval import retrieve
from ickd_plugin.sharded_bank import ShardedMemoryBank
from ickd_plugin.sharded_retrieval import sharded_retrieve

ROWS, DIM, CLASSES, QUERIES, K, N = 53, 16, 4, 11, 6, 5  # K > a shard's rows of a class: padding is exercised
N_TRAIN, GLOBAL_BATCH = 49, 12
# "gauss_dup": Gaussian rows repeated 40 rows later (in another shard), where only tie groups make the copies tie.
CASES = (("exact", torch.float32), ("exact", torch.float16), ("gauss", torch.float32), ("gauss", torch.float16),
         ("gauss_dup", torch.float32), ("gauss_dup", torch.float16))
SIMILARITIES = pytest.mark.parametrize("centered", [False, True], ids=["cosine", "centered"])
EPS = torch.finfo(torch.float32).eps
SIM_ATOL = 4 * DIM * EPS  # |error| of a float32 dot product of unit vectors in DIM terms, with margin


def retrieval_data(kind: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Bank (features, labels; dataset index = row), queries (features, labels, dataset index)."""
    g = torch.Generator().manual_seed(7)
    labels = torch.randint(0, CLASSES, (ROWS,), generator=g)
    index = torch.randperm(ROWS, generator=g)[:QUERIES]
    index[-2:] = torch.tensor([ROWS + 3, ROWS + 8])  # not in the bank: nothing to exclude
    query_labels = torch.randint(0, CLASSES, (QUERIES,), generator=g)
    if kind == "exact":
        bank = torch.randint(-2, 3, (ROWS, DIM), generator=g).float()
        bank[40:] = bank[: ROWS - 40]  # duplicates in another shard: exact ties
        labels[40:] = labels[: ROWS - 40]
        queries = torch.zeros(QUERIES, DIM)
        for i in range(QUERIES):  # four entries of +-1: |q| = 2, q/|q| has entries +-0.5
            columns = torch.randperm(DIM, generator=g)[:4]
            queries[i, columns] = torch.randint(0, 2, (4,), generator=g).float() * 2 - 1
        own = int(index[0])  # query 0's own row is its perfect match (cosine 1): it must be excluded
        bank[own], labels[own] = 2 * queries[0], query_labels[0]
        if own < ROWS - 40:
            bank[own + 40], labels[own + 40] = bank[own], labels[own]
    else:
        bank, queries = torch.randn(ROWS, DIM, generator=g), torch.randn(QUERIES, DIM, generator=g)
        if kind == "gauss_dup":
            bank[40:], labels[40:] = bank[: ROWS - 40].clone(), labels[: ROWS - 40].clone()
            queries[::2] = bank[index[::2].clamp(max=ROWS - 41) + 40] + 0.01 * queries[::2]  # near a copied row
    classifier = torch.randn(CLASSES, DIM, generator=g), torch.randn(CLASSES, generator=g)
    student = torch.randn(QUERIES, CLASSES, generator=g) * 3
    return {"bank": bank.to(dtype), "labels": labels, "queries": queries, "query_labels": query_labels,
            "index": index, "weight": classifier[0], "bias": classifier[1], "student": student}


def in_context_losses(pos_sim, pos_feat, neg_feat, data, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """PICD and NICD of the queries `rows` from their retrieved features (as the distiller computes them)."""
    weight, bias = data["weight"], data["bias"]
    context = aggregate_context_logits(context_weights(pos_sim, 0.1), pos_feat.float(), weight, bias)
    negatives = F.linear(neg_feat.float(), weight, bias)
    student = data["student"][rows]
    own = student.flip(1)  # any fixed "own teacher logits"
    return picd_loss(student, context, own, 0.5, 4.0), nicd_loss(student, negatives, 1.0, 4.0)


def reference_retrieval(kind: str, dtype: torch.dtype, centered: bool = False):
    """The unsharded single-process bank's retrieval of all queries, and its fetched features."""
    data = retrieval_data(kind, dtype)
    bank = MemoryBank(dtype, centered=centered)
    bank.fill(data["bank"], data["labels"], torch.arange(ROWS), CLASSES, "cpu")
    self_rows = torch.where(data["index"] < ROWS, data["index"], torch.full_like(data["index"], -1))
    found = retrieve(data["queries"], data["query_labels"], self_rows, bank.features, bank.inv_norms,
                     bank.class_rows, K, N, center=bank.similarity_center, ties=bank.ties)
    return data, found, bank.features[found.pos_rows], bank.features[found.neg_rows]


# ----------------------------------------------------------------------------- a bank pass without the harness


class TinySet:
    """(features, label) per position; ``targets`` and ``transform`` as the cache key reads them."""

    transform = None

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(N_TRAIN, 12, generator=g)
        self.targets = [i % 4 for i in range(N_TRAIN)]

    def __len__(self) -> int:
        return N_TRAIN

    def __getitem__(self, i: int):
        return self.x[i], self.targets[i]


def tiny_teacher() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))


# ----------------------------------------------------------------------------- the harness (imported lazily)


def make_sets(n_train: int = N_TRAIN):
    from kdharness.data.indexed import IndexedDataset
    from test_distributed import Jitter, RawSet

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 12, generator=g) * 2

    def split(count: int) -> RawSet:
        targets = [i % 4 for i in range(count)]
        return RawSet(centers[targets] + torch.randn(count, 12, generator=g), targets)

    return (IndexedDataset(split(n_train), Jitter(), seed=0, with_index=True),
            IndexedDataset(split(16), None, seed=0, with_index=False))


def sharded_cfg(prefix: Path | str, batch: int, name: str, epochs: int = 1, **keys: Any):
    """test_distributed's ICKD config (K = N = 2, KD base) plus ICKD keys, e.g. BANK__SHARDED=True."""
    from test_distributed import make_cfg

    cfg = make_cfg(prefix, batch, name, epochs=epochs)
    cfg.defrost()
    for key, value in keys.items():
        node = cfg.ICKD
        *parents, leaf = key.split("__")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    cfg.freeze()
    return cfg


def make_trainer(cfg, rank: int = 0, world: int = 1):
    from kdharness.data.loaders import build_loaders
    from kdharness.engine import distributed
    from kdharness.engine.trainer import BaseTrainer
    from kdharness.registry import distiller_dict
    from test_distributed import MLP

    train_set, val_set = make_sets()
    train_loader, val_loader = build_loaders(cfg, train_set, val_set, rank=rank, world_size=world)
    torch.manual_seed(1)
    student, teacher = MLP(), MLP(hidden=10)
    if cfg.ICKD.PARADIGM == "offline":
        teacher.requires_grad_(False)
    distiller = distiller_dict["ICKD"](student, teacher, cfg, num_data=len(train_set))
    return BaseTrainer(cfg.EXPERIMENT.NAME, distributed.wrap(distiller, torch.device("cpu")), train_loader, val_loader, cfg)


def one_step(trainer) -> dict[str, Any]:
    from kdharness.engine.trainer import unwrap

    trainer._call_hooks("before_train")
    trainer.distiller.train()
    losses = trainer._run_step(next(iter(trainer.train_loader)), 1, 0)
    trainer._release_lock()
    bank = unwrap(trainer.distiller).bank
    return {"losses": losses, "student": {k: v.clone() for k, v in unwrap(trainer.distiller).student.state_dict().items()},
            "bank_rows": bank.features.shape[0], "bank_bytes": bank.features.numel() * bank.features.element_size()}


def trained_bank(trainer, resume: bool = False) -> dict[str, Any]:
    from kdharness.engine.trainer import unwrap

    trainer.train(resume=resume)
    ickd = unwrap(trainer.distiller)
    return {"features": ickd.bank.features.clone(), "inv_norms": ickd.bank.inv_norms.clone(),
            "student": {k: v.clone() for k, v in ickd.student.state_dict().items()}, "loaded_from": ickd.bank.loaded_from}


# ----------------------------------------------------------------------------- spawned ranks


def _init(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist

    os.environ.update({"GLOO_SOCKET_IFNAME": "lo"} if os.path.exists("/sys/class/net/lo") else {})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)


def _plugin_worker(rank: int, world: int, port: int, workdir: str) -> None:
    """Retrieval and losses for every case, and the offline shard cache: torch and ickd_plugin only."""
    import torch.distributed as dist

    from ickd_plugin.bank_cache import bank_cache_key

    _init(rank, world, port)
    try:
        out: dict[str, Any] = {"retrieval": {}}
        start, stop = shard_bounds(ROWS, rank, world)
        mine = slice(*shard_bounds(QUERIES, rank, world))  # uneven per-rank batches too
        for (kind, dtype), centered in ((case, centered) for case in CASES for centered in (False, True)):
            data = retrieval_data(kind, dtype)
            bank = ShardedMemoryBank(dtype, centered=centered)
            bank.fill_shard(data["bank"][start:stop], data["labels"][start:stop], torch.arange(start, stop),
                            CLASSES, ROWS, "cpu")
            chunk = 5 if kind == "gauss_dup" else 0  # copies at other offsets of other chunks than the reference's
            found, pos, neg = sharded_retrieve(bank, data["queries"][mine], data["query_labels"][mine],
                                               data["index"][mine], K, N, chunk_size=chunk)
            out["retrieval"][(kind, str(dtype), centered)] = {
                "found": found, "pos": pos, "neg": neg, "losses": in_context_losses(found.pos_sim, pos, neg, data, mine),
                "local_rows": bank.features.shape[0], "local_bytes": bank.local_bytes(),
                "class_counts": bank.class_counts.clone(),
            }
        # offline cache: this world size writes its shard files (the 2-rank spawn runs first) and
        # reads them back; the 3-rank spawn finds only the 2-rank files and re-slices them
        teacher, dataset, cache_dir = tiny_teacher(), TinySet(), str(Path(workdir) / "cache")
        key = bank_cache_key(teacher, dataset, torch.float32)
        loads = []
        for _ in range(2):
            bank = ShardedMemoryBank(torch.float32)
            bank.build(teacher, teacher[2], dataset, 8, 0, torch.device("cpu"), key=key, cache_dir=cache_dir)
            loads.append((bank.loaded_from, bank.features.clone(), bank.indices.clone()))
        out["cache"] = loads
        out["cache_files"] = sorted(os.path.basename(p) for p in glob.glob(os.path.join(cache_dir, "*.pt")))
        torch.save(out, os.path.join(workdir, f"plugin_w{world}r{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _harness_worker(rank: int, world: int, port: int, workdir: str) -> None:
    """One DDP step with the sharded bank; an online sharded run, uninterrupted and stopped + resumed."""
    import torch.distributed as dist

    from test_distributed import StopSignalAt

    _init(rank, world, port)
    try:
        out: dict[str, Any] = {}
        per_rank, runs_dir = GLOBAL_BATCH // world, Path(workdir) / "runs"
        out["step"] = one_step(make_trainer(sharded_cfg(runs_dir, per_rank, f"step{world}", BANK__SHARDED=True), rank, world))
        online = dict(PARADIGM="online", BANK__SHARDED=True)
        out["online_full"] = trained_bank(make_trainer(sharded_cfg(runs_dir, per_rank, f"on{world}", 2, **online), rank, world))
        stopped = sharded_cfg(runs_dir, per_rank, f"cut{world}", 2, **online)
        trainer = make_trainer(stopped, rank, world)
        if rank == world - 1:
            trainer.register_hook(StopSignalAt(step=3))  # a mid-epoch checkpoint (5 steps per epoch)
        try:
            trainer.train()
            out["stop_exit"] = None
        except SystemExit as stop:
            out["stop_exit"] = stop.code
        out["online_resumed"] = trained_bank(make_trainer(stopped, rank, world), resume=True)
        torch.save(out, os.path.join(workdir, f"harness_w{world}r{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _spawn(worker: Any, prefix: str, workdir: Path) -> dict[Any, Any]:
    import socket

    import torch.multiprocessing as mp

    result: dict[Any, Any] = {"workdir": workdir}
    for world in (2, 3):  # in this order: the 3-rank run re-slices the 2-rank cache
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        mp.spawn(worker, args=(world, port, str(workdir)), nprocs=world, join=True)
        result[world] = [torch.load(workdir / f"{prefix}_w{world}r{r}.pt", weights_only=False) for r in range(world)]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[Any, Any]:
    return _spawn(_plugin_worker, "plugin", tmp_path_factory.mktemp("sharded"))


@pytest.fixture(scope="module")
def harness_runs(tmp_path_factory) -> dict[Any, Any]:
    return _spawn(_harness_worker, "harness", tmp_path_factory.mktemp("sharded_harness"))


WORLDS = pytest.mark.parametrize("world", [2, 3])


@WORLDS
@SIMILARITIES
@pytest.mark.parametrize("kind, dtype", CASES)
def test_sharded_retrieval_equals_the_whole_bank(runs, world: int, kind: str, dtype: torch.dtype, centered: bool) -> None:
    data, ref, ref_pos, ref_neg = reference_retrieval(kind, dtype, centered)
    parts = [r["retrieval"][(kind, str(dtype), centered)] for r in runs[world]]
    cat = lambda name: torch.cat([getattr(p["found"], name) for p in parts])  # noqa: E731
    assert torch.equal(cat("pos_rows"), ref.pos_rows) and torch.equal(cat("neg_rows"), ref.neg_rows)
    # the rows' features are copies from their owners, bit for bit
    assert torch.equal(torch.cat([p["pos"] for p in parts]), ref_pos)
    assert torch.equal(torch.cat([p["neg"] for p in parts]), ref_neg)
    if kind == "exact" and not centered:  # exact arithmetic: the same similarities bit for bit, whatever the order
        assert torch.equal(cat("pos_sim"), ref.pos_sim) and torch.equal(cat("neg_sim"), ref.neg_sim)
        own = int(data["index"][0])
        assert own not in ref.pos_rows[0].tolist() and ref.pos_sim[0, 0] == 1.0, "the own row is excluded, its duplicate kept"
        has_tie = (ref.pos_sim[:, 1:] == ref.pos_sim[:, :-1]).any() and (ref.neg_sim[:, 1:] == ref.neg_sim[:, :-1]).any()
        assert has_tie, "the exact case must hold ties (else it tests nothing about tie-breaking)"
    else:
        torch.testing.assert_close(cat("pos_sim"), ref.pos_sim, rtol=0, atol=SIM_ATOL)
        torch.testing.assert_close(cat("neg_sim"), ref.neg_sim, rtol=0, atol=SIM_ATOL)
    # the shards are the uneven contiguous slices and hold the global class sizes
    assert [p["local_rows"] for p in parts] == [b - a for a, b in (shard_bounds(ROWS, r, world) for r in range(world))]
    assert all(torch.equal(p["class_counts"], torch.bincount(data["labels"], minlength=CLASSES)) for p in parts)
    # memory, measured: every rank's buffers hold its rows' share of the replicated bank's
    whole = MemoryBank(dtype)
    whole.fill(data["bank"], data["labels"], torch.arange(ROWS), CLASSES, "cpu")
    row_bytes = sum(t[0].numel() * t.element_size() for t in (whole.features, whole.inv_norms, whole.labels))
    for rank, part in enumerate(parts):
        rows = part["local_rows"]
        table = CLASSES * (rows + 1) * 8 + 8 * CLASSES + 8  # local class table at most [C, rows], counts, step
        table += 12 * DIM if centered else 0  # the centre (float32) and the rows' sum (float64)
        assert rows * (row_bytes + 8) <= part["local_bytes"] <= rows * (row_bytes + 8) + table


@WORLDS
@SIMILARITIES
@pytest.mark.parametrize("kind, dtype", CASES)
def test_sharded_losses_equal_the_whole_bank(runs, world: int, kind: str, dtype: torch.dtype, centered: bool) -> None:
    data, ref, ref_pos, ref_neg = reference_retrieval(kind, dtype, centered)
    for rank, part in enumerate(runs[world]):
        rows = slice(*shard_bounds(QUERIES, rank, world))
        expected = in_context_losses(ref.pos_sim[rows], ref_pos[rows], ref_neg[rows], data, rows)
        for got, want in zip(part["retrieval"][(kind, str(dtype), centered)]["losses"], expected):
            torch.testing.assert_close(got, want, rtol=16 * EPS, atol=16 * EPS)  # float32 order of a few sums


@pytest.mark.slow  # every rank imports the harness: about a minute on a busy 2-core machine
@WORLDS
def test_one_ddp_step_with_a_sharded_bank_equals_one_process(harness_runs, world: int, tmp_path: Path) -> None:
    from test_distributed import torch_threads

    with torch_threads(1):
        single = one_step(make_trainer(sharded_cfg(tmp_path, GLOBAL_BATCH, "single")))
    steps = [r["step"] for r in harness_runs[world]]
    for name in ("loss_picd", "loss_nicd", "loss_kd", "loss_ce"):  # equal per-rank batches: the mean of the means
        mean = sum(s["losses"][name] for s in steps) / world
        assert mean == pytest.approx(single["losses"][name], rel=1e-5, abs=1e-7), name
    for name, value in single["student"].items():  # DDP averages the gradients: equal up to float rounding
        assert torch.equal(steps[0]["student"][name], steps[-1]["student"][name]), name
        torch.testing.assert_close(steps[0]["student"][name], value, rtol=1e-5, atol=1e-6)
    # memory: each rank holds its slice of the bank, 1/world of the rows
    assert [s["bank_rows"] for s in steps] == [b - a for a, b in (shard_bounds(N_TRAIN, r, world) for r in range(world))]
    assert sum(s["bank_bytes"] for s in steps) == single["bank_bytes"]


def test_one_shard_training_step_equals_the_unsharded_bank(tmp_path: Path) -> None:
    """The distiller's sharded path (build, retrieve, fetch) in one process: the same step as the replicated bank."""
    from test_distributed import torch_threads

    with torch_threads(1):
        single = one_step(make_trainer(sharded_cfg(tmp_path, GLOBAL_BATCH, "replicated")))
        sharded = one_step(make_trainer(sharded_cfg(tmp_path, GLOBAL_BATCH, "sharded", BANK__SHARDED=True)))
    assert sharded["losses"]["loss_picd"] > 0 and sharded["losses"]["loss_nicd"] > 0
    for name, value in single["losses"].items():
        assert sharded["losses"][name] == pytest.approx(value, rel=1e-6, abs=1e-7), name
    for name, value in single["student"].items():
        torch.testing.assert_close(sharded["student"][name], value, rtol=1e-6, atol=1e-7)


def test_shard_cache_is_reused_and_resliced_for_another_world_size(runs) -> None:
    two, three = runs[2], runs[3]
    for rank in two:
        assert [how for how, _, _ in rank["cache"]] == ["build", "cache"]
        assert torch.equal(rank["cache"][0][1], rank["cache"][1][1])
    assert two[0]["cache_files"] == three[0]["cache_files"] and len(two[0]["cache_files"]) == 2  # no 3-rank files
    assert all(r["cache"][0][0] == "cache" for r in three), "the 3-rank run must read the 2-rank files"
    built = torch.cat([r["cache"][0][1] for r in two])
    assert torch.equal(torch.cat([r["cache"][0][1] for r in three]), built)
    assert torch.equal(torch.cat([r["cache"][0][2] for r in three]), torch.arange(N_TRAIN))


@pytest.mark.slow  # every rank imports the harness and trains 4 epochs in all
@WORLDS
def test_online_sharded_bank_resumes_exactly_from_a_mid_epoch_checkpoint(harness_runs, world: int) -> None:
    ranks = harness_runs[world]
    # rank 0 keeps the row sets of the newest two checkpoints (steps 5 and 10), not the stop's (step 4)
    kept = sorted(os.listdir(harness_runs["workdir"] / "runs" / f"cut{world}" / "ickd_bank_shards"))
    assert kept == ["step10", "step5"] and len(os.listdir(harness_runs["workdir"] / "runs" / f"cut{world}" / "ickd_bank_shards" / "step10")) == world
    assert [r["stop_exit"] for r in ranks] == [128] * (world - 1) + [128 + signal.SIGTERM]
    # Two ranks sum each gradient as a + b, exactly; with three, gloo's ring all-reduce sums in an order
    # set by the element's place in DDP's gradient bucket, which DDP rebuilds after a run's first step
    # (so a resumed run's buckets differ): float32 rounding, and the online teacher's features with it.
    exact = world == 2
    for rank in ranks:
        full, resumed = rank["online_full"], rank["online_resumed"]
        pairs = [(resumed["features"], full["features"]), (resumed["inv_norms"], full["inv_norms"])]
        pairs += [(resumed["student"][name], value) for name, value in full["student"].items()]
        for got, want in pairs:
            if exact:
                assert torch.equal(got, want)
            else:
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert (full["loaded_from"], resumed["loaded_from"]) == ("build", "checkpoint")


# ----------------------------------------------------------------------------- single process


def test_one_shard_retrieval_equals_retrieve() -> None:
    """Without torch.distributed the sharded bank is one shard holding every row."""
    data, ref, ref_pos, ref_neg = reference_retrieval("exact", torch.float32)
    bank = ShardedMemoryBank()
    bank.fill_shard(data["bank"], data["labels"], torch.arange(ROWS), CLASSES, ROWS, "cpu")
    found, pos, neg = sharded_retrieve(bank, data["queries"], data["query_labels"], data["index"], K, N)
    for name in ("pos_rows", "pos_sim", "neg_rows", "neg_sim"):
        assert torch.equal(getattr(found, name), getattr(ref, name)), name
    assert torch.equal(pos, ref_pos) and torch.equal(neg, ref_neg)


@pytest.mark.parametrize("kind", ["exact", "gauss_dup"])
def test_a_shard_short_of_a_class_pads_the_same_whatever_the_strategy(kind: str, monkeypatch) -> None:
    """A shard may hold fewer than K rows of a class: both ways of reading positives pad with -inf."""
    from ickd_plugin import retrieval
    from ickd_plugin.sharded_retrieval import local_candidates

    data = retrieval_data(kind, torch.float32)
    bank = ShardedMemoryBank()
    bank.fill_shard(data["bank"][:9], data["labels"][:9], torch.arange(9), CLASSES, 9, "cpu")
    assert int(torch.bincount(data["labels"][:9], minlength=CLASSES).min()) < K
    args = (bank, data["queries"], data["query_labels"], data["index"], K, N)
    gathered = local_candidates(*args)
    monkeypatch.setattr(retrieval, "BY_CLASS_MIN_ENTRIES", 1)  # every call by class
    by_class = local_candidates(*args)
    assert torch.equal(gathered[0], by_class[0]) and torch.equal(gathered[1], by_class[1])
    assert (gathered[1][:, :K] == -1).any(), "some positives must be padding, else this tests nothing"


def test_sharded_bank_refuses_ickd_all() -> None:
    from ickd_plugin.config import get_ickd_defaults, parse_ickd_config

    node = get_ickd_defaults()
    node.BANK.SHARDED, node.ALL_SAME_CLASS = True, True
    with pytest.raises(ValueError, match="ICKD.BANK.SHARDED = True; not supported with ICKD.ALL_SAME_CLASS True"):
        parse_ickd_config(node)


def test_bench_counts_the_bytes_a_sharded_step_receives() -> None:
    from benchmarks.sharded import received_bytes

    # W = 4 ranks of b = 8 queries, D = 16, K + N = 5, 7 selected rows held by other ranks, float16
    got = received_bytes(world=4, batch=8, dim=16, k=2, n=3, remote_rows=7, element=2)
    assert got == {"batch_sizes": 3 * 8, "queries": 3 * 8 * 16 * 4, "labels_and_indices": 3 * 8 * 16,
                   "candidates": 3 * 32 * 5 * 12, "selected_rows": 7 * 16 * 2}


@pytest.mark.slow  # spawns two gloo processes that import torch
def test_bench_sharded_record() -> None:
    from benchmarks.sharded import bench_sharded

    record = bench_sharded(worlds=(2,), sizes=(3000,), dims=(32,), batches=(4,), dtypes=("fp16",), k=2, n=2,
                           warmup=0, repeats=2)
    (case,) = record["cases"]
    assert case["world"] == 2 and len(case["samples_s"]["sharded"]) == 2
    assert case["bank_bytes_per_rank"]["sharded"] < 0.6 * case["bank_bytes_per_rank"]["replicated"]
    assert case["received_bytes_per_step"]["candidates"] == 1 * 2 * 4 * 4 * 12


def test_shard_files_are_resliced_and_a_bad_set_is_not_used(tmp_path: Path) -> None:
    """Files written by 3 ranks, read by one process (any slice); a missing or corrupt file spoils the set."""
    from ickd_plugin.bank_cache import load_shard_rows, save_shard_rows, shard_path

    rows, key = 10, "k" * 64
    features = torch.arange(rows * 3, dtype=torch.float16).view(rows, 3)
    labels, indices = torch.arange(rows) % 3, torch.arange(rows)
    for source in range(3):
        first, last = shard_bounds(rows, source, 3)  # [0, 3), [3, 6), [6, 10)
        save_shard_rows(shard_path(str(tmp_path), key, source, 3), key, rows, first, last,
                        features[first:last], labels[first:last], indices[first:last])
    for start, stop in ((0, rows), (2, 7), (6, 10)):
        got = load_shard_rows(str(tmp_path), key, rows, start, stop)
        assert got is not None
        for value, want in zip(got, (features, labels, indices)):
            assert torch.equal(value, want[start:stop])
    assert load_shard_rows(str(tmp_path), "x" * 64, rows, 0, rows) is None  # another key: no set
    middle = Path(shard_path(str(tmp_path), key, 1, 3))
    data = bytearray(middle.read_bytes())
    position = data.find(features[3:6].numpy().tobytes())  # the stored rows' bytes
    assert position > 0
    data[position] ^= 0xFF
    middle.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="checksum mismatch"):
        assert load_shard_rows(str(tmp_path), key, rows, 2, 7) is None
    assert load_shard_rows(str(tmp_path), key, rows, 6, 10) is not None  # that slice does not need the bad file
    middle.unlink()
    assert load_shard_rows(str(tmp_path), key, rows, 6, 10) is None  # an incomplete set is never used


def test_sharded_bank_refuses_rows_out_of_index_order() -> None:
    bank = ShardedMemoryBank()
    with pytest.raises(ValueError, match="ascending dataset-index order"):
        bank.fill_shard(torch.randn(3, 4), torch.tensor([0, 1, 0]), torch.tensor([3, 1, 2]), 2, 3, "cpu")


def test_a_checkpoint_loaded_before_the_bank_is_built_says_where_its_rows_are() -> None:
    """A tool that loads a run checkpoint into a fresh distiller (no trainer, no run directory) gets a warning."""
    bank = ShardedMemoryBank(persistent=True)
    with pytest.warns(UserWarning, match="ickd_bank_shards/step7/"):
        bank.load_state_dict({"checkpoint_step": torch.tensor(7)})
    assert not bank.is_built and int(bank.checkpoint_step) == 7
