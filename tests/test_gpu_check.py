"""scripts/gpu_check.sh and tools/gpu_check.py (issue 23, item 6) on a machine without a GPU:
without CUDA the script says so and exits 0; its CPU self-test runs the CUDA-vs-CPU comparison
code CPU against CPU (bitwise equal, so well within the tolerances); the comparison flags what
lies outside its tolerances.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from harness_utils import REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check_tool", REPO / "tools" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_the_script_says_so_and_exits_0(tmp_path):
    out = tmp_path / "records"
    result = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, env=_env(), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torch sees no CUDA device here; nothing to check" in result.stdout
    assert "--cpu-selftest" in result.stdout and not out.exists()
    assert _gpu_check().main(["--out", str(out)]) == 0 and not out.exists()  # the Python part says the same


@pytest.mark.slow
def test_cpu_selftest_runs_the_comparison_through_the_script(tmp_path):
    out = tmp_path / "records"
    result = subprocess.run(["bash", str(SCRIPT), "--cpu-selftest", str(out)], capture_output=True, text=True,
                            env=_env(), timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = (out / "summary.txt").read_text()
    assert summary.startswith("compare: ok in "), summary
    record = json.loads((out / "compare" / "compare.json").read_text())
    cases = [(case["case"], case["group"]) for case in record["cases"]]
    assert cases == [("KD", None), ("KDSVD", None), ("ICKD+KD", None), ("KD AMP channels-last", None),
                     ("ICKD+KD bank float16", None), ("ICKD+KD", "gloo"), ("CRD", "gloo")]
    assert record["failed"] == [] and all(case["ok"] for case in record["cases"])
    for case in record["cases"]:  # the same code on the same device: bitwise equal
        assert case["loss_error_over_bound"] == 0 and case["weight_error_over_bound"] == 0, case


def test_compare_flags_differences_beyond_the_tolerance():
    compare, tolerance = _gpu_check().compare, _gpu_check().TOLERANCES["fp32"]
    weights = {"conv.weight": torch.tensor([1.0, -2.0, 0.5]), "bn.bias": torch.tensor([0.1, 0.2])}
    reference = {"steps": [{"loss_ce": 2.0, "loss_kd": 0.5}] * 2, "weights": weights, "test_acc": 10.0, "skipped": 0}

    def variant(**changes):
        run = {**reference, "weights": {k: v.clone() for k, v in weights.items()},
               "steps": [dict(step) for step in reference["steps"]]}
        for key, value in changes.items():
            if key == "loss":
                run["steps"][1]["loss_kd"] = value
            elif key == "weight":
                run["weights"]["conv.weight"][1] = value
            else:
                run[key] = value
        return run

    assert compare(reference, variant(), tolerance)["ok"]
    near = compare(reference, variant(loss=0.5 * (1 + 5e-4), weight=-2.0 * (1 - 5e-4)), tolerance)
    assert near["ok"] and 0 < near["loss_error_over_bound"] < 1 and near["worst_weight"] == "conv.weight"
    far = compare(reference, variant(loss=0.5 * (1 + 1e-2)), tolerance)
    assert not far["ok"] and far["problems"] == ["step 1 loss_kd: 0.505 against 0.5"]
    assert not compare(reference, variant(loss=float("nan")), tolerance)["ok"]
    moved = compare(reference, variant(weight=-2.01), tolerance)
    assert not moved["ok"] and moved["problems"][0].startswith("weight conv.weight: max |difference| 0.01")
    assert not compare(reference, variant(skipped=1), tolerance)["ok"]
    assert not compare(reference, variant(steps=reference["steps"][:1]), tolerance)["ok"]
