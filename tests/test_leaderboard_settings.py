"""Leaderboard cells and comparisons never mix runs trained with different settings.

Each summary below carries the config its run was trained with (as `BaseTrainer.write_summary`
stores it: the YAML dump), so what differs between runs is exactly what the test says.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kdharness.results import aggregate, compare, ickd_baselines, load_summaries
from kdharness.results.settings import column_labels, settings_from_config, shared_settings
from tests.test_results import load_tool

BASE_CONFIG = {
    "EXPERIMENT": {"PROJECT": "p", "NAME": "", "TAG": "t", "SEED": 0},
    "DATASET": {"TYPE": "fashion_mnist", "ROOT": "/data", "NUM_WORKERS": 2, "TRAIN_SUBSET": 4000},
    "DISTILLER": {"TYPE": "KD", "TEACHER": "resnet14", "STUDENT": "resnet8", "TEACHER_WEIGHTS": "a/teacher"},
    "SOLVER": {"EPOCHS": 3, "LR": 0.05, "BATCH_SIZE": 64, "TRAINER": "base", "LABEL_SMOOTHING": 0.0},
    "LOG": {"PREFIX": "./output", "TENSORBOARD_FREQ": 50},
    "KD": {"TEMPERATURE": 4},
    "ICKD": {"K": 8, "BETA1": 0.5, "BASE": "KD", "SIMILARITY": "cosine"},
}


def _config(**overrides) -> dict:
    config = json.loads(json.dumps(BASE_CONFIG))
    for dotted, value in overrides.items():
        node = config
        *path, last = dotted.split("__")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return config


def run(root: Path, name: str, method: str, seed: int, top1: float, dataset: str = "fashion_mnist", **overrides) -> None:
    """A complete run's summary.json; `overrides` use ``NODE__KEY`` for ``NODE.KEY``."""
    config = _config(**overrides)
    config["EXPERIMENT"]["SEED"] = seed
    config["DATASET"]["TYPE"] = dataset
    data = {
        "complete": True, "experiment": f"{name},EXPERIMENT.SEED:{seed}", "dataset": dataset,
        "distiller": config["DISTILLER"]["TYPE"], "method": method, "teacher": "resnet14", "student": "resnet8",
        "seed": seed, "epochs": config["SOLVER"]["EPOCHS"], "best_top1": top1, "last_top1": top1,
        "history": [{"epoch": 1}], "config": yaml.safe_dump(config), "wall_time_s": 60.0,
    }
    folder = root / config["EXPERIMENT"]["PROJECT"] / data["experiment"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(data))


def board_of(root: Path):
    summaries, warnings = load_summaries([str(root)])
    assert warnings == []
    return aggregate(summaries)


@pytest.fixture()
def mixed_budgets(tmp_path: Path) -> Path:
    """The issue's case: a 3-epoch quickstart run of each method, then a 1-epoch sweep of KD."""
    run(tmp_path, "kd", "KD", 0, 71.6)
    run(tmp_path, "ickd_kd", "ICKD+KD", 0, 75.2, DISTILLER__TYPE="ICKD")
    run(tmp_path, "ickd_kd", "ICKD+KD", 1, 74.0, DISTILLER__TYPE="ICKD")
    run(tmp_path, "kd", "KD", 1, 72.6)
    run(tmp_path, "kd_sweep", "KD", 0, 50.0, SOLVER__EPOCHS=1)
    run(tmp_path, "kd_sweep", "KD", 1, 52.0, SOLVER__EPOCHS=1)
    return tmp_path


def test_mixed_budgets_are_separate_columns_never_one_average(mixed_budgets):
    board = board_of(mixed_budgets)
    row = board.rows[0]
    assert set(row.cells) == {"KD [SOLVER.EPOCHS=3]", "KD [SOLVER.EPOCHS=1]", "ICKD+KD"}
    assert row.cells["KD [SOLVER.EPOCHS=3]"].values == [71.6, 72.6]
    assert row.cells["KD [SOLVER.EPOCHS=1]"].values == [50.0, 52.0]
    assert any("KD runs" not in w and "different settings" in w and "KD [SOLVER.EPOCHS=1]" in w for w in board.warnings)
    # columns stay in method order: KD's groups together, then ICKD+KD
    assert board.columns == ["KD [SOLVER.EPOCHS=1]", "KD [SOLVER.EPOCHS=3]", "ICKD+KD"]


