"""Benchmark ICKD's costs against its baselines, side by side in one process.

    python tools/bench.py                         # all three benchmarks, default sizes
    python tools/bench.py --quick                 # small sizes: < 2 minutes on a 2-core CPU
    python tools/bench.py --full --json out.json  # the whole retrieval grid, record to a file
    python tools/bench.py --only step --pair res32x4_res8x4 --batch-size 64

Three measurements (see docs/performance.md for what each number means):

* step:      training-step time of KD, DKD, CRD, ICKD+KD, ICKD+DKD, as ratios to KD;
* bank:      memory-bank build time, as a ratio to one plain no-grad teacher pass;
* retrieval: time and memory of bank retrieval over bank sizes, dims, batches and dtypes,
             with the fraction of the machine's matmul throughput it reaches;
* sharded:   (only when asked: ``--only sharded``) the in-context part of a step with a bank
             replicated on every rank vs sharded across W gloo processes (ICKD.BANK.SHARDED),
             side by side, with the bank bytes per rank and the bytes received per step.

Each prints a table; ``--json FILE`` also writes every number with the hardware it came from.
The benchmarks themselves are in tools/benchmarks/ (they drive the host and the plugin both).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Any

BENCHMARKS = ("step", "bank", "retrieval")
EXTRA_BENCHMARKS = ("sharded",)  # run only when named in --only (it spawns processes)


def _log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes and few repetitions (< 2 min on 2 CPU cores)")
    size.add_argument("--full", action="store_true", help="the whole retrieval grid on every device (hours on a CPU)")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:i] for step and bank")
    parser.add_argument("--pair", default=None, help="res32x4_res8x4 (default on GPU), res14_res8 (default on CPU), or any pair with configs")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size of the step benchmark")
    parser.add_argument("--methods", default=None, help="comma-separated methods of the step benchmark (default: KD,DKD,CRD,ICKD+KD,ICKD+DKD)")
    parser.add_argument("--amp", action="store_true", help="step benchmark with SOLVER.AMP True (CUDA only)")
    parser.add_argument("--channels-last", action="store_true", help="step benchmark with SOLVER.CHANNELS_LAST True")
    parser.add_argument("--bank-samples", type=int, default=None, help="samples of the bank-build benchmark (default 2048 CPU, 50000 GPU)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of the bank-build benchmark")
    parser.add_argument("--retrieval-devices", default=None, help="comma-separated devices of the retrieval benchmark (default: cuda if present, and cpu)")
    for name, example in (("sizes", "50000,1280000"), ("dims", "256,2048"), ("batches", "64,256"), ("dtypes", "fp32,fp16,bf16"),
                          ("classes", "11 for a dense bank; default 100 up to 100 000 rows, 1000 above")):
        parser.add_argument(f"--{name}", default=None, help=f"retrieval grid: replace the grid's {name} (e.g. {example})")
    parser.add_argument("--worlds", default=None, help="sharded benchmark: comma-separated world sizes (default 2,4; --quick 2,3)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default 3 step / 1 others; --quick 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed iterations (default 20 step / 5 others; --quick 5 / 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the full record to FILE")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    args.grid_overrides = {}
    for name in ("sizes", "dims", "batches", "dtypes", "classes"):
        value = getattr(args, name)
        if value is None:
            continue
        items = [item.strip() for item in value.split(",") if item.strip()]
        try:
            args.grid_overrides[name] = tuple(items if name == "dtypes" else (int(item) for item in items))
        except ValueError:
            parser.error(f"--{name}: expected comma-separated integers, got {value!r}")
    unknown_dtypes = sorted(set(args.grid_overrides.get("dtypes", ())) - {"fp32", "fp16", "bf16"})
    if unknown_dtypes:
        parser.error(f"--dtypes: unknown {', '.join(unknown_dtypes)}; allowed: fp32, fp16, bf16")
    unknown = sorted(set(args.only) - set(BENCHMARKS) - set(EXTRA_BENCHMARKS))
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {', '.join(unknown)}; allowed: {', '.join(BENCHMARKS + EXTRA_BENCHMARKS)}")
    try:
        args.worlds = tuple(int(w) for w in args.worlds.split(",")) if args.worlds else None
    except ValueError:
        parser.error(f"--worlds: expected comma-separated integers, got {args.worlds!r}")
    return args


def _repeats(args: argparse.Namespace, quick: int, default: int) -> int:
    return args.repeats if args.repeats is not None else (quick if args.quick else default)


def _warmup(args: argparse.Namespace, default: int) -> int:
    return args.warmup if args.warmup is not None else (1 if args.quick else default)


def run_step(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.step_time import METHODS, bench_step_time

    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(METHODS)
    return bench_step_time(
        pair=args.pair,
        batch_size=args.batch_size,
        device=args.device,
        methods=methods,
        warmup=_warmup(args, 3),
        repeats=_repeats(args, 5, 20),
        amp=args.amp,
        channels_last=args.channels_last,
        progress=_log,
    )


def run_bank(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.bank_build import bench_bank_build

    samples = args.bank_samples or (1024 if args.quick else None)
    return bench_bank_build(
        pair=args.pair,
        num_samples=samples,
        device=args.device,
        num_workers=args.num_workers,
        warmup=_warmup(args, 1),
        repeats=_repeats(args, 3, 5),
        progress=_log,
    )


def run_retrieval(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from benchmarks.retrieval import GRIDS, bench_retrieval

    if args.retrieval_devices:
        devices = [d.strip() for d in args.retrieval_devices.split(",") if d.strip()]
    else:
        devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
    records = []
    for device in devices:
        # The full grid is minutes on a GPU and hours on a CPU: a CPU gets it only when asked.
        grid: Any = "full" if args.full or (device.startswith("cuda") and not args.quick) else "quick"
        if args.grid_overrides:
            grid = {**GRIDS[grid], **args.grid_overrides}
        records.append(
            bench_retrieval(
                devices=[device], grid=grid, warmup=_warmup(args, 1), repeats=_repeats(args, 3, 5), progress=_log
            )
        )
    merged = dict(records[0])
    merged["grid"] = {device: r["grid"] for device, r in zip(devices, records)}
    merged["cases"] = [case for r in records for case in r["cases"]]
    merged["skipped"] = [s for r in records for s in r["skipped"]]
    merged["hardware"] = {key: value for r in records for key, value in r["hardware"].items()}
    return merged


def run_sharded(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.sharded import DEFAULTS, QUICK, bench_sharded

    grid = {**(QUICK if args.quick else DEFAULTS), **args.grid_overrides}
    if args.worlds:
        grid["worlds"] = args.worlds
    return bench_sharded(**grid, warmup=_warmup(args, 1), repeats=_repeats(args, 5, 10),
                         threads=args.threads or 1, progress=_log)


# ----------------------------------------------------------------------------- printing


def print_step(record: dict[str, Any]) -> None:
    from kdharness.bench import format_table

    print(f"\nTraining step: {record['teacher']} -> {record['student']}, batch {record['batch_size']}, "
          f"{record['device']}, amp={record['amp']}, channels_last={record['channels_last']}, "
          f"bank/memory rows {record['num_data']}, median of {record['repeats']} (IQR)")
    rows = []
    for method, r in record["methods"].items():
        rows.append([
            method,
            f"{r['median_ms']:.1f}",
            f"{r['iqr_ms']:.1f}",
            f"{r['ratio_to_kd']:.3f}",
            f"{r['ratio_q1']:.3f}-{r['ratio_q3']:.3f}",
            f"{r['ratio_to_base']:.3f} ({r['ratio_to_base_q1']:.3f}-{r['ratio_to_base_q3']:.3f})" if "ratio_to_base" in r else "",
            f"{r['method_state_bytes'] / 2**20:.1f}",
        ])
    print(format_table(["method", "ms/step", "IQR ms", "x KD", "x KD IQR", "x its base (IQR)", "state MiB"], rows))


def print_bank(record: dict[str, Any]) -> None:
    from kdharness.bench import format_table

    print(f"\nBank build: {record['num_samples']} samples through {record['teacher']} (D={record['feature_dim']}, "
          f"{record['bank_dtype']}), batch {record['batch_size']}, {record['num_workers']} workers, {record['device']}, "
          f"median of {record['repeats']} (IQR)")
    rows = []
    for name, r in record["candidates"].items():
        rows.append([
            name, f"{r['median_ms']:.1f}", f"{r['iqr_ms']:.1f}", f"{r['per_sample_us']:.1f}",
            f"{r['ratio_to_teacher_pass']:.3f}", f"{r['ratio_q1']:.3f}-{r['ratio_q3']:.3f}",
        ])
    print(format_table(["variant", "ms", "IQR ms", "us/sample", "x pass", "x pass IQR"], rows))
    print(f"bank {_bytes(record['bank_bytes'])}; peak memory of extract+fill {_bytes(record['build_peak_bytes'])} "
          "(the bank, one batch's activations, transients)")


def _bytes(value: int | None) -> str:
    if value is None:
        return "n/a"
    return f"{value / 2**20:.0f} MiB" if value < 2**30 else f"{value / 2**30:.2f} GiB"


def print_retrieval(record: dict[str, Any]) -> None:
    from kdharness.bench import format_table

    print(f"\nRetrieval: K={record['k']}, N={record['n']}, median of {record['repeats']}; "
          "fraction = matmul time / retrieve time")
    rows = []
    for c in record["cases"]:
        rows.append([
            c["device"], c["bank_size"], c["num_classes"], c["dim"], c["batch"], c["dtype"], _bytes(c["bank_bytes"]),
            f"{c['retrieve_median_ms']:.2f}", f"{c['retrieve_iqr_ms']:.2f}", f"{c['retrieve_gather_median_ms']:.2f}",
            "–" if c["retrieve_by_class_median_ms"] is None else f"{c['retrieve_by_class_median_ms']:.2f}",
            f"{c['matmul_median_ms']:.2f}",
            f"{c['matmul_native_median_ms']:.2f}", f"{c['matmul_topk_median_ms']:.2f}", f"{c['matmul_tflops']:.3f}",
            f"{c['fraction_of_matmul']:.2f}",
            _bytes(c["peak_extra_bytes"]),
        ])
    print(format_table(
        ["device", "bank M", "classes", "D", "B", "dtype", "bank", "retrieve ms", "IQR", "gather ms", "by_class ms",
         "matmul ms", "native ms", "+topk ms",
         "matmul TFLOP/s", "fraction", "peak extra"],
        rows,
    ))
    for s in record["skipped"]:
        print(f"skipped: {s['device']} M={s['bank_size']} D={s['dim']} {s['dtype']}: {s['reason']}")


def print_sharded(record: dict[str, Any]) -> None:
    from kdharness.bench import format_table

    print(f"\nSharded vs replicated bank: in-context part of one step (retrieval + selected rows), K={record['k']}, "
          f"N={record['n']}, {record['backend']}, slowest rank, median of {record['repeats']} (IQR)")
    rows = []
    for c in record["cases"]:
        ratio = c["ratio_sharded_to_replicated"]
        rows.append([
            c["world"], c["bank_size"], c["dim"], c["batch_per_rank"], c["dtype"],
            f"{c['replicated_ms']['median']:.1f}", f"{c['sharded_ms']['median']:.1f}",
            f"{ratio['median']:.2f}", f"{ratio['q1']:.2f}-{ratio['q3']:.2f}",
            _bytes(c["bank_bytes_per_rank"]["replicated"]), _bytes(c["bank_bytes_per_rank"]["sharded"]),
            f"{c['received_bytes_per_step']['total'] / 2**10:.0f} KiB",
        ])
    print(format_table(["W", "bank M", "D", "b/rank", "dtype", "replicated ms", "sharded ms", "x repl.", "x IQR",
                        "bank/rank repl.", "bank/rank sharded", "received/step"], rows))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from kdharness.bench import hardware_info, resolve_device

    device = resolve_device(args.device)
    hardware = hardware_info(device)
    print(f"hardware: {hardware['cpu']} ({hardware['usable_cores']} usable cores, torch threads "
          f"{hardware['torch_threads']}){', GPU ' + hardware['gpu'] if 'gpu' in hardware else ''}; "
          f"load average {hardware.get('load_average_1_5_15')}; torch {hardware['torch']}")
    record: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "mode": "quick" if args.quick else "full" if args.full else "default",
        "hardware": hardware,
        "results": {},
    }
    runners = {"step": (run_step, print_step), "bank": (run_bank, print_bank), "retrieval": (run_retrieval, print_retrieval),
               "sharded": (run_sharded, print_sharded)}
    for name in args.only:
        run, show = runners[name]
        result = run(args)
        record["results"][name] = result
        show(result)
    record["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(record, handle, indent=1)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
