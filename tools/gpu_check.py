"""Correctness on a GPU: a few training steps of every distiller, and of ICKD on each base, on
``--device`` against the same steps on ``--reference`` (the CPU), within stated tolerances.

    python tools/gpu_check.py --out gpu_check/compare                      # CUDA against the CPU
    python tools/gpu_check.py --device cpu --out DIR --methods KD,KDSVD    # the script itself, CPU against CPU

``scripts/gpu_check.sh`` runs it as one step of its checks. Each case trains one epoch of 4
steps (resnet14 -> resnet8, a generated Fashion-MNIST fixture whose items have dark borders,
as the real ones) from the same seed on both devices: same initial weights, same batches
(the data pipeline runs on the CPU). Compared: every loss term of every step, and the
student's weights after the epoch. Cases:

- every registered distiller, and ICKD with each as ``ICKD.BASE``, in float32 (TF32 off);
- ``--amp-methods`` with ``SOLVER.AMP`` and ``SOLVER.CHANNELS_LAST`` on the device (the
  reference, on the CPU, stays float32: AMP applies to CUDA only);
- ICKD+KD with each ``--bank-dtypes`` bank (float16 / bfloat16: on CUDA the native half
  product with float32 output, on the CPU its float32 path);
- with ``--ddp BACKEND``: ICKD+KD and CRD again inside a one-process group of that backend
  (``nccl`` on CUDA) with the host's DDP path switched on (``distributed.is_distributed``
  forced True: the DDP wrapper, its all-reduces, ``any_rank``, ``all_gather_batch``),
  against the same steps without it on the same device.

Tolerances (``TOLERANCES``): float32, a loss term ``|a - b| <= 1e-3 |b| + 1e-4`` and each
weight tensor ``max |a - b| <= 1e-3 max |b| + 1e-6`` after 4 SGD steps (different kernels
sum in other orders: ~1e-6 relative per step, grown by the steps); AMP and half banks, 5e-2
and 5e-3 (half precision has 3 decimal digits). Writes ``compare.json`` (every case, its
maxima and verdict) and ``compare.txt``; exit status 1 if a case is outside its tolerance
or fails to run.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
KD_CFG = REPO / "configs" / "fashion_mnist" / "kd" / "res14_res8.yaml"
ICKD_KD_CFG = REPO / "configs" / "fashion_mnist" / "ickd_kd" / "res14_res8.yaml"
N_TRAIN, N_TEST, BATCH = 64, 32, 16
TOLERANCES = {
    "fp32": {"loss_rtol": 1e-3, "loss_atol": 1e-4, "weight_rtol": 1e-3, "weight_atol": 1e-6},
    "half": {"loss_rtol": 5e-2, "loss_atol": 5e-3, "weight_rtol": 5e-2, "weight_atol": 1e-4},
}


def write_fixture(root: Path, seed: int = 0) -> Path:
    """Fashion-MNIST idx files: 10 classes, items in columns 7-20 of 28, black around them."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", N_TRAIN), ("t10k", N_TEST)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        images = np.zeros((count, 28, 28), dtype=np.uint8)
        images[:, 2:26, 7:21] = rng.integers(0, 256, size=(count, 24, 14)) // (1 + labels[:, None, None] % 4)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            with gzip.open(root / f"{prefix}-{kind}-ubyte.gz", "wb") as handle:
                handle.write(header + array.tobytes())
    return root


def write_teacher(path: Path) -> Path:
    """An untrained resnet14 with BatchNorm statistics from a few random batches (as a trained one has)."""
    import torch

    from kdharness.engine.checkpoint import save_checkpoint
    from kdharness.models import create_model

    torch.manual_seed(123)
    model = create_model("resnet14", "fashion_mnist", 10)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, 32, 32))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"model": model.state_dict(), "epoch": 1}, str(path))
    return path


def base_opts(data: Path, teacher: Path, prefix: Path) -> list[str]:
    return [
        "DATASET.ROOT", str(data), "DATASET.NUM_WORKERS", "0", "DATASET.TRAIN_SUBSET", "0",
        "DISTILLER.TEACHER_WEIGHTS", str(teacher), "SOLVER.EPOCHS", "1", "SOLVER.BATCH_SIZE", str(BATCH),
        "DATASET.TEST.BATCH_SIZE", str(N_TEST), "LOG.PREFIX", str(prefix), "LOG.TENSORBOARD_FREQ", "0",
        "LOG.SAVE_CHECKPOINT_FREQ", "0", "CRD.NCE.K", "16", "ICKD.K", "2", "ICKD.N", "2",
        "ICKD.BANK.USE_CACHE", "False",
    ]


