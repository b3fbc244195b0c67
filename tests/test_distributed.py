"""Distributed training (DDP on gloo, torchrun) and the trainer's throughput settings.

A distributed run must equal a single-process run wherever the maths says it must:

* ICKD's memory bank, built in shards (rank r passes over a contiguous 1/world of the
  rows) and broadcast, equals the single-process bank exactly (eval mode, no augmentation,
  same per-batch shapes);
* CRD's memories, updated on every rank with the all-gathered global batch, equal the
  single-process memories (and the ranks agree exactly);
* with a BatchNorm-free model and losses that are means over the batch, training with
  global batch B (B/2 per rank, DDP averaging the gradients) gives the weights of
  single-process batch B, up to float rounding in the all-reduce;
* every rank validates the same model (DDP broadcasts rank 0's buffers) and gets the same
  metrics; a stop signal on one rank stops all ranks at the same step; resume is exact.

Networking is loopback only (127.0.0.1, gloo on the `lo` interface).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
import torch.nn as nn
import yaml

from fixtures_data import write_fashion_mnist_fixture
from harness_utils import REPO, write_teacher_checkpoint

IN_DIM, HIDDEN, NUM_CLASSES = 12, 8, 4
N_TRAIN, N_VAL = 48, 16
WORLD, GLOBAL_BATCH = 2, 16


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread, as the spawned ranks: the same kernels (bit-for-bit comparisons), and
    no OpenMP threads waiting for each other on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def loopback_env() -> dict[str, str]:
    """Environment that keeps gloo on the loopback interface (where one named `lo` exists)."""
    return {"GLOO_SOCKET_IFNAME": "lo"} if os.path.exists("/sys/class/net/lo") else {}


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class MLP(nn.Module):
    """BatchNorm-free stand-in for the zoo: ``(logits, feats)`` and ``get_classifier()``."""

    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(IN_DIM, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor):
        pooled = self.body(x.flatten(1))
        return self.fc(pooled), {"pooled_feat": pooled, "feats": [pooled], "preact_feats": [pooled]}

    def get_classifier(self) -> nn.Linear:
        return self.fc


class RawSet:
    """A raw dataset as the data layer expects it: ``(image, target)``, ``targets``, ``num_classes``."""

    def __init__(self, images: torch.Tensor, targets: list[int]) -> None:
        self.images, self.targets, self.num_classes = images, targets, NUM_CLASSES

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.images[index], self.targets[index]


class Jitter:
    """A random augmentation; under (epoch, index) keys its noise is a function of the sample."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.05 * torch.randn_like(x)

    def __repr__(self) -> str:
        return "Jitter(0.05)"


def make_datasets(crd_k: int | None = None):
    from kdharness.data.indexed import IndexedDataset

    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(NUM_CLASSES, IN_DIM, generator=generator) * 2

    def split(count: int) -> RawSet:
        targets = [i % NUM_CLASSES for i in range(count)]
        return RawSet(centers[targets] + torch.randn(count, IN_DIM, generator=generator), targets)

    train = IndexedDataset(split(N_TRAIN), Jitter(), seed=0, with_index=True, crd_k=crd_k)
    val = IndexedDataset(split(N_VAL), None, seed=0, with_index=False)
    return train, val


