"""Segmentation runs on leaderboards: summaries read by task, tables that say mIoU, and CIRKD's
published mIoU (packaged with its sources) beside our pairs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdharness.results import aggregate, compare, load_reference, load_summaries, render_csv, render_markdown
from kdharness.results.reference import reference_by_pair
from kdharness.results.table import render_comparison_markdown

CIRKD = "CIRKD README Performance of Segmentation KD methods on Cityscapes"
TEACHER = "deeplabv3_resnet101"


def write_summary(root: Path, name: str, seed: int, method: str, best: float, **fields) -> Path:
    """A segmentation summary.json as BaseTrainer.write_summary writes it."""
    data = {
        "complete": True, "experiment": f"{name},EXPERIMENT.SEED:{seed}", "dataset": "cityscapes",
        "distiller": method.upper() if method != "vanilla" else "NONE", "method": method, "ickd_base": None,
        "teacher": TEACHER, "student": "deeplabv3_resnet18", "seed": seed, "epochs": 2,
        "task": "segmentation", "metric": "mIoU", "best_miou": best, "last_miou": best - 1,
        "last_pixel_acc": 90.0, "last_per_class_iou": [50.0, None], "best_epoch": 2,
        "history": [{"epoch": 1, "test_miou": best - 2}, {"epoch": 2, "test_miou": best - 1}],
    }
    data.update(fields)
    path = root / "cityscapes" / data["experiment"] / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    for seed, (vanilla, cwd) in enumerate(((70.0, 72.0), (71.0, 72.5), (72.0, 74.5))):
        write_summary(tmp_path, "vanilla", seed, "vanilla", vanilla)
        write_summary(tmp_path, "cwd", seed, "CWD", cwd)
    write_summary(tmp_path, "teacher", 0, "vanilla", 77.5, student=TEACHER)
    return tmp_path


def test_summaries_are_read_by_their_task(runs):
    summaries, warnings = load_summaries([str(runs)])
    assert not warnings and {s.metric for s in summaries} == {"mIoU"}
    cwd = next(s for s in summaries if s.method == "CWD" and s.seed == 2)
    assert (cwd.best_top1, cwd.last_top1) == (74.5, 73.5)  # the run's metric, here mIoU
    assert [point["test_acc"] for point in cwd.curves] == [72.5, 73.5]  # curves: the metric per epoch
    broken = write_summary(runs, "broken", 9, "CWD", 1.0)
    data = json.loads(broken.read_text())
    del data["best_miou"]
    broken.write_text(json.dumps(data))
    _, warnings = load_summaries([str(runs)])
    assert any("missing keys ['best_miou']" in w for w in warnings)


def test_packaged_segmentation_reference():
    figures = [f for f in load_reference() if f.metric == "mIoU"]
    assert len(figures) == 23 and {f.dataset for f in figures} == {"cityscapes", "voc_aug", "camvid"}
    cwd = next(f for f in figures if (f.dataset, f.student, f.method) == ("cityscapes", "deeplabv3_resnet18", "CWD"))
    assert cwd.value == 75.55 and cwd.source == CIRKD
    table = reference_by_pair(figures)
    assert table[("cityscapes", TEACHER, "deeplabv3_mobilenetv2")]["teacher"].value == 78.07  # the teacher row, filed per pair
    assert all(f.metric == "top-1" for f in load_reference() if f.dataset in ("cifar100", "imagenet"))


def test_markdown_says_miou_and_shows_cirkd_beside_our_cells(runs):
    board = aggregate(load_summaries([str(runs)])[0])
    text = render_markdown(board, load_reference())
    assert "## cityscapes: best mIoU (%)" in text and "top-1" not in text
    header = next(line for line in text.splitlines() if line.startswith("| Teacher | Student"))
    assert header.startswith("| Teacher | Student | Teacher mIoU | Vanilla | CWD | Teacher (published) [1] "
                             "| vanilla (published) [2] |")
    assert "CWD (published) [2]" in header and "CIRKD (published) [2]" in header
    row = next(line for line in text.splitlines() if line.startswith(f"| {TEACHER} | deeplabv3_resnet18 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2:7] == ["77.50 ± – (1)", "71.00 ± 1.00 (3)", "73.00 ± 1.32 (3)", "78.07", "74.21"]
    assert "75.55" in cells
    assert f"[2] {CIRKD}  " in text.splitlines()


def test_csv_names_the_metric(runs, tmp_path):
    board = aggregate(load_summaries([str(runs)])[0])
    assert render_csv(board).splitlines()[0] == "dataset,teacher,student,teacher_miou,vanilla,CWD"
    mixed = runs / "cifar" / "kd" / "summary.json"
    mixed.parent.mkdir(parents=True)
    mixed.write_text(json.dumps({"complete": True, "experiment": "kd", "dataset": "cifar100", "teacher": "resnet32x4",
                                 "student": "resnet8x4", "method": "KD", "seed": 0, "best_top1": 71.0}))
    board = aggregate(load_summaries([str(runs)])[0])
    lines = render_csv(board).splitlines()
    assert lines[0].startswith("dataset,metric,teacher,student,teacher_value,vanilla,")
    assert any(line.startswith("cifar100,top-1,") for line in lines) and any(line.startswith("cityscapes,mIoU,") for line in lines)
    text = render_markdown(board)
    assert "## cifar100: best top-1 (%)" in text and "## cityscapes: best mIoU (%)" in text


def test_comparison_title_and_leaderboard_tool_say_miou(runs, capsys):
    from test_results import load_tool

    board = aggregate(load_summaries([str(runs)])[0])
    results = compare(board, "CWD", "vanilla")
    assert results[0].result.mean_diff == pytest.approx((2.0 + 1.5 + 2.5) / 3)
    assert render_comparison_markdown(results, "CWD", "vanilla", "best", "mIoU").startswith("## CWD vs vanilla: best mIoU, paired by seed")
    tool = load_tool("leaderboard")
    assert tool.main([str(runs), "--compare", "CWD", "vanilla"]) == 0
    assert "## CWD vs vanilla: best mIoU, paired by seed" in capsys.readouterr().out
    assert tool.main([str(runs)]) == 0
    assert "Teacher mIoU" in capsys.readouterr().out
