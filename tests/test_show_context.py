"""The picture of ICKD's in-context samples: retrieval for display, the heatmap counts, the PNGs.

(a) a hand-made bank of unit vectors at known angles, so every neighbour, similarity, PICD
weight and heatmap count below is worked out by hand; (b) the grid renders one tile per
shown sample; (c) `tools/show_context.py` end to end on the Fashion-MNIST fixture.
"""
from __future__ import annotations

import math
import sys

import pytest
import torch

from ickd_plugin.context_figure import hard_negative_counts, query_contexts, render_context_grid, render_negative_heatmap
from ickd_plugin.memory_bank import MemoryBank

pytest.importorskip("matplotlib")
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

# row: angle (degrees) and class. cos(angle difference) is the similarity.
ANGLES = [0.0, 10.0, -20.0, 30.0, 40.0, 90.0, 100.0]
LABELS = [0, 0, 0, 1, 1, 2, 2]
TOL = 1e-6  # float32 cosines of unit vectors


def angle_bank() -> MemoryBank:
    radians = torch.tensor(ANGLES, dtype=torch.float64) * math.pi / 180
    features = torch.stack([radians.cos(), radians.sin()], dim=1).float()
    bank = MemoryBank()
    bank.fill(features, torch.tensor(LABELS), torch.arange(len(ANGLES)), num_classes=3, device="cpu")
    return bank


def cos_deg(degrees: float) -> float:
    return math.cos(math.radians(degrees))


def test_query_contexts_by_hand():
    (ctx,) = query_contexts(angle_bank(), torch.tensor([0]), k=2, n=2, tau=0.1)
    # row 0 at 0 deg: same class at 10 and -20 deg; nearest others at 30 and 40 deg
    assert ctx.pos_rows == [1, 2] and ctx.neg_rows == [3, 4] and ctx.neg_labels == [1, 1]
    assert ctx.pos_sim == pytest.approx([cos_deg(10), cos_deg(20)], abs=TOL)
    assert ctx.neg_sim == pytest.approx([cos_deg(30), cos_deg(40)], abs=TOL)
    w1 = 1.0 / (1.0 + math.exp((cos_deg(20) - cos_deg(10)) / 0.1))
    assert ctx.pos_weight == pytest.approx([w1, 1.0 - w1], abs=TOL)
    # IC-KD-all: every other same-class row, best first, weights over all of them; `show` trims
    (every,) = query_contexts(angle_bank(), torch.tensor([2]), k=1, n=1, tau=0.1, all_same_class=True, show=1)
    assert every.pos_rows == [0] and every.neg_rows == [3]
    w0 = 1.0 / (1.0 + math.exp((cos_deg(30) - cos_deg(20)) / 0.1))  # -20 deg: 0 deg is 20 away, 10 deg is 30
    assert every.pos_weight == pytest.approx([w0], abs=TOL)


def test_hard_negative_counts_by_hand():
    bank = angle_bank()
    # N = 1: rows 0,1,2 (class 0) -> row 3 (class 1); rows 3,4 -> row 1 (class 0); rows 5,6 -> row 4 (class 1)
    counts = hard_negative_counts(bank, torch.arange(7), n=1, num_classes=3, batch_size=3)
    assert counts.tolist() == [[0, 3, 0], [2, 0, 0], [0, 2, 0]]
    # N = 3 for row 4 (40 deg): rows 1 (30 away), 0 (40), 5 (50): two of class 0, one of class 2
    assert hard_negative_counts(bank, torch.tensor([4]), n=3, num_classes=3).tolist() == [[0, 0, 0], [2, 0, 1], [0, 0, 0]]


def test_grid_and_heatmap_render_one_tile_per_sample(tmp_path):
    bank = angle_bank()
    contexts = query_contexts(bank, torch.tensor([0, 4]), k=2, n=3, tau=0.1)

    def image_of(row: int) -> np.ndarray:  # a flat grey level per row
        return np.full((8, 8), 30 * row, dtype=np.uint8)

    path = tmp_path / "grid.png"
    figure = render_context_grid(contexts, image_of, ["a", "b", "c"], str(path), dpi=40)
    images = [ax for ax in figure.axes if ax.images]
    assert len(images) == 2 * (1 + 2 + 3)  # query + K positives + N negatives per row
    assert len(figure.axes) == 2 * (1 + 2 + 1 + 3)  # one blank separator column
    titles = [ax.get_title() for ax in images]
    assert titles[0] == "query\na" and titles[1] == f"s={cos_deg(10):.3f}\nw={contexts[0].pos_weight[0]:.2f}"
    assert titles[3] == f"s={cos_deg(30):.3f}\nb"
    with Image.open(path) as image:  # 6 tiles + a 0.3-tile gap of 1.25 in; 2 rows of 1.25 x 1.25 in + 0.5 in; 40 dpi
        assert image.size == (315, 145)

    heat = render_negative_heatmap(hard_negative_counts(bank, torch.arange(7), 1, 3), ["a", "b", "c"], str(tmp_path / "h.png"))
    shown = heat.axes[0].images[0].get_array()
    assert np.allclose(shown, [[0, 1, 0], [1, 0, 0], [0, 1, 0]])  # each row as fractions of its negatives
    assert sorted(t.get_text() for t in heat.axes[0].texts) == ["2", "2", "3"]
    assert (tmp_path / "h.png").stat().st_size > 0


def test_show_context_tool_on_the_fashion_fixture(tmp_path):
    from fixtures_data import write_fashion_mnist_fixture
    from harness_utils import REPO, write_teacher_checkpoint

    sys.path.insert(0, str(REPO / "tools"))
    try:
        import show_context
    finally:
        sys.path.pop(0)
    root = write_fashion_mnist_fixture(tmp_path / "data", n_train=60, n_test=10)  # 6 per class
    teacher = write_teacher_checkpoint(tmp_path / "teacher.pth", "resnet8", "fashion_mnist", 10)
    out = tmp_path / "ctx.png"
    argv = [
        "--cfg", str(REPO / "configs" / "fashion_mnist" / "ickd_kd" / "res14_res8.yaml"), "--out", str(out),
        "--queries", "3", "--device", "cpu", "--heatmap-queries", "0",
        "DATASET.ROOT", str(root), "DATASET.NUM_WORKERS", "0", "DATASET.TRAIN_SUBSET", "0",
        "DISTILLER.TEACHER", "resnet8", "DISTILLER.TEACHER_WEIGHTS", str(teacher),
        "ICKD.K", "4", "ICKD.N", "5", "ICKD.BANK.CACHE_DIR", str(tmp_path / "bank"),
    ]
    assert show_context.main(argv) == 0
    with Image.open(out) as image:  # 3 rows of 1 + 4 + 5 tiles and a 0.3-tile gap, 1.25 in each, at 100 dpi
        assert abs(image.size[0] - 10.3 * 1.25 * 100) <= 1
        assert abs(image.size[1] - (1.25 * 1.25 * 3 + 0.5) * 100) <= 1
    assert (tmp_path / "ctx_heatmap.png").stat().st_size > 0

    # a config without ICKD is refused with a message naming the key
    kd_cfg = str(REPO / "configs" / "fashion_mnist" / "kd" / "res14_res8.yaml")
    assert show_context.main(["--cfg", kd_cfg, "DATASET.ROOT", str(root)]) == 2