def make_cfg(log_prefix: Path | str, batch_size: int, name: str, epochs: int = 1, method: str = "ICKD"):
    """ICKD (offline, KD base) or CRD on the MLPs; every key the trainer reads has its harness default."""
    from kdharness.compose import load_builtin_components
    from kdharness.config import get_cfg_defaults

    load_builtin_components()
    cfg = get_cfg_defaults()
    cfg.EXPERIMENT.NAME = name
    cfg.DISTILLER.TYPE = method
    cfg.ICKD.BASE = "KD"
    cfg.CRD.NCE.K, cfg.CRD.FEAT.DIM = 8, 6
    cfg.ICKD.K, cfg.ICKD.N, cfg.ICKD.WARMUP = 2, 2, 0
    cfg.ICKD.BANK.USE_CACHE = False
    cfg.ICKD.BANK.BATCH_SIZE = 8  # every bank batch holds 8 samples, single-process and per rank
    cfg.SOLVER.BATCH_SIZE = batch_size
    cfg.SOLVER.EPOCHS = epochs
    cfg.SOLVER.LR = 0.1
    cfg.SOLVER.WEIGHT_DECAY = 5e-4
    cfg.DATASET.NUM_WORKERS = 0
    cfg.DATASET.TEST.BATCH_SIZE = 8
    cfg.LOG.PREFIX = str(log_prefix)
    cfg.LOG.TENSORBOARD_FREQ = 0
    cfg.LOG.SAVE_CHECKPOINT_FREQ = 0
    cfg.freeze()
    return cfg


def make_trainer(cfg, rank: int = 0, world: int = 1, unused_head: bool = False):
    """What `build_trainer` does, with the MLPs: loaders sharded by rank, DDP when distributed.

    ``unused_head``: give the student a parameter no loss uses (DDP must be told, or fail clearly).
    """
    from kdharness.data.loaders import build_loaders
    from kdharness.engine import distributed
    from kdharness.engine.trainer import BaseTrainer
    from kdharness.registry import distiller_dict

    crd = cfg.DISTILLER.TYPE == "CRD"
    train_set, val_set = make_datasets(crd_k=cfg.CRD.NCE.K if crd else None)
    train_loader, val_loader = build_loaders(cfg, train_set, val_set, rank=rank, world_size=world)
    torch.manual_seed(1)
    student, teacher = MLP(), MLP(hidden=10)
    if unused_head:
        student.idle = nn.Linear(2, 2)
    teacher.requires_grad_(False)
    extra = {"input_shape": (IN_DIM,)} if crd else {}
    distiller = distiller_dict[cfg.DISTILLER.TYPE](student, teacher, cfg, num_data=len(train_set), **extra)
    wrapped = distributed.wrap(distiller, torch.device("cpu"), cfg.SOLVER.DDP_FIND_UNUSED_PARAMETERS)
    return BaseTrainer(cfg.EXPERIMENT.NAME, wrapped, train_loader, val_loader, cfg)


def student_state(trainer) -> dict[str, torch.Tensor]:
    from kdharness.engine.trainer import unwrap

    return {k: v.clone() for k, v in unwrap(trainer.distiller).student.state_dict().items()}