def train_steps(config: Path, opts: Sequence[str], device: str) -> dict[str, Any]:
    """Train one epoch; every step's loss terms and the student's final weights (on the CPU)."""
    import torch

    from kdharness.compose import load_config
    from kdharness.engine.build import build_trainer
    from kdharness.engine.trainer import unwrap

    cfg = load_config(str(config), list(opts))
    trainer = build_trainer(cfg, list(opts), device=device)
    steps: list[dict[str, float]] = []
    original = trainer._run_step

    def run_step(data, epoch, step):
        values = original(data, epoch, step)
        steps.append(dict(values) if values is not None else {"skipped": float("nan")})
        return values

    trainer._run_step = run_step
    summary = trainer.train()
    weights = {name: value.detach().float().cpu() for name, value in unwrap(trainer.distiller).student.state_dict().items()
               if value.is_floating_point()}
    return {"steps": steps, "weights": weights, "test_acc": summary["last_top1"], "skipped": summary["skipped_steps"]}


def compare(reference: dict[str, Any], run: dict[str, Any], tolerance: dict[str, float]) -> dict[str, Any]:
    """Largest differences of ``run`` from ``reference`` and whether each is within ``tolerance``."""
    problems: list[str] = []
    worst_loss = 0.0
    if len(run["steps"]) != len(reference["steps"]):
        problems.append(f"{len(run['steps'])} steps against {len(reference['steps'])}")
    for index, (ref, got) in enumerate(zip(reference["steps"], run["steps"])):
        if set(ref) != set(got):
            problems.append(f"step {index}: terms {sorted(got)} against {sorted(ref)}")
            continue
        for name, expected in ref.items():
            error = abs(got[name] - expected)
            bound = tolerance["loss_atol"] + tolerance["loss_rtol"] * abs(expected)
            if not error <= bound:  # NaN fails too
                problems.append(f"step {index} {name}: {got[name]:.6g} against {expected:.6g}")
            worst_loss = max(worst_loss, error / bound if bound else float("inf"))
    worst_weight, worst_name = 0.0, ""
    for name, expected in reference["weights"].items():
        got = run["weights"].get(name)
        if got is None or got.shape != expected.shape:
            problems.append(f"weight {name}: missing or of another shape")
            continue
        error = float((got - expected).abs().max()) if got.numel() else 0.0
        bound = tolerance["weight_atol"] + tolerance["weight_rtol"] * float(expected.abs().max() if expected.numel() else 0)
        ratio = error / bound if bound else float("inf")
        if not error <= bound:
            problems.append(f"weight {name}: max |difference| {error:.3g} > {bound:.3g}")
        if ratio > worst_weight or worst_name == "":
            worst_weight, worst_name = ratio, name
    return {
        "ok": not problems and run["skipped"] == reference["skipped"],
        "loss_error_over_bound": worst_loss,
        "weight_error_over_bound": worst_weight,
        "worst_weight": worst_name,
        "problems": problems[:5] + ([f"... {len(problems) - 5} more"] if len(problems) > 5 else []),
        "test_acc": [reference["test_acc"], run["test_acc"]],
    }


def cases(methods: Sequence[str], bases: Sequence[str], amp_methods: Sequence[str],
          bank_dtypes: Sequence[str]) -> list[tuple[str, Path, list[str], str]]:
    """(name, config, overrides, tolerance) of every comparison."""
    found = [(m, KD_CFG, ["DISTILLER.TYPE", m], "fp32") for m in methods]
    found += [(f"ICKD+{b}", ICKD_KD_CFG, ["ICKD.BASE", b], "fp32") for b in bases]
    found += [(f"{m} AMP channels-last", KD_CFG if not m.startswith("ICKD+") else ICKD_KD_CFG,
               (["DISTILLER.TYPE", m] if not m.startswith("ICKD+") else ["ICKD.BASE", m[5:]])
               + ["SOLVER.AMP", "True", "SOLVER.CHANNELS_LAST", "True"], "half") for m in amp_methods]
    found += [(f"ICKD+KD bank {d}", ICKD_KD_CFG, ["ICKD.BASE", "KD", "ICKD.BANK.DTYPE", d], "half" if d != "float32" else "fp32")
              for d in bank_dtypes]
    return found