def test_compare_pairs_only_the_group_trained_like_the_other_side(mixed_budgets):
    board = board_of(mixed_budgets)
    (result,) = compare(board, "ICKD+KD", "KD")
    assert result.seeds == (0, 1)
    assert result.result.mean_diff == pytest.approx(((75.2 - 71.6) + (74.0 - 72.6)) / 2)
    assert "'KD [SOLVER.EPOCHS=3]'" in result.note


def test_compare_refuses_runs_trained_differently_naming_the_keys(mixed_budgets):
    board = board_of(mixed_budgets)
    (result,) = compare(board, "ICKD+KD", "KD [SOLVER.EPOCHS=1]")
    assert result.result is None
    assert "SOLVER.EPOCHS 3 in ICKD+KD, 1 in KD [SOLVER.EPOCHS=1]" in result.note


def test_leaderboard_tool_on_mixed_budgets(mixed_budgets, capsys):
    leaderboard = load_tool("leaderboard")
    assert leaderboard.main([str(mixed_budgets), "--no-reference", "--compare", "ICKD+KD", "KD"]) == 0
    out = capsys.readouterr()
    assert "| 2 | +2.50 |" in out.out  # n and the mean difference of the 3-epoch pair only
    assert leaderboard.main([str(mixed_budgets), "--no-reference", "--cost"]) == 0
    cost = capsys.readouterr().out
    assert "| KD [SOLVER.EPOCHS=1] | 2 |" in cost and "| KD [SOLVER.EPOCHS=3] | 2 |" in cost


def test_mixed_ickd_values_label_each_group_by_what_departs_from_the_centre(tmp_path):
    common = {"DISTILLER__TYPE": "ICKD"}
    for seed in (0, 1):
        run(tmp_path, "ickd_kd", "ICKD+KD", seed, 75.0 + seed, **common)
        run(tmp_path, "ickd_kd_k32", "ICKD+KD", seed, 74.0 + seed, ICKD__K=32, **common)
        run(tmp_path, "ickd_kd_b1", "ICKD+KD", seed, 73.0 + seed, ICKD__BETA1=1.0, **common)
        run(tmp_path, "kd", "KD", seed, 72.0 + seed)
    board = board_of(tmp_path)
    cells = board.rows[0].cells
    assert cells["ICKD+KD"].values == [75.0, 76.0]
    assert cells["ICKD+KD [ICKD.K=32]"].values == [74.0, 75.0]
    assert cells["ICKD+KD [ICKD.BETA1=1.0]"].values == [73.0, 74.0]
    # every ICKD column has KD as its baseline, split or not
    assert ("ICKD+KD [ICKD.K=32]", "KD") in ickd_baselines(board)
    (result,) = compare(board, "ICKD+KD [ICKD.K=32]", "KD")
    assert result.result.mean_diff == pytest.approx(2.0)


def test_two_groups_name_their_values_and_an_ambiguous_comparison_is_refused(tmp_path):
    for seed in (0, 1):
        run(tmp_path, "a", "ICKD+KD", seed, 75.0, DISTILLER__TYPE="ICKD")
        run(tmp_path, "b", "ICKD+KD", seed, 76.0, DISTILLER__TYPE="ICKD", ICKD__SIMILARITY="centered")
        run(tmp_path, "kd", "KD", seed, 72.0)
    board = board_of(tmp_path)
    assert set(board.rows[0].cells) == {"ICKD+KD [ICKD.SIMILARITY=cosine]", "ICKD+KD [ICKD.SIMILARITY=centered]", "KD"}
    (result,) = compare(board, "ICKD+KD", "KD")
    assert result.result is None and "ambiguous" in result.note
    (result,) = compare(board, "ICKD+KD [ICKD.SIMILARITY=centered]", "ICKD+KD [ICKD.SIMILARITY=cosine]")
    assert result.result.mean_diff == pytest.approx(1.0)