class StopSignalAt:
    """Trainer hook: pretend this process received SIGTERM right after global step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self, trainer, step: int, losses) -> None:
        if step == self.step:
            trainer._stop_signal = signal.SIGTERM


# ----------------------------------------------------------------------------- spawned ranks


def _rank_worker(rank: int, world: int, port: int, workdir: str) -> None:
    import torch.distributed as dist

    from kdharness.engine import distributed
    from kdharness.engine.trainer import unwrap

    os.environ.update(loopback_env())
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        out: dict[str, Any] = {}
        per_rank = GLOBAL_BATCH // world
        # 1. two epochs; the ICKD hook builds the bank from the DDP-wrapped trainer
        trainer = make_trainer(make_cfg(Path(workdir) / "ddp", per_rank, "run", epochs=2), rank, world)
        ickd = unwrap(trainer.distiller)
        out["wrapped"] = type(trainer.distiller).__name__
        out["ignored"] = sorted(trainer.distiller.parameters_to_ignore)
        out["method_buffers"] = distributed.method_state_buffers(ickd)
        summary = trainer.train()
        out["bank"] = {name: getattr(ickd.bank, name).clone() for name in ("features", "labels", "row_of_index")}
        out["student"] = student_state(trainer)
        out["history"] = summary["history"]
        out["any_rank"] = distributed.any_rank(rank == 1, False)
        # 2. a stop signal on rank 1 only: both ranks stop at the same step, rank 0 saves
        stop_cfg = make_cfg(Path(workdir) / "ddp", per_rank, "stopped", epochs=2)
        trainer = make_trainer(stop_cfg, rank, world)
        if rank == 1:
            trainer.register_hook(StopSignalAt(step=1))
        try:
            trainer.train()
            out["stop_exit"] = None
        except SystemExit as stop:
            out["stop_exit"] = stop.code
        out["stopped_at"] = trainer.global_step
        distributed.barrier()
        # 3. resume under DDP: must end where the uninterrupted run 1 ended
        out["resumed"] = student_state(_trained(make_trainer(stop_cfg, rank, world), resume=True))
        # 4. CRD: every rank takes in the global batch, so the memories match a single process's
        trainer = _trained(make_trainer(make_cfg(Path(workdir) / "ddp", per_rank, "crd", method="CRD"), rank, world))
        out["crd"] = crd_state(trainer)
        # 5. a parameter no loss uses: DDP's error names the config key that allows it
        idle_cfg = make_cfg(Path(workdir) / "ddp", per_rank, "idle")
        try:
            _trained(make_trainer(idle_cfg, rank, world, unused_head=True))
            out["idle_error"] = None
        except RuntimeError as error:
            out["idle_error"] = str(error)
        idle_cfg.defrost()
        idle_cfg.EXPERIMENT.NAME, idle_cfg.SOLVER.DDP_FIND_UNUSED_PARAMETERS = "idle_allowed", True
        out["idle_allowed"] = student_state(_trained(make_trainer(idle_cfg, rank, world, unused_head=True)))
        torch.save(out, os.path.join(workdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def crd_state(trainer) -> dict[str, torch.Tensor]:
    from kdharness.engine.trainer import unwrap

    contrast = unwrap(trainer.distiller).contrast
    return {"student": student_state(trainer), "memory_v1": contrast.memory_v1.clone(),
            "memory_v2": contrast.memory_v2.clone(), "params": contrast.params.clone()}


def _trained(trainer, resume: bool = False):
    trainer.train(resume=resume)
    return trainer


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> dict[str, Any]:
    """Two gloo ranks (one spawn for all checks: start-up is most of the cost) and the single-process reference."""
    import torch.multiprocessing as mp

    workdir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank_worker, args=(WORLD, free_port(), str(workdir)), nprocs=WORLD, join=True)
    ranks = [torch.load(workdir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    from kdharness.engine.trainer import unwrap

    with torch_threads(1):  # as the ranks: the same kernels, so the bank can be compared bit for bit
        trainer = make_trainer(make_cfg(workdir / "single", GLOBAL_BATCH, "run", epochs=2))
        summary = trainer.train()
        crd = crd_state(_trained(make_trainer(make_cfg(workdir / "single", GLOBAL_BATCH, "crd", method="CRD"))))
    bank = unwrap(trainer.distiller).bank
    single = {
        "bank": {name: getattr(bank, name).clone() for name in ("features", "labels", "row_of_index")},
        "student": student_state(trainer),
        "history": summary["history"],
        "crd": crd,
    }
    return {"ranks": ranks, "single": single, "workdir": workdir}


def test_ddp_wraps_and_leaves_method_state_to_its_owner(ddp_run) -> None:
    rank0 = ddp_run["ranks"][0]
    assert rank0["wrapped"] == "DistributedDataParallel"
    assert {"bank.features", "bank.inv_norms", "bank.labels"} <= set(rank0["method_buffers"])
    assert not any(name.startswith(("student.", "teacher.")) for name in rank0["method_buffers"])
    assert set(rank0["method_buffers"]) <= set(rank0["ignored"])
    assert rank0["any_rank"] == (True, False)


def test_bank_built_in_shards_equals_single_process_bank_exactly(ddp_run) -> None:
    single = ddp_run["single"]["bank"]
    for rank in ddp_run["ranks"]:
        for name, value in single.items():
            assert torch.equal(rank["bank"][name], value), name


def test_ddp_half_batches_give_single_process_weights(ddp_run) -> None:
    single = ddp_run["single"]["student"]
    rank0, rank1 = (r["student"] for r in ddp_run["ranks"])
    for name, value in single.items():
        assert torch.equal(rank0[name], rank1[name]), name  # DDP keeps the ranks identical
        assert torch.allclose(rank0[name], value, rtol=1e-5, atol=1e-6), name
        assert not torch.equal(value, make_trainer_initial_student()[name]), "training did not move the weights"


def test_crd_memories_take_in_every_ranks_batch(ddp_run) -> None:
    """Each rank updates both memories with the global batch and Z is the mean over the ranks, so the
    ranks agree exactly and equal the single-process run of the global batch up to rounding."""
    single = ddp_run["single"]["crd"]
    rank0, rank1 = (r["crd"] for r in ddp_run["ranks"])
    # Z (params[2:4]) = num_data * mean of B(K+1) = 144 terms exp(<m, v> / T): the exponent of unit
    # vectors in D = 6 dims errs by <= (D + 4) eps / T, the mean by <= (n + 4) eps relative, on each
    # side; so rtol 2 * (10 eps / 0.07 + 148 eps) = 7e-5 holds in any summation order.
    eps = torch.finfo(torch.float32).eps
    z_rtol = 2 * ((6 + 4) * eps / 0.07 + (GLOBAL_BATCH * (8 + 1) + 4) * eps)
    for name in ("memory_v1", "memory_v2", "params"):
        assert torch.equal(rank0[name], rank1[name]), name
        assert torch.allclose(rank0[name], single[name], rtol=z_rtol if name == "params" else 1e-5, atol=1e-6), name
    assert (single["params"][2:4] > 0).all(), "Z was estimated"
    initial = make_trainer(make_cfg(ddp_run["workdir"] / "unused", GLOBAL_BATCH, "crd0", method="CRD"))
    assert not torch.allclose(single["memory_v1"], crd_state(initial)["memory_v1"]), "training did not update the memory"
    for name, value in single["student"].items():
        assert torch.allclose(rank0["student"][name], value, rtol=1e-5, atol=1e-6), name


def test_unused_parameter_fails_naming_the_key_unless_allowed(ddp_run) -> None:
    for rank in ddp_run["ranks"]:
        assert rank["idle_error"] is not None and "SOLVER.DDP_FIND_UNUSED_PARAMETERS True" in rank["idle_error"]
    allowed = [r["idle_allowed"] for r in ddp_run["ranks"]]
    for name, value in allowed[0].items():
        assert torch.equal(value, allowed[1][name]), name


def make_trainer_initial_student() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return MLP().state_dict()


def test_every_rank_validates_the_same_model(ddp_run) -> None:
    """Test metrics come from the whole val set on every rank; train metrics are each rank's shard."""
    keys = ("epoch", "lr", "test_acc", "test_acc_top5", "test_loss")
    histories = [[{k: h[k] for k in keys} for h in r["history"]] for r in ddp_run["ranks"]]
    assert histories[0] == histories[1]
    single = ddp_run["single"]["history"]
    assert [h["test_acc"] for h in histories[0]] == [h["test_acc"] for h in single]
    assert [h["test_loss"] for h in histories[0]] == pytest.approx([h["test_loss"] for h in single], rel=1e-5)


