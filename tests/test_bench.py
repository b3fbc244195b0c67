"""The benchmark's functions at tiny sizes: they run, and their records are well formed.

No timing is asserted here: performance claims come from running `tools/bench.py` on a
quiet machine (docs/performance.md), never from a timed unit test on a shared one.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from harness_utils import REPO
from benchmarks.bank_build import bench_bank_build
from benchmarks.retrieval import Case, aux_bytes, bank_bytes, bench_retrieval
from benchmarks.step_time import METHODS, Pair, bench_step_time, method_config, resolve_pair
from kdharness.bench import PeakMemory, format_table, paired_ratios, round_robin, summarize

CPU = torch.device("cpu")
# The smallest networks of the zoo, in the published recipe's configs: seconds, not minutes.
TINY = Pair("tiny", "res32x4_res8x4", teacher="resnet8", student="resnet8")


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine, two OpenMP threads that wait for each
    other can make a tiny step 100x slower; these tests check records, not speed."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _positive(value) -> bool:
    return isinstance(value, float) and value > 0 and value == value  # not NaN


def test_summary_statistics_and_paired_ratios() -> None:
    stats = summarize([4.0, 1.0, 3.0, 2.0, 100.0])
    assert stats["median"] == 3.0 and stats["q1"] == 2.0 and stats["q3"] == 4.0 and stats["iqr"] == 2.0
    assert stats["n"] == 5 and stats["min"] == 1.0
    ratios = paired_ratios({"a": [1.0, 2.0, 4.0], "b": [2.0, 4.0, 8.0]}, "a")
    assert ratios["a"]["median"] == 1.0 and ratios["b"]["median"] == 2.0 and ratios["b"]["iqr"] == 0.0
    with pytest.raises(ValueError):
        paired_ratios({"a": [1.0], "b": [1.0, 2.0]}, "a")


def test_round_robin_interleaves_and_discards_warmup() -> None:
    calls: list[str] = []
    times = round_robin({name: (lambda n=name: calls.append(n)) for name in "abc"}, warmup=1, repeats=3, device=CPU)
    assert {name: len(values) for name, values in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert calls[:3] == ["a", "b", "c"] and calls[3:6] == ["b", "c", "a"]  # rotated each repetition
    assert all(t >= 0 for values in times.values() for t in values)


def test_peak_memory_sees_a_cpu_allocation() -> None:
    with PeakMemory(CPU) as peak:
        block = torch.ones(1 << 20)  # 4 MiB
        del block
    assert peak.peak_bytes is None or peak.peak_bytes >= 4 << 20


def test_methods_resolve_to_shipped_configs() -> None:
    pair = resolve_pair("res32x4_res8x4")
    for method in METHODS:
        path, overrides = method_config(method, pair)
        assert path.is_file(), path
        if method.startswith("ICKD+"):
            assert overrides == [] or overrides[:2] == ["DISTILLER.TYPE", "ICKD"]
    assert resolve_pair("wrn40_2_wrn_16_2") == Pair("wrn40_2_wrn_16_2", "wrn40_2_wrn_16_2")
    with pytest.raises(ValueError, match="known pairs"):
        resolve_pair("no_such_pair")


def test_step_time_record() -> None:
    record = bench_step_time(
        pair=TINY, batch_size=2, device="cpu", warmup=0, repeats=2, num_data=400,
        extra_overrides=["CRD.NCE.K", "16", "ICKD.K", "2", "ICKD.N", "2"],
    )
    assert record["benchmark"] == "step_time" and record["reference"] == "KD"
    assert (record["teacher"], record["student"]) == ("resnet8", "resnet8")
    assert list(record["methods"]) == list(METHODS)
    assert record["methods"]["KD"]["ratio_to_kd"] == 1.0
    for method, result in record["methods"].items():
        assert _positive(result["median_ms"]) and _positive(result["ratio_to_kd"]), method
        assert len(result["samples_ms"]) == 2 and result["iqr_ms"] >= 0
    assert record["methods"]["CRD"]["method_state_bytes"] > 0
    for method in ("ICKD+KD", "ICKD+DKD"):
        ickd = record["methods"][method]
        assert ickd["bank_rows"] == 400 and ickd["bank_dim"] == 64  # resnet8's pooled width
        assert {"loss_picd", "loss_nicd"} <= set(ickd["loss_terms"])
        # paired against its own base, repetition by repetition
        base = record["methods"][method.split("+")[1]]["samples_ms"]
        ratios = sorted(a / b for a, b in zip(ickd["samples_ms"], base))
        assert ickd["base"] == method.split("+")[1]
        assert ickd["ratio_to_base"] == pytest.approx(sum(ratios) / 2, rel=1e-9)  # the median of two
    assert "ratio_to_base" not in record["methods"]["KD"]
    assert record["hardware"]["torch_threads"] >= 1
    json.dumps(record)


def test_bank_build_record() -> None:
    record = bench_bank_build(pair=TINY, num_samples=200, device="cpu", batch_size=100, warmup=0, repeats=1)
    assert record["reference"] == "teacher_pass" and record["feature_dim"] == 64
    assert set(record["candidates"]) == {"teacher_pass", "extract+fill", "build_bank", "build_bank_cached"}
    assert record["candidates"]["teacher_pass"]["ratio_to_teacher_pass"] == 1.0
    for name, result in record["candidates"].items():
        assert _positive(result["median_ms"]) and _positive(result["ratio_to_teacher_pass"]), name
    assert record["bank_bytes"] == 200 * 64 * 4
    assert record["build_peak_bytes"] >= record["bank_bytes"], "the peak holds at least the bank it builds"
    json.dumps(record)


def test_retrieval_record_and_memory_accounting() -> None:
    grid = {"sizes": (2000,), "dims": (16,), "batches": (4, 8), "dtypes": ("fp32", "bf16")}
    record = bench_retrieval(devices=["cpu"], grid=grid, warmup=0, repeats=2)
    assert (record["k"], record["n"]) == (8, 8)  # the ICKD defaults
    assert len(record["cases"]) == 4 and record["skipped"] == []
    for case in record["cases"]:
        for key in ("retrieve_median_ms", "matmul_median_ms", "matmul_native_median_ms", "matmul_tflops", "fraction_of_matmul"):
            assert _positive(case[key]), key
        assert case["bank_bytes"] == 2000 * 16 * (4 if case["dtype"] == "fp32" else 2)
        assert case["peak_extra_bytes"] is None or case["peak_extra_bytes"] >= 0
    # the ImageNet case: 1.28M x 2048 in float16 is ~5 GB of features
    assert bank_bytes(1_280_000, 2048, "fp16") == 5_242_880_000
    assert Case(1_280_000, 2048, 256, "fp16").num_classes == 1000 and aux_bytes(50_000, 100) > 0
    json.dumps(record)
    # both ways of reading positives are timed; a dense-like bank (few classes) by its `classes`
    dense = bench_retrieval(devices=["cpu"], grid={**grid, "dtypes": ("fp32",), "classes": (3,)}, warmup=0, repeats=1)
    assert [case["num_classes"] for case in dense["cases"]] == [3, 3]
    for case in dense["cases"]:
        assert _positive(case["retrieve_gather_median_ms"]) and _positive(case["retrieve_by_class_median_ms"])


def test_retrieval_skips_what_does_not_fit(monkeypatch) -> None:
    import benchmarks.retrieval as retrieval

    monkeypatch.setattr(retrieval, "available_memory_bytes", lambda device: 1 << 20)
    record = bench_retrieval(devices=["cpu"], grid={"sizes": (100_000,), "dims": (64,), "batches": (8,), "dtypes": ("fp32",)})
    assert record["cases"] == [] and "GiB" in record["skipped"][0]["reason"]


def test_cli_writes_json_and_prints_a_table(tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("bench_cli", REPO / "tools" / "bench.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "bench.json"
    argv = ["--only", "step", "--device", "cpu", "--pair", "res14_res8", "--methods", "KD,ICKD+KD",
            "--batch-size", "2", "--warmup", "0", "--repeats", "1", "--json", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "ICKD+KD" in printed and "x KD" in printed
    record = json.loads(out.read_text())
    assert record["argv"] == argv and "cpu" in record["hardware"]
    assert set(record["results"]["step"]["methods"]) == {"KD", "ICKD+KD"}
    with pytest.raises(SystemExit):
        cli.parse_args(["--only", "nothing"])
    assert "a" in format_table(["a", "b"], [[1, 2]])

    argv = ["--only", "retrieval", "--retrieval-devices", "cpu", "--sizes", "3000", "--dims", "8",
            "--batches", "4", "--dtypes", "fp16", "--warmup", "0", "--repeats", "1", "--json", str(out)]
    assert cli.main(argv) == 0
    cases = json.loads(out.read_text())["results"]["retrieval"]["cases"]
    assert [(c["bank_size"], c["dim"], c["batch"], c["dtype"]) for c in cases] == [(3000, 8, 4, "fp16")]
    for bad in (["--sizes", "1e6"], ["--dtypes", "fp8"]):
        with pytest.raises(SystemExit):
            cli.parse_args(bad)


@pytest.mark.slow  # four benchmark processes at tiny sizes: about 1.5 minutes on 2 cores
def test_gpu_check_script_runs_end_to_end_on_cpu(tmp_path: Path) -> None:
    """scripts/bench_gpu.sh is the one command a GPU session runs: it must keep working as the
    benchmark's options evolve. On CPU (BENCH_DEVICE=cpu) it runs the same commands at tiny sizes."""
    import os
    import subprocess

    env = dict(os.environ, BENCH_DEVICE="cpu", OMP_NUM_THREADS="1")
    result = subprocess.run(["bash", str(REPO / "scripts" / "bench_gpu.sh"), str(tmp_path)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    records = {name: json.loads((tmp_path / f"{name}.json").read_text())
               for name in ("step_fp32", "step_amp_channels_last", "bank", "retrieval")}
    assert records["step_fp32"]["results"]["step"]["teacher"] == "resnet32x4"
    assert records["step_amp_channels_last"]["results"]["step"]["channels_last"] is True
    assert records["bank"]["results"]["bank"]["teacher"] == "resnet32x4"
    cases = records["retrieval"]["results"]["retrieval"]["cases"]
    assert {(c["dim"], c["batch"], c["dtype"]) for c in cases} == {
        (d, b, t) for d in (256, 2048) for b in (64, 256) for t in ("fp32", "fp16")}
    missing_gpu = subprocess.run(["bash", str(REPO / "scripts" / "bench_gpu.sh"), str(tmp_path / "gpu")], cwd=REPO,
                                 env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True, timeout=300)
    assert missing_gpu.returncode != 0 and "no CUDA device" in missing_gpu.stderr