class one_process_group:
    """A process group of one rank with ``backend``, the host's DDP path switched on inside."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def __enter__(self) -> None:
        import torch.distributed as dist

        from kdharness.engine import distributed

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        dist.init_process_group(self.backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        self._saved = distributed.is_distributed
        distributed.is_distributed = lambda: True

    def __exit__(self, *exc: Any) -> None:
        import torch.distributed as dist

        from kdharness.engine import distributed

        distributed.is_distributed = self._saved
        dist.destroy_process_group()


def _configure_precision(device: str) -> None:
    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 here
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = False


def run(args: argparse.Namespace) -> int:
    from kdharness.compose import load_builtin_components
    from kdharness.registry import distiller_dict

    load_builtin_components()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _configure_precision(args.device)
    # the classification methods: the check trains on a Fashion-MNIST fixture
    every = sorted(name for name in distiller_dict
                   if name != "ICKD" and "classification" in getattr(distiller_dict[name], "tasks", ("classification",)))
    methods = every if args.methods == "all" else [m for m in args.methods.split(",") if m]
    bases = every if args.ickd_bases == "all" else [b for b in args.ickd_bases.split(",") if b]
    todo = cases(methods, bases, [m for m in args.amp_methods.split(",") if m], [d for d in args.bank_dtypes.split(",") if d])
    shutil.rmtree(out / "runs", ignore_errors=True)  # a second check starts afresh
    data, teacher = write_fixture(out / "data"), write_teacher(out / "teacher" / "res14.pth")
    records: list[dict[str, Any]] = []

    def check(name: str, config: Path, opts: list[str], tolerance: str, device: str, reference_device: str,
              group: str | None = None) -> dict[str, Any] | None:
        start = time.time()
        record: dict[str, Any] = {"case": name, "device": device, "reference": reference_device, "tolerance": tolerance,
                                  "group": group, "overrides": opts}
        runs = out / "runs" / f"{len(records):02d}"  # each case its own run directories
        try:
            reference = train_steps(config, base_opts(data, teacher, runs / "reference") + opts, reference_device)
            if group:
                with one_process_group(group):
                    got = train_steps(config, base_opts(data, teacher, runs / f"ddp_{group}") + opts, device)
            else:
                got = train_steps(config, base_opts(data, teacher, runs / "device") + opts, device)
            record.update(compare(reference, got, TOLERANCES[tolerance]))
        except Exception as error:  # a case that cannot run is a failed case, not the end of the check
            record.update(ok=False, problems=[f"{type(error).__name__}: {error}"], traceback=traceback.format_exc())
        record["seconds"] = round(time.time() - start, 2)
        records.append(record)
        verdict = "ok  " if record["ok"] else "FAIL"
        detail = "" if record["ok"] else f"  {(record['problems'] or [''])[0][:300]}"
        print(f"{verdict} {name:<28} {device} vs {reference_device}{' in ' + group + ' group' if group else ''} "
              f"(loss {record.get('loss_error_over_bound', float('nan')):.2g}, weights "
              f"{record.get('weight_error_over_bound', float('nan')):.2g} of the bound; {record['seconds']} s){detail}",
              flush=True)
        return record

    for name, config, opts, tolerance in todo:
        check(name, config, opts, tolerance, args.device, args.reference)
    if args.ddp != "none":
        for name, config, opts in (("ICKD+KD", ICKD_KD_CFG, ["ICKD.BASE", "KD"]), ("CRD", KD_CFG, ["DISTILLER.TYPE", "CRD"])):
            check(name, config, opts, "fp32", args.device, args.device, group=args.ddp)
    failed = [r["case"] + (f" ({r['group']})" if r["group"] else "") for r in records if not r["ok"]]
    result = {"device": args.device, "reference": args.reference, "tolerances": TOLERANCES, "cases": records,
              "failed": failed, "environment": _environment(args.device)}
    (out / "compare.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"gpu_check: {len(records) - len(failed)} of {len(records)} cases within tolerance"
          + (f"; outside or failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


def _environment(device: str) -> dict[str, Any]:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "threads": torch.get_num_threads()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus_visible"] = torch.cuda.device_count()
    return info


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="the device checked (default cuda)")
    parser.add_argument("--reference", default="cpu", help="the device it is compared with (default cpu)")
    parser.add_argument("--out", required=True, help="folder for compare.json, the fixture and the runs")
    parser.add_argument("--methods", default="all", help="distillers trained alone, comma-separated, or all")
    parser.add_argument("--ickd-bases", default="all", help="ICKD.BASE values, comma-separated, or all")
    parser.add_argument("--amp-methods", default="KD,ICKD+KD,CRD", help="cases run with SOLVER.AMP and channels-last")
    parser.add_argument("--bank-dtypes", default="float16,bfloat16", help="ICKD.BANK.DTYPE values for ICKD+KD")
    parser.add_argument("--ddp", default="none", choices=("none", "nccl", "gloo"),
                        help="also run ICKD+KD and CRD in a one-process group of this backend")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("gpu_check.py: torch sees no CUDA device; nothing to compare (--device cpu checks the script itself)")
            return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