def test_stop_on_one_rank_stops_all_at_the_same_step_and_resume_is_exact(ddp_run) -> None:
    ranks = ddp_run["ranks"]
    assert [r["stop_exit"] for r in ranks] == [128, 128 + signal.SIGTERM]
    assert ranks[0]["stopped_at"] == ranks[1]["stopped_at"] == 2  # flag raised after step 1, agreed at step 2
    from kdharness.engine.checkpoint import load_checkpoint

    for rank in ranks:
        for name, value in rank["student"].items():
            assert torch.equal(rank["resumed"][name], value), name
    run_dir = ddp_run["workdir"] / "ddp" / "stopped"
    assert json.loads((run_dir / "summary.json").read_text())["complete"]
    assert load_checkpoint(str(run_dir / "latest"))["epoch"] == 2


# ----------------------------------------------------------------------------- torchrun end to end


def _torchrun(cfg_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", **loopback_env())
    # the checkout first: tools/train.py must find this tree's packages, installed or not
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(WORLD),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        str(REPO / "tools" / "train.py"), "--cfg", str(cfg_path), *extra,
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # two torchrun launches of two ranks each: about a minute on 2 cores
def test_torchrun_trains_ickd_writes_one_summary_and_resumes(tmp_path: Path) -> None:
    root = write_fashion_mnist_fixture(tmp_path / "fashion", n_train=240, n_test=80)
    teacher = write_teacher_checkpoint(tmp_path / "teacher.pth", "resnet14", "fashion_mnist", 10)
    document = yaml.safe_load((REPO / "configs" / "fashion_mnist" / "kd" / "res14_res8.yaml").read_text())
    document["EXPERIMENT"]["NAME"] = "ddp_ickd"
    document["DISTILLER"].update(TYPE="ICKD", TEACHER_WEIGHTS=str(teacher))
    document["ICKD"] = {"BASE": "KD", "K": 2, "N": 2, "BANK": {"CACHE_DIR": str(tmp_path / "bank"), "BATCH_SIZE": 64}}
    document["DATASET"].update(ROOT=str(root), TRAIN_SUBSET=0, NUM_WORKERS=0, TEST={"BATCH_SIZE": 40})
    document["SOLVER"].update(EPOCHS=1, BATCH_SIZE=16)
    document["LOG"].update(PREFIX=str(tmp_path / "out"), TENSORBOARD_FREQ=0)
    cfg_path = tmp_path / "ddp_ickd.yaml"
    cfg_path.write_text(yaml.safe_dump(document))

    first = _torchrun(cfg_path)
    assert first.returncode == 0, first.stderr[-4000:]
    summaries = list((tmp_path / "out").rglob("summary.json"))
    assert len(summaries) == 1, summaries
    summary = json.loads(summaries[0].read_text())
    assert summary["complete"] and summary["world_size"] == WORLD and summary["method"] == "ICKD+KD"
    assert len(summary["history"]) == 1
    assert len(list((tmp_path / "bank").glob("bank_*.pt"))) == 1  # rank 0 wrote the cache, once

    document["SOLVER"]["EPOCHS"] = 2  # same run directory (EXPERIMENT.NAME), one more epoch
    cfg_path.write_text(yaml.safe_dump(document))
    second = _torchrun(cfg_path, "--resume")
    assert second.returncode == 0, second.stderr[-4000:]
    assert list((tmp_path / "out").rglob("summary.json")) == summaries
    resumed = json.loads(summaries[0].read_text())
    assert resumed["complete"] and [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][0] == summary["history"][0]


# ----------------------------------------------------------------------------- single-process settings


def _one_step(cfg) -> tuple[dict[str, torch.Tensor], Any]:
    """One training step of a fresh trainer (bank built first); returns the student and the trainer."""
    trainer = make_trainer(cfg)
    trainer._call_hooks("before_train")
    trainer.distiller.train()
    data = next(iter(trainer.train_loader))
    trainer._run_step(data, 1, 0)
    trainer._release_lock()
    return student_state(trainer), trainer


def _with(cfg, **changes: Any):
    cfg = cfg.clone()
    cfg.defrost()
    for key, value in changes.items():
        node = cfg
        *parents, leaf = key.split("__")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    cfg.freeze()
    return cfg


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour of SOLVER.AMP")
def test_amp_on_cpu_is_a_no_op_with_one_warning(tmp_path: Path, capsys) -> None:
    base = make_cfg(tmp_path, 8, "fp32")
    reference, _ = _one_step(base)
    capsys.readouterr()
    with_amp, trainer = _one_step(_with(base, EXPERIMENT__NAME="amp", SOLVER__AMP=True))
    warnings = [line for line in capsys.readouterr().out.splitlines() if "SOLVER.AMP" in line]
    assert len(warnings) == 1 and "float32" in warnings[0]
    assert not trainer.scaler.is_enabled()
    for name, value in reference.items():
        assert torch.equal(with_amp[name], value), name


def test_channels_last_gives_the_same_step(tmp_path: Path) -> None:
    """SOLVER.CHANNELS_LAST changes the memory layout only: a conv network's step is unchanged."""
    from kdharness.config import get_cfg_defaults
    from kdharness.distillers.kd import KD
    from kdharness.engine.trainer import BaseTrainer
    from kdharness.models import create_model

    results = []
    for channels_last in (False, True):
        cfg = get_cfg_defaults()
        cfg.SOLVER.CHANNELS_LAST = channels_last
        cfg.LOG.PREFIX, cfg.LOG.TENSORBOARD_FREQ = str(tmp_path), 0
        cfg.EXPERIMENT.NAME = f"cl_{channels_last}"
        cfg.freeze()
        torch.manual_seed(0)
        student, teacher = create_model("resnet8", "cifar100", 10), create_model("resnet8", "cifar100", 10)
        distiller = KD(student, teacher.requires_grad_(False), cfg)
        if channels_last:  # as build_trainer does
            distiller = distiller.to(memory_format=torch.channels_last)
        trainer = BaseTrainer(cfg.EXPERIMENT.NAME, distiller, None, None, cfg)
        distiller.train()
        generator = torch.Generator().manual_seed(0)
        data = (torch.randn(4, 3, 32, 32, generator=generator), torch.tensor([0, 1, 2, 3]), torch.arange(4))
        trainer._run_step(data, 1, 0)
        trainer._release_lock()
        results.append({k: v.contiguous() for k, v in student.state_dict().items()})
    for name, value in results[0].items():
        assert torch.allclose(results[1][name], value, rtol=1e-4, atol=1e-5), name


@pytest.mark.parametrize("workers, persistent", [(0, True), (2, True), (2, False)])
def test_loaders_take_dataloader_settings_from_config(tmp_path: Path, workers: int, persistent: bool) -> None:
    from kdharness.data.loaders import build_loaders

    cfg = _with(make_cfg(tmp_path, 8, "loaders"), DATASET__NUM_WORKERS=workers, DATASET__PIN_MEMORY=True,
                DATASET__PERSISTENT_WORKERS=persistent)
    train_set, val_set = make_datasets()
    for loader in build_loaders(cfg, train_set, val_set):
        assert loader.num_workers == workers
        assert loader.persistent_workers == (persistent and workers > 0)  # torch refuses it without workers
        assert loader.pin_memory == torch.cuda.is_available()  # pinning only helps host-to-GPU copies


def test_method_state_buffers_are_the_ones_outside_the_networks() -> None:
    from kdharness.config import get_cfg_defaults
    from kdharness.distillers.crd import CRD
    from kdharness.distillers.kd import KD
    from kdharness.engine import distributed

    cfg = get_cfg_defaults()
    cfg.CRD.NCE.K = 4
    nets = lambda: (MLP(), MLP())  # noqa: E731
    assert distributed.method_state_buffers(KD(*nets(), cfg)) == []
    crd = distributed.method_state_buffers(CRD(*nets(), cfg, num_data=20, input_shape=(IN_DIM,)))
    assert set(crd) == {"contrast.params", "contrast.memory_v1", "contrast.memory_v2"}
    assert distributed.method_state_buffers(nn.Linear(2, 2)) == []  # not a distiller: DDP syncs everything
    assert distributed.any_rank(True, False) == (True, False)  # single process: no communication
    assert distributed.wrap(nn.Linear(2, 2), torch.device("cpu")).__class__ is nn.Linear
