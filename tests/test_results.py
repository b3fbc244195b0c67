"""Comparison tooling: summaries -> leaderboard (Markdown, CSV, PNG) and paired statistics.

Every fixture is a summary.json with known numbers, so each cell is checked against a
value computed by hand, not against the code's own output.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import struct
import sys
from pathlib import Path

import pytest

from kdharness.results import (
    aggregate,
    compare,
    format_cell,
    ickd_baselines,
    load_reference,
    load_summaries,
    paired_comparison,
    render_csv,
    render_markdown,
    strip_seed,
    t_cdf,
    t_ppf,
    t_two_sided_p,
)
from kdharness.results.reference import ReferenceDataError
from kdharness.results.stats import betainc

ROOT = Path(__file__).resolve().parents[1]
MDISTILLER = "mdistiller README (DKD, CVPR 2022)"
CRD_PAPER = "CRD paper (ICLR 2020), Tables 1-2"


def load_tool(name: str):
    """tools/ is not a package: import a CLI script as a module to call its main()."""
    path = ROOT / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def write_summary(root: Path, name: str, **fields) -> Path:
    """A summary.json shaped like BaseTrainer.write_summary's, with `fields` overriding."""
    seed = fields.get("seed", 0)
    data = {
        "complete": True,
        "experiment": f"{name},EXPERIMENT.SEED:{seed}",
        "dataset": "cifar100",
        "distiller": "KD",
        "method": "KD",
        "ickd_base": None,
        "teacher": "resnet32x4",
        "student": "resnet8x4",
        "seed": seed,
        "epochs": 2,
        "best_top1": 70.0,
        "best_epoch": 2,
        "last_top1": 69.0,
        "history": [{"epoch": 1}, {"epoch": 2}],
    }
    data.update(fields)
    run_dir = root / "project" / data["experiment"]
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "summary.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    """cifar100 resnet32x4 -> resnet8x4 with teacher, vanilla, KD, ICKD+KD; one fashion_mnist run."""
    for seed, (kd, ickd, vanilla, teacher) in enumerate([(70, 72, 68, 79.0), (71, 73, 69, 79.2), (72, 74.5, 70, 79.4)]):
        write_summary(tmp_path, "kd,res32x4_res8x4", seed=seed, best_top1=kd, last_top1=kd - 1)
        write_summary(tmp_path, "ickd_kd,res32x4_res8x4", seed=seed, method="ICKD+KD", distiller="ICKD",
                      best_top1=ickd, last_top1=ickd - 0.5)
        write_summary(tmp_path, "vanilla,res32x4_res8x4", seed=seed, method="vanilla", distiller="NONE",
                      best_top1=vanilla)
        # The teacher trained alone: a vanilla run whose student is the pair's teacher.
        write_summary(tmp_path, "vanilla,res32x4", seed=seed, method="vanilla", distiller="NONE",
                      teacher="ResNet50", student="resnet32x4", best_top1=teacher)
    write_summary(tmp_path, "kd,fmnist", dataset="fashion_mnist", seed=0, best_top1=91.25)
    return tmp_path


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# -- cells ------------------------------------------------------------------------------
def test_cell_format_mean_sample_std_and_n(runs):
    summaries, _ = load_summaries([str(runs)])
    board = aggregate(summaries)
    row = next(r for r in board.rows if r.dataset == "cifar100")
    assert format_cell(row.cells["KD"]) == "71.00 ± 1.00 (3)"  # sample std of 70, 71, 72 is 1
    assert format_cell(row.cells["ICKD+KD"]) == "73.17 ± 1.26 (3)"  # std of 72, 73, 74.5 = sqrt(19/12)
    assert format_cell(row.cells["vanilla"]) == "69.00 ± 1.00 (3)"
    assert format_cell(row.teacher_cell) == "79.20 ± 0.20 (3)"
    fmnist = next(r for r in board.rows if r.dataset == "fashion_mnist")
    assert format_cell(fmnist.cells["KD"]) == "91.25 ± – (1)"  # one run: std undefined, not nan, not 0


def test_markdown_table_cells_exact(runs):
    summaries, _ = load_summaries([str(runs)])
    text = render_markdown(aggregate(summaries), load_reference())
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| Teacher | Student"))
    # The first published columns; more methods' published figures (FITNET, AT, ...) follow.
    assert header.startswith(
        "| Teacher | Student | Teacher acc. | Vanilla | KD | ICKD+KD | KD (published) [1] | DKD (published) [1] "
        "| CRD (published) [2] |"
    )
    assert any(
        line.startswith(
            "| resnet32x4 | resnet8x4 | 79.20 ± 0.20 (3) | 69.00 ± 1.00 (3) | 71.00 ± 1.00 (3) | 73.17 ± 1.26 (3) "
            "| 73.33 | 76.32 | 75.51 |"
        )
        for line in lines
    )
    assert f"[1] {MDISTILLER}  " in lines and f"[2] {CRD_PAPER}  " in lines
    # The teacher's own vanilla runs fill the teacher cell, not a row of their own.
    assert not any("| ResNet50 |" in line for line in lines)
    fashion = text[text.index("## fashion_mnist"):]
    assert "published" not in fashion and "| resnet32x4 | resnet8x4 | – | – | 91.25 ± – (1) |" in fashion


def test_csv_cells_exact(runs):
    summaries, _ = load_summaries([str(runs)])
    text = render_csv(aggregate(summaries), load_reference())
    rows = {row["dataset"]: row for row in _csv_rows(text)}
    assert list(rows["cifar100"])[:7] == ["dataset", "teacher", "student", "teacher_acc", "vanilla", "KD", "ICKD+KD"]
    cifar = rows["cifar100"]
    assert cifar["teacher_acc"] == "79.20 ± 0.20 (3)"
    assert cifar["vanilla"] == "69.00 ± 1.00 (3)"
    assert cifar["KD"] == "71.00 ± 1.00 (3)"
    assert cifar["ICKD+KD"] == "73.17 ± 1.26 (3)"
    assert cifar[f"KD (published: {MDISTILLER})"] == "73.33"
    assert cifar[f"DKD (published: {MDISTILLER})"] == "76.32"
    assert cifar[f"CRD (published: {CRD_PAPER})"] == "75.51"
    fashion = rows["fashion_mnist"]
    assert fashion["KD"] == "91.25 ± – (1)" and fashion["teacher_acc"] == "" and fashion[f"KD (published: {MDISTILLER})"] == ""


def test_reference_columns_absent_without_published_figures(tmp_path):
    write_summary(tmp_path, "kd,fmnist", dataset="fashion_mnist", seed=0, best_top1=91.0)
    write_summary(tmp_path, "kd,fmnist", dataset="fashion_mnist", seed=1, best_top1=92.0)
    summaries, _ = load_summaries([str(tmp_path)])
    board = aggregate(summaries)
    reference = load_reference()
    markdown, table = render_markdown(board, reference), render_csv(board, reference)
    assert "published" not in markdown and "[1]" not in markdown
    assert table.splitlines()[0] == "dataset,teacher,student,teacher_acc,vanilla,KD"
    assert "91.50 ± 0.71 (2)" in markdown


def test_last_metric(runs):
    summaries, _ = load_summaries([str(runs)])
    row = next(r for r in aggregate(summaries, metric="last").rows if r.dataset == "cifar100")
    assert format_cell(row.cells["KD"]) == "70.00 ± 1.00 (3)"
    assert format_cell(row.cells["ICKD+KD"]) == "72.67 ± 1.26 (3)"


def test_group_by_label_strips_the_seed_override(runs):
    assert strip_seed("kd,res32x4_res8x4,EXPERIMENT.SEED:2,SOLVER.EPOCHS:10") == "kd,res32x4_res8x4,SOLVER.EPOCHS:10"
    summaries, _ = load_summaries([str(runs)])
    board = aggregate(summaries, by="label")
    row = next(r for r in board.rows if r.dataset == "cifar100")
    assert format_cell(row.cells["kd,res32x4_res8x4"]) == "71.00 ± 1.00 (3)"
    assert format_cell(row.cells["vanilla"]) == "69.00 ± 1.00 (3)"  # vanilla keeps its own column


def test_method_columns_put_each_baseline_beside_ickd(tmp_path):
    for method in ("ICKD+CRD", "CRD", "ICKD", "DKD", "ICKD+DKD", "KD", "ICKD+KD", "FitNet"):
        write_summary(tmp_path, method, method=method)
    board = aggregate(load_summaries([str(tmp_path)])[0])
    assert board.columns == ["ICKD", "KD", "ICKD+KD", "DKD", "ICKD+DKD", "CRD", "ICKD+CRD", "FitNet"]
    assert ickd_baselines(board) == [("ICKD+KD", "KD"), ("ICKD+DKD", "DKD"), ("ICKD+CRD", "CRD")]


# -- what is left out, and said so -------------------------------------------------------
def test_incomplete_and_broken_summaries_are_skipped_with_a_warning(runs):
    incomplete = write_summary(runs, "kd,res32x4_res8x4", seed=7, complete=False, epochs=240, best_top1=5.0,
                               history=[{"epoch": 1}])
    broken = runs / "project" / "broken" / "summary.json"
    broken.parent.mkdir()
    broken.write_text("{not json")
    alien = write_summary(runs, "alien", seed=0)
    alien.write_text(json.dumps({"complete": True, "dataset": "cifar100"}))
    summaries, warnings = load_summaries([str(runs)])
    assert all(s.seed != 7 for s in summaries)
    assert any(str(incomplete) in w and "incomplete run (1 of 240 epochs)" in w for w in warnings)
    assert any(str(broken) in w and "unreadable" in w for w in warnings)
    assert any(str(alien) in w and "missing keys" in w for w in warnings)
    row = next(r for r in aggregate(summaries).rows if r.dataset == "cifar100")
    assert format_cell(row.cells["KD"]) == "71.00 ± 1.00 (3)"  # the incomplete seed 7 did not count


def test_duplicate_seeds_warn(tmp_path):
    write_summary(tmp_path, "kd_a", seed=0)
    write_summary(tmp_path, "kd_b", seed=0)
    board = aggregate(load_summaries([str(tmp_path)])[0])
    assert any("seed 0 has 2 runs" in w for w in board.warnings)
    results = compare(board, "KD", "KD")
    assert results[0].result is None and "ambiguous" in results[0].note


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_summaries([str(tmp_path / "nope")])


# -- published figures -------------------------------------------------------------------
def test_packaged_reference_loads_without_shared_data():
    figures = load_reference()
    assert len([f for f in figures if f.method in ("KD", "DKD", "CRD") and f.dataset in ("cifar100", "imagenet")]) == 37
    # mdistiller's feature distillers, CIFAR-100 only (CRD paper Tables 1-2): 11 pairs each.
    for method in ("FITNET", "AT", "SP", "RKD", "PKT", "NST"):
        assert len([f for f in figures if f.method == method and f.dataset == "cifar100"]) == 11, method
    kd = next(f for f in figures if (f.dataset, f.teacher, f.student, f.method) == ("cifar100", "resnet32x4", "resnet8x4", "KD"))
    assert kd.top1 == 73.33 and kd.source == MDISTILLER  # unquoted commas in the source are kept
    assert {f.dataset for f in figures} >= {"cifar100", "imagenet"}


def test_malformed_reference_names_file_and_line(tmp_path):
    path = tmp_path / "ref.csv"
    path.write_text("dataset,teacher,student,method,top1,source\ncifar100,a,b,KD,high,paper\n")
    with pytest.raises(ReferenceDataError, match=r"ref\.csv, line 2: top1 = 'high'"):
        load_reference(str(path))
    path.write_text("dataset,model,top1\n")
    with pytest.raises(ReferenceDataError, match="expected dataset,teacher,student,method,top1,source"):
        load_reference(str(path))


# -- statistics --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "df, quantile",
    [(1, 12.706204736), (2, 4.302652729), (4, 2.776445105), (9, 2.262157163), (30, 2.042272456)],
)
def test_t_quantiles_match_tables(df, quantile):
    assert t_ppf(0.975, df) == pytest.approx(quantile, abs=1e-8)
    assert t_ppf(0.025, df) == pytest.approx(-quantile, abs=1e-8)


def test_t_distribution_known_values():
    assert t_two_sided_p(2.0, 5) == pytest.approx(0.1019395, abs=1e-6)
    assert t_cdf(0.0, 3) == 0.5
    for t in (0.3, 1.0, 4.0, 25.0):  # closed forms: df=1 is Cauchy, df=2 is algebraic
        assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-10)
        assert t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-10)
    assert t_ppf(0.995, 1e6) == pytest.approx(2.5758293, abs=1e-5)  # tends to the normal
    for df in (1, 3, 17):
        for p in (0.001, 0.2, 0.7, 0.99):
            assert t_cdf(t_ppf(p, df), df) == pytest.approx(p, rel=1e-9)
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-12)  # polynomial closed form


def test_paired_comparison_matches_hand_computation():
    # differences 2, 1, 3: mean 2, sample std 1, se 1/sqrt(3), t = 2 sqrt(3), df = 2
    result = paired_comparison([72.0, 73.0, 74.5], [70.0, 72.0, 71.5])
    t = 2 * math.sqrt(3)
    assert (result.n, result.mean_diff, result.std_diff) == (3, pytest.approx(2.0), pytest.approx(1.0))
    assert result.t == pytest.approx(t)
    half = 4.302652729 / math.sqrt(3)
    assert result.ci_low == pytest.approx(2 - half, abs=1e-8) and result.ci_high == pytest.approx(2 + half, abs=1e-8)
    assert result.p_value == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-9)  # df=2 closed form: 0.0742
    assert not result.beyond_noise and result.verdict("ICKD+KD", "KD") == "no difference beyond seed noise"
    # MDD at 80 % power: (t_{0.975,2} + t_{0.8,2}) s / sqrt(n); df = 2 has t_p = (2p-1)/sqrt(2p(1-p)).
    t80 = 0.6 / math.sqrt(2 * 0.8 * 0.2)
    assert result.mdd() == pytest.approx((4.302652729 + t80) / math.sqrt(3), rel=1e-8)
    assert result.mdd(power=0.5) == pytest.approx(half, rel=1e-8)  # t_{0.5} = 0: the CI's half-width

    clear = paired_comparison([72.0, 73.0, 74.0, 73.5, 72.5], [70.0, 71.2, 71.9, 71.4, 70.6])
    assert clear.ci_low > 0 and clear.verdict("A", "B") == "A > B beyond seed noise"
    worse = paired_comparison([70.0, 71.0, 72.0], [71.0, 72.1, 72.9])
    assert worse.verdict("A", "B") == "A < B beyond seed noise"


def test_paired_comparison_degenerate_cases():
    one = paired_comparison([71.0], [70.0])
    assert (one.std_diff, one.ci_low, one.p_value) == (None, None, None)
    assert "too few seeds" in one.verdict()
    same = paired_comparison([71.0, 72.0], [70.0, 71.0])  # identical differences: exact gain
    assert (same.std_diff, same.ci_low, same.ci_high, same.p_value) == (0.0, 1.0, 1.0, 0.0)
    assert one.mdd() is None and same.mdd() == 0.0
    with pytest.raises(ValueError, match="equally long"):
        paired_comparison([1.0, 2.0], [1.0])


def test_compare_pairs_runs_by_seed(tmp_path):
    for seed, (kd, ickd) in enumerate([(70.0, 72.0), (71.0, 72.0), (72.0, 75.0)]):
        write_summary(tmp_path, "kd", seed=seed, best_top1=kd)
        write_summary(tmp_path, "ickd", seed=seed, method="ICKD+KD", best_top1=ickd)
    write_summary(tmp_path, "ickd", seed=5, method="ICKD+KD", best_top1=99.0)  # no KD partner
    board = aggregate(load_summaries([str(tmp_path)])[0])
    (result,) = compare(board, "ICKD+KD", "KD")
    assert result.seeds == (0, 1, 2) and "unpaired seeds left out: [5]" in result.note
    assert result.result.mean_diff == pytest.approx(2.0) and result.result.std_diff == pytest.approx(1.0)
    with pytest.raises(KeyError, match="no column 'DKD'"):
        compare(board, "DKD", "KD")


# -- command line and plot ---------------------------------------------------------------
def test_leaderboard_cli_csv_plot_and_compare(runs, tmp_path, capsys):
    leaderboard = load_tool("leaderboard")
    write_summary(runs, "kd,res32x4_res8x4", seed=9, complete=False)
    out_csv, out_png = tmp_path / "board.csv", tmp_path / "board.png"
    assert leaderboard.main([str(runs), "--format", "csv", "--output", str(out_csv), "--plot", str(out_png)]) == 0
    err = capsys.readouterr().err
    assert "warning: skipped" in err and "incomplete run" in err
    rows = {row["dataset"]: row for row in _csv_rows(out_csv.read_text())}
    assert rows["cifar100"]["KD"] == "71.00 ± 1.00 (3)"

    data = out_png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100

    assert leaderboard.main([str(runs), "--compare", "ICKD+KD", "KD", "--compare-ickd"]) == 0
    text = capsys.readouterr().out
    # diffs 2, 2, 2.5: mean 2.1667, std 0.2887
    assert "| cifar100 | resnet32x4 | resnet8x4 | 3 | +2.17 | 0.29 |" in text
    assert "ICKD+KD > KD beyond seed noise" in text
    assert text.count("## ICKD+KD vs KD") == 1  # --compare-ickd does not repeat an explicit pair

    assert leaderboard.main([str(runs), "--compare", "ICKD+KD", "DKD"]) == 2
    assert "no column 'DKD'" in capsys.readouterr().err
    assert leaderboard.main([str(tmp_path / "missing")]) == 2


def test_online_ickd_is_compared_with_dml_not_offline_kd(tmp_path):
    for method in ("KD", "DML", "ICKD(online)+KD", "ICKD+KD"):
        write_summary(tmp_path, method, method=method)
    board = aggregate(load_summaries([str(tmp_path)])[0])
    assert sorted(ickd_baselines(board)) == [("ICKD(online)+KD", "DML"), ("ICKD+KD", "KD")]
    assert board.columns == ["KD", "ICKD+KD", "ICKD(online)+KD", "DML"]  # the offline paradigm first


def test_ic_kd_all_is_its_own_column_beside_ickd_and_compared_with_its_base(tmp_path):
    from ickd_plugin import get_ickd_defaults
    from kdharness.config import get_cfg_defaults
    from kdharness.engine.trainer import method_name

    cfg = get_cfg_defaults()
    cfg.DISTILLER.TYPE, cfg.ICKD = "ICKD", get_ickd_defaults()
    assert method_name(cfg) == "ICKD+KD"
    cfg.ICKD.ALL_SAME_CLASS = True
    assert method_name(cfg) == "IC-KD-all+KD"
    cfg.ICKD.PARADIGM = "online"
    assert method_name(cfg) == "IC-KD-all(online)+KD"
    for method in ("IC-KD-all+KD", "KD", "ICKD+KD", "DKD", "IC-KD-all(online)+KD", "DML"):
        write_summary(tmp_path, method, method=method)
    board = aggregate(load_summaries([str(tmp_path)])[0])
    order = [board.columns.index(name) for name in ("KD", "ICKD+KD", "IC-KD-all+KD", "DKD")]
    assert order == sorted(order), board.columns
    assert sorted(ickd_baselines(board)) == [("IC-KD-all(online)+KD", "DML"), ("IC-KD-all+KD", "KD"), ("ICKD+KD", "KD")]


# -- cost and diagnostics views ---------------------------------------------------------------
def test_cost_table_gives_median_and_total_wall_time_per_cell(tmp_path, capsys):
    for seed, seconds in enumerate([60.0, 120.0, 600.0]):  # median 2 min, total 13 min
        write_summary(tmp_path, "kd", seed=seed, wall_time_s=seconds)
    write_summary(tmp_path, "ickd", seed=0, method="ICKD+KD", wall_time_s=96.0)
    write_summary(tmp_path, "ickd", seed=1, method="ICKD+KD")  # records no wall time
    write_summary(tmp_path, "teacher", seed=0, method="vanilla", teacher="", student="resnet32x4", wall_time_s=3600.0)
    write_summary(tmp_path, "kd", seed=9, complete=False, wall_time_s=9999.0)  # not a result: warned, not counted
    assert load_tool("leaderboard").main([str(tmp_path), "--cost"]) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "incomplete run" in captured.err
    assert "| cifar100 | – | resnet32x4 | teacher | 1 | 60.0 | 60 |" in text
    assert "| cifar100 | resnet32x4 | resnet8x4 | KD | 3 | 2.0 | 13 |" in text
    assert "| cifar100 | resnet32x4 | resnet8x4 | ICKD+KD | 1 | 1.6 | 2 |" in text
    assert "| all |  |  |  | 5 |  | 75 |" in text  # 3600 + 780 + 96 s = 74.6 min
    assert "Total: 5 runs, 1.2 h of wall time" in text and "1 run(s) record no wall time" in text


def test_diagnostics_table_averages_the_last_epoch_per_cell(tmp_path, capsys):
    for seed, (pos, inside) in enumerate([(0.9, 0.5), (0.7, 1.0)]):
        history = [{"epoch": 1, "diagnostics": {"pos_sim": 0.1}}, {"epoch": 2, "diagnostics": {"pos_sim": pos, "nicd_inside_margin": inside}}]
        write_summary(tmp_path, "ickd", seed=seed, method="ICKD+KD", history=history)
    write_summary(tmp_path, "kd", seed=0)  # logs none: no row
    assert load_tool("leaderboard").main([str(tmp_path), "--diagnostics"]) == 0
    text = capsys.readouterr().out
    assert "| Dataset | Teacher | Student | Method | n | pos_sim | nicd_inside_margin |" in text
    assert "| cifar100 | resnet32x4 | resnet8x4 | ICKD+KD | 2 | 0.800 | 0.750 |" in text
    assert "| KD |" not in text


def test_fit_table_gives_training_image_and_test_scores_at_the_last_evaluation(tmp_path, capsys):
    # two KD runs evaluated on their training images (LOG.EVAL_TRAIN_SET); the last evaluation counts
    for seed, (train, test) in enumerate([(92.0, 86.0), (94.0, 87.0)]):
        history = [{"epoch": 1, "test_acc": 50.0, "train_eval_acc": 55.0}, {"epoch": 2, "test_acc": test, "train_eval_acc": train}]
        write_summary(tmp_path, "kd", seed=seed, history=history)
    write_summary(tmp_path, "vanilla", seed=0, method="vanilla", history=[{"epoch": 2, "test_acc": 80.0}])  # none: no row
    assert load_tool("leaderboard").main([str(tmp_path), "--fit"]) == 0
    text = capsys.readouterr().out
    assert "| Dataset | Teacher | Student | Method | n | training images | test | gap |" in text
    # means 93.00 and 86.50, sample std sqrt(2) = 1.41 and sqrt(0.5) = 0.71, gap 6.50
    assert "| cifar100 | resnet32x4 | resnet8x4 | KD | 2 | 93.00 ± 1.41 | 86.50 ± 0.71 | 6.50 |" in text
    assert "| vanilla |" not in text


def test_views_exclude_each_other(tmp_path, capsys):
    write_summary(tmp_path, "kd")
    with pytest.raises(SystemExit):
        load_tool("leaderboard").main([str(tmp_path), "--cost", "--diagnostics"])
    assert "give one" in capsys.readouterr().err
