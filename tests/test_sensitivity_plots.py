"""The paper's sensitivity figures (Figs. 4, 5) and IC-KD vs IC-KD-all (Fig. 2) from hand-made summaries.

Every summary.json here is written by hand with known accuracies, so each mean, std,
baseline and left-out run below is checked against numbers worked out in the comments.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from kdharness.results.sensitivity import (
    BOOKKEEPING_KEYS,
    FIGURES,
    ICKD_ALL,
    flatten_config,
    load_sweep_runs,
    parse_experiment,
    render_sensitivity_markdown,
    sweeps,
)

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

from kdharness.results.plot import plot_ickd_all, plot_sensitivity  # noqa: E402

PAIR_A = ("resnet14", "resnet8", "ickd_kd_res14_res8", "kd_res14_res8")
PAIR_B = ("resnet32x4", "resnet8x4", "ickd_kd_res32x4_res8x4", "kd_res32x4_res8x4")
ICKD_DEFAULTS = {"BASE": "KD", "PARADIGM": "offline", "K": 8, "N": 8, "TAU": 0.1, "BETA1": 0.5, "BETA2": 1.0,
                 "PICD_WEIGHT": 1.0, "NICD_WEIGHT": 0.1, "ALL_SAME_CLASS": False,
                 "BANK": {"CACHE_DIR": "./output/ickd_bank_cache"}}


def write_run(root: Path, pair: tuple, method: str, seed: int, top1: float, overrides: dict | None = None,
              epochs: int = 3, project: str = "study", diagnostics: dict | None = None) -> None:
    """A summary.json as the trainer writes it, named as tools/train.py names the run directory."""
    teacher, student, ickd_tag, kd_tag = pair
    overrides = overrides or {}
    is_ickd = method.startswith("ICKD")
    ickd = json.loads(json.dumps(ICKD_DEFAULTS))
    solver = {"EPOCHS": epochs, "LR": 0.05}
    for key, value in overrides.items():
        node, leaf = key.split(".", 1)
        (ickd if node == "ICKD" else solver)[leaf] = value
    config = {
        "DISTILLER": {"TYPE": "ICKD" if is_ickd else method, "TEACHER": teacher, "STUDENT": student},
        "ICKD": ickd, "SOLVER": solver, "KD": {"TEMPERATURE": 4.0},
        "EXPERIMENT": {"SEED": seed, "PROJECT": project}, "LOG": {"PREFIX": f"./output/{project}"},
    }
    name = ",".join([ickd_tag if is_ickd else kd_tag, f"EXPERIMENT.SEED:{seed}", *(f"{k}:{v}" for k, v in overrides.items())])
    folder = root / project / name
    folder.mkdir(parents=True)
    summary = {
        "complete": True, "experiment": name, "dataset": "fashion_mnist", "teacher": teacher, "student": student,
        "method": method, "seed": seed, "epochs": epochs, "best_top1": top1, "last_top1": top1,
        "history": [{"epoch": e + 1} for e in range(epochs)], "config": yaml.safe_dump(config),
    }
    if diagnostics:  # what the trainer records for a distiller with diagnostics(): in each epoch's entry
        summary["history"][-1]["diagnostics"] = diagnostics
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def study(tmp_path) -> Path:
    root = tmp_path / "runs"
    for seed, top1 in ((0, 70.0), (1, 72.0)):  # pair A centre: 71 ± 1.414
        write_run(root, PAIR_A, "ICKD+KD", seed, top1)
    for value, tops in ((4, (71.0, 73.0)), (32, (66.0, 68.0)), (1, (69.0,))):
        for seed, top1 in enumerate(tops):
            logged = {"picd_to_base": 0.2 + 0.2 * seed} if value == 4 else None  # mean 0.3
            write_run(root, PAIR_A, "ICKD+KD", seed, top1, {"ICKD.K": value}, diagnostics=logged)
    for seed in (0, 1):
        write_run(root, PAIR_A, "ICKD+KD", seed, 74.0, {"ICKD.BETA1": 1.0})
        write_run(root, PAIR_A, "ICKD+KD", seed, 65.0 + seed, {"ICKD.PICD_WEIGHT": 0.25})
        write_run(root, PAIR_A, "ICKD+KD", seed, (75.0, 73.0)[seed], {"ICKD.ALL_SAME_CLASS": True})
        write_run(root, PAIR_A, "KD", seed, (68.0, 70.0)[seed])  # baseline 69 ± 1.414
        write_run(root, PAIR_A, "KD", seed, 50.0, {"SOLVER.LR": 0.5})  # not a baseline: an override
        # pair B: centre 60, 62 -> 61; all: 64, 64; KD 58, 58
        write_run(root, PAIR_B, "ICKD+KD", seed, 60.0 + 2 * seed)
        write_run(root, PAIR_B, "ICKD+KD", seed, 64.0, {"ICKD.ALL_SAME_CLASS": True})
        write_run(root, PAIR_B, "KD", seed, 58.0)
    # left out: two overrides; and a K run trained for another number of epochs
    write_run(root, PAIR_A, "ICKD+KD", 0, 99.0, {"ICKD.K": 4, "ICKD.TAU": 0.5})
    write_run(root, PAIR_A, "ICKD+KD", 0, 99.0, {"ICKD.K": 16}, epochs=5, project="other")
    return root


def _keys() -> list[str]:
    return [p.key for params in FIGURES.values() for p in params] + [ICKD_ALL.key]


def _by_key(found, key, student="resnet8"):
    (sweep,) = [s for s in found if s.key == key and s.student == student]
    return sweep


def test_parse_experiment_and_flatten():
    assert parse_experiment("ickd_kd_res14_res8,EXPERIMENT.SEED:0,ICKD.K:32") == ("ickd_kd_res14_res8", {"ICKD.K": "32"})
    assert parse_experiment("tag") == ("tag", {})
    # a comma inside a value stays in it
    assert parse_experiment("tag,SOLVER.LR_DECAY_STAGES:[150,180],ICKD.N:4") == (
        "tag", {"SOLVER.LR_DECAY_STAGES": "[150,180]", "ICKD.N": "4"})
    assert flatten_config({"ICKD": {"K": 8, "BANK": {"DTYPE": "float32"}}, "A": 1}) == {
        "ICKD.K": 8, "ICKD.BANK.DTYPE": "float32", "A": 1}


def test_bookkeeping_keys_cover_the_run_name_exclusions():
    from kdharness.engine.run_dir import NON_NAMING_KEYS

    assert all(key.startswith(BOOKKEEPING_KEYS) for key in NON_NAMING_KEYS)


def test_sweeps_group_one_factor_runs_with_centre_and_baseline(study):
    runs, warnings = load_sweep_runs([str(study)])
    assert warnings == []
    found, notes = sweeps(runs, _keys())
    assert sorted((s.student, s.key) for s in found) == [
        ("resnet8", "ICKD.ALL_SAME_CLASS"), ("resnet8", "ICKD.BETA1"), ("resnet8", "ICKD.K"),
        ("resnet8", "ICKD.PICD_WEIGHT"), ("resnet8x4", "ICKD.ALL_SAME_CLASS"),
    ]
    k = _by_key(found, "ICKD.K")
    assert k.centre == 8 and k.method == "ICKD+KD" and k.baseline_name == "KD"
    # values sorted; the centre's two seeds are the K = 8 point; K = 16 (5 epochs) left out
    assert [(v, c.mean, c.n) for v, c in k.points] == [(1, 69.0, 1), (4, 72.0, 2), (8, 71.0, 2), (32, 67.0, 2)]
    assert [c.std for _, c in k.points] == pytest.approx([None, math.sqrt(2), math.sqrt(2), math.sqrt(2)])
    assert (k.baseline.mean, k.baseline.n) == (69.0, 2)  # the SOLVER.LR run is not a baseline
    assert any("ICKD.TAU" in n and "exactly one" in n for n in notes)
    assert any("SOLVER.EPOCHS 5 vs 3" in n for n in notes)
    assert any("single seed at 1" in n for n in notes)
    assert any(n.startswith("ICKD.BETA1: 2 values") for n in notes) and not any(n.startswith("ICKD.K: 4 values") for n in notes)
    beta1 = _by_key(found, "ICKD.BETA1")
    assert [(v, c.mean, c.std) for v, c in beta1.points] == [(0.5, 71.0, pytest.approx(math.sqrt(2))), (1.0, 74.0, 0.0)]
    fig2 = _by_key(found, "ICKD.ALL_SAME_CLASS", "resnet8x4")
    assert [(v, c.mean) for v, c in fig2.points] == [(False, 61.0), (True, 64.0)] and fig2.baseline.mean == 58.0

    assert k.diagnostics[4] == pytest.approx({"picd_to_base": 0.3}) and k.diagnostics[8] == {}

    table = render_sensitivity_markdown(found)
    assert "| ICKD.K | best top-1 (%) | vs KD | PICD/base |" in table
    assert "| 4 | 72.00 ± 1.41 (2) | +3.00 | 0.3 |" in table
    assert "| 8 (config) | 71.00 ± 1.41 (2) | +2.00 | – |" in table
    assert "| 1 | 69.00 ± – (1) | +0.00 | – |" in table
    assert "| ICKD.BETA1 | best top-1 (%) | vs KD |\n" in table  # no diagnostics logged: no column


def test_sensitivity_figure_draws_means_errors_and_baseline(study, tmp_path):
    found, _ = sweeps(load_sweep_runs([str(study)])[0], _keys())
    path = tmp_path / "fig4.png"
    figure = plot_sensitivity(found, FIGURES["fig4"], str(path))
    beta1, k, tau, beta2 = figure.axes[:4]
    (container,) = k.containers
    line = container.lines[0]
    assert list(line.get_xdata()) == [0, 1, 2, 3] and list(line.get_ydata()) == [69.0, 72.0, 71.0, 67.0]
    assert [t.get_text() for t in k.get_xticklabels()] == ["1", "4", "8", "32"]
    dashed = [ln for ln in k.lines if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [69.0, 69.0]
    assert "no runs vary" in tau.texts[0].get_text() and "no runs vary" in beta2.texts[0].get_text()
    assert len(beta1.containers) == 1
    with Image.open(path) as image:  # figsize (3.6 * 4 + 1, 3.4) inches at 120 dpi
        assert image.size == (round(15.4 * 120), round(3.4 * 120))


def test_ickd_all_figure_bars(study, tmp_path):
    found, _ = sweeps(load_sweep_runs([str(study)])[0], [ICKD_ALL.key])
    figure = plot_ickd_all(found, str(tmp_path / "fig2.png"))
    heights = [round(p.get_height(), 6) for p in figure.axes[0].patches]
    # per pair (sorted): baseline, IC-KD (Top-K), IC-KD-all
    assert heights == [69.0, 71.0, 74.0, 58.0, 61.0, 64.0]


def test_leaderboard_cli_writes_one_png_per_figure(study, tmp_path, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    try:
        import leaderboard
    finally:
        sys.path.pop(0)
    out = tmp_path / "figures"
    assert leaderboard.main([str(study), "--sensitivity", str(out)]) == 0
    captured = capsys.readouterr()
    assert "| 32 | 67.00 ± 1.41 (2) | -2.00 |" in captured.out
    sizes = {}
    for name in ("sensitivity_fig4.png", "sensitivity_fig5.png", "ickd_all_fig2.png"):
        with Image.open(out / name) as image:
            sizes[name] = image.size
    assert sizes["sensitivity_fig4.png"] == (1848, 408) and sizes["sensitivity_fig5.png"] == (984, 408)
    assert "wrote" in captured.err and "ICKD.TAU" in captured.err  # the left-out run is reported

    empty = tmp_path / "empty"
    write_run(empty, PAIR_A, "KD", 0, 70.0)
    assert leaderboard.main([str(empty), "--sensitivity", str(out)]) == 1


def test_curves_figure_from_the_committed_pilot(tmp_path, capsys):
    """`leaderboard.py --curves`: per-epoch test and training-image accuracy of every run."""
    import leaderboard
    from kdharness.results.summaries import load_summaries

    pilot = Path(__file__).resolve().parents[1] / "docs" / "results" / "runs" / "fmnist_converged_pilot"
    summaries, _ = load_summaries([str(pilot)])
    assert len(summaries) == 12
    curve = summaries[0].curves
    # evaluated every 10th epoch (LOG.EVAL_FREQ 10) and the last, with the training images too
    assert [point["epoch"] for point in curve] == [float(e) for e in range(10, 151, 10)]
    assert all(0.0 <= point["train_eval_acc"] <= 100.0 and 0.0 <= point["test_acc"] <= 100.0 for point in curve)
    out = tmp_path / "curves.png"
    assert leaderboard.main([str(pilot), "--no-reference", "--curves", str(out)]) == 0
    width, height = Image.open(out).size
    assert width > 400 and height > 2 * 300  # one panel per student: resnet8 and wrn_16_1
    assert leaderboard.main([str(tmp_path), "--curves", str(tmp_path / "none.png")]) == 1  # no runs: the usual error