def test_mixed_datasets_and_subsets_never_share_a_cell(tmp_path):
    run(tmp_path, "kd", "KD", 0, 80.0)
    run(tmp_path, "kd_c", "KD", 0, 60.0, dataset="cifar100")
    run(tmp_path, "kd_small", "KD", 1, 70.0, DATASET__TRAIN_SUBSET=1000)
    board = board_of(tmp_path)
    by_dataset = {row.dataset: row for row in board.rows}
    assert set(by_dataset) == {"fashion_mnist", "cifar100"}
    assert by_dataset["cifar100"].cells["KD"].values == [60.0]
    assert set(by_dataset["fashion_mnist"].cells) == {"KD [DATASET.TRAIN_SUBSET=4000]", "KD [DATASET.TRAIN_SUBSET=1000]"}


def test_non_training_keys_and_keys_only_one_run_knows_do_not_split(tmp_path):
    run(tmp_path, "kd", "KD", 0, 70.0)
    run(tmp_path, "kd", "KD", 1, 72.0, LOG__PREFIX="/elsewhere", DATASET__NUM_WORKERS=8, DATASET__ROOT="/other",
        DISTILLER__TEACHER_WEIGHTS="b/teacher", EXPERIMENT__PROJECT="q", LOG__TENSORBOARD_FREQ=10)
    old = _config()
    del old["SOLVER"]["LABEL_SMOOTHING"]  # a run from before the key existed
    run(tmp_path, "kd_old", "KD", 2, 74.0, SOLVER={k: v for k, v in old["SOLVER"].items()})
    board = board_of(tmp_path)
    assert board.rows[0].cells["KD"].values == [70.0, 72.0, 74.0]
    assert not any("different settings" in w for w in board.warnings)


def test_settings_drop_seed_and_bookkeeping_and_shared_settings_drop_method_keys():
    settings = settings_from_config(yaml.safe_dump(_config(SOLVER__LABEL_SMOOTHING=0.1)))
    assert "EXPERIMENT.SEED" not in settings and "LOG.PREFIX" not in settings and "DATASET.ROOT" not in settings
    assert settings["SOLVER.EPOCHS"] == 3 and settings["ICKD.K"] == 8
    shared = shared_settings(settings)
    assert "ICKD.K" not in shared and "KD.TEMPERATURE" not in shared and "DISTILLER.TYPE" not in shared
    assert "SOLVER.LABEL_SMOOTHING" not in shared
    assert shared["SOLVER.EPOCHS"] == 3 and shared["DATASET.TRAIN_SUBSET"] == 4000


def test_column_labels():
    a, b, c = {"K": 8, "B": 1}, {"K": 32, "B": 1}, {"K": 8, "B": 2}
    assert column_labels("M", [a, b, c]) == ["M", "M [K=32]", "M [B=2]"]
    assert column_labels("M", [a, b]) == ["M [K=8]", "M [K=32]"]


def test_a_run_from_before_a_key_existed_joins_the_group_of_its_default(tmp_path, capsys):
    # What the converged study met: ICKD.SIMILARITY was added while its cosine runs went on, so
    # some lack the key; without the defaults they matched the centred group as well.
    old = _config(DISTILLER__TYPE="ICKD")
    del old["ICKD"]["SIMILARITY"]
    for seed in (0, 1):
        run(tmp_path, "ickd_kd", "ICKD+KD", seed, 80.0 + seed, ICKD=dict(old["ICKD"]), DISTILLER__TYPE="ICKD")
    run(tmp_path, "ickd_kd", "ICKD+KD", 2, 82.0, DISTILLER__TYPE="ICKD")
    for seed in (0, 1, 2):
        run(tmp_path, "ickd_kd_centered", "ICKD+KD", seed, 90.0 + seed, ICKD__SIMILARITY="centered", DISTILLER__TYPE="ICKD")
    summaries, _ = load_summaries([str(tmp_path)], defaults={"ICKD.SIMILARITY": "cosine"})
    cells = aggregate(summaries).rows[0].cells
    assert {label: cell.values for label, cell in cells.items()} == {
        "ICKD+KD [ICKD.SIMILARITY=centered]": [90.0, 91.0, 92.0], "ICKD+KD [ICKD.SIMILARITY=cosine]": [80.0, 81.0, 82.0]}
    # the tool passes today's defaults
    leaderboard = load_tool("leaderboard")
    assert leaderboard.main([str(tmp_path), "--no-reference"]) == 0
    assert "81.00 ± 1.00 (3)" in capsys.readouterr().out
