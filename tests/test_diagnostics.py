"""ICKD's per-step diagnostics and the host's logging of them.

(a) the pure functions on hand-made numbers; (b) an ICKD step's diagnostics against a
brute-force recomputation (loops over samples, no `retrieve`); (c) the host's
`DiagnosticsLog` (means, checkpoint state, nothing for a distiller without diagnostics);
(d) a real run: tensorboard tags and the history entries of summary.json.
"""
from __future__ import annotations

import glob
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ickd_plugin.diagnostics import NAMES, as_floats, context_statistics, step_diagnostics
from ickd_plugin.features import ClassifierTap
from kdharness.engine.diagnostics import DiagnosticsLog
from test_ickd_distiller import first_batch, make_ickd, make_trainer

# float32 rounding of a handful of O(1) values: a few ulps of 1, with margin
TOL = 1e-6


# -- (a) pure functions -----------------------------------------------------------------
def test_context_statistics_hand_made():
    pos_sim = torch.tensor([[0.9, 0.7], [0.5, 0.3]])
    neg_sim = torch.tensor([[0.2, -0.4], [0.1, 0.1]])
    student = torch.zeros(2, 2)  # uniform over 2 classes at any temperature
    # negatives: identical to the student (KL 0) or almost one-hot (KL -> log 2 = 0.693)
    negatives = torch.tensor([[[0.0, 0.0], [60.0, -60.0]], [[0.0, 0.0], [-60.0, 60.0]]])
    weights = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    stats = context_statistics(pos_sim, None, neg_sim, student, negatives, beta2=0.5, temperature=1.0, weights=weights)
    # spread: each row's two positives are 0.1 from their mean; largest weights 0.75 and 0.5
    assert stats.tolist() == pytest.approx([0.6, 0.0, 0.5, 0.1, 0.625], abs=TOL)
    # a margin above log 2 puts every pair inside; margin 0 none
    wide = context_statistics(pos_sim, None, neg_sim, student, negatives, beta2=0.7, temperature=1.0, weights=weights)
    assert wide[2].item() == 1.0
    none = context_statistics(pos_sim, None, neg_sim, student, negatives, beta2=0.0, temperature=1.0, weights=weights)
    assert none[2].item() == 0.0


def test_context_statistics_ickd_all_uses_only_real_positives():
    inf = float("-inf")
    pos_sim = torch.tensor([[0.8, inf, 0.4], [inf, 0.2, inf]])  # padding and self are -inf
    mask = torch.tensor([[True, False, True], [False, True, False]])
    weights = torch.tensor([[0.6, 0.0, 0.4], [0.0, 1.0, 0.0]])
    stats = context_statistics(pos_sim, mask, torch.zeros(2, 1), torch.zeros(2, 3), torch.zeros(2, 1, 3), 1.0, 4.0,
                               weights=weights)
    assert stats[0].item() == pytest.approx((0.8 + 0.4 + 0.2) / 3, abs=TOL)
    # spread over the real positives only: 0.2 for (0.8, 0.4), 0 for the single 0.2
    assert stats[3].item() == pytest.approx(0.1, abs=TOL)
    assert stats[4].item() == pytest.approx(0.8, abs=TOL)


def test_step_diagnostics_ratios_to_the_base_sum():
    stats = torch.tensor([0.6, 0.1, 0.25, 0.05, 0.5])
    values = step_diagnostics([torch.tensor(1.0), torch.tensor([2.0, 4.0])], torch.tensor(2.0), torch.tensor(0.1), stats)
    # base = 1 + mean(2, 4) = 4
    assert as_floats(values) == pytest.approx(
        {"picd_to_base": 0.5, "nicd_to_base": 0.025, "pos_sim": 0.6, "neg_sim": 0.1, "nicd_inside_margin": 0.25,
         "pos_sim_std": 0.05, "picd_max_weight": 0.5}, abs=TOL
    )
    assert as_floats(None) == {}


# -- (b) an ICKD step against brute force ------------------------------------------------
def _kl(target: torch.Tensor, student: torch.Tensor, t: float) -> float:
    p = F.softmax(target / t, dim=-1)
    return float((p * (F.log_softmax(target / t, dim=-1) - F.log_softmax(student / t, dim=-1))).sum())


@pytest.mark.parametrize("all_same_class", [False, True])
def test_ickd_step_diagnostics_match_brute_force(all_same_class):
    distiller = make_ickd(BASE="KD", K=2, N=3, BETA2=0.01, ALL_SAME_CLASS=all_same_class, PICD_WEIGHT=2.0)
    trainer = make_trainer(distiller)
    assert distiller.diagnostics() == {}
    distiller.trainer_hooks()[0].before_train(trainer)
    distiller.train()
    image, target, index = first_batch(trainer)
    teacher = distiller.teacher
    with torch.no_grad(), ClassifierTap(teacher.fc) as tap:
        teacher(image)  # the teacher is in eval mode: the same features the step will see
    query = tap.features
    logits_student, losses = distiller(image=image, target=target, index=index, epoch=1)
    got = distiller.diagnostics()
    assert list(got) == list(NAMES)

    bank, labels = distiller.bank.features, distiller.bank.labels
    row_of = distiller.bank.rows_for(index)
    pos_sims, neg_sims, inside, spreads, largest = [], [], [], [], []
    for i in range(image.shape[0]):
        sims = [F.cosine_similarity(query[i], bank[r], dim=0).item() for r in range(bank.shape[0])]
        same = [s for r, s in enumerate(sims) if labels[r] == target[i] and r != row_of[i]]
        other = sorted(((s, r) for r, s in enumerate(sims) if labels[r] != target[i]), key=lambda x: (-x[0], x[1]))[:3]
        mine = same if all_same_class else sorted(same, reverse=True)[:2]
        pos_sims += mine
        spreads.append(torch.tensor(mine).std(unbiased=False).item())
        largest.append(torch.softmax(torch.tensor(mine) / distiller.opts.tau, dim=0).max().item())
        neg_sims += [s for s, _ in other]
        for _, r in other:
            negative_logits = teacher.fc(bank[r]).detach()
            inside.append(_kl(negative_logits, logits_student[i].detach(), distiller.opts.temperature) < 0.01)
    base = (losses["loss_ce"] + losses["loss_kd"]).item()
    expected = {
        "picd_to_base": losses["loss_picd"].item() / base,
        "nicd_to_base": losses["loss_nicd"].item() / base,
        "pos_sim": sum(pos_sims) / len(pos_sims),
        "neg_sim": sum(neg_sims) / len(neg_sims),
        "nicd_inside_margin": sum(inside) / len(inside),
        "pos_sim_std": sum(spreads) / len(spreads),
        "picd_max_weight": sum(largest) / len(largest),
    }
    assert got == pytest.approx(expected, abs=1e-5)  # cosines of float32 features, summed over <= 36 terms
    assert 0.0 < got["nicd_inside_margin"] < 1.0  # the margin splits this case's pairs: the count is tested
    # the loss dict holds losses only: the trainer sums it
    assert set(losses) == {"loss_ce", "loss_kd", "loss_picd", "loss_nicd"}


# -- (c) the host's log ------------------------------------------------------------------
class FakeDistiller:
    def __init__(self) -> None:
        self.values = iter([{"a": 1.0, "b": 10.0}, {"a": 3.0, "b": 20.0}, {"a": 8.0, "b": 30.0}])

    def diagnostics(self) -> dict[str, float]:
        return next(self.values)


class FakeWriter:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))


def test_diagnostics_log_means_state_and_tensorboard():
    log = DiagnosticsLog(FakeDistiller())
    writer = FakeWriter()
    log.record()
    log.write_step(writer, 7)
    log.record()
    assert writer.scalars == [("diagnostics/a", 1.0, 7), ("diagnostics/b", 10.0, 7)]
    state = log.state_dict()  # a mid-epoch checkpoint after two steps
    log.record()
    assert log.history_entry() == {"diagnostics": {"a": 4.0, "b": 20.0}}

    resumed = DiagnosticsLog(FakeDistiller())
    resumed.load_state_dict(state)
    resumed._source = lambda: {"a": 8.0, "b": 30.0}  # the step after the checkpoint
    resumed.record()
    assert resumed.epoch_means() == log.epoch_means()
    resumed.write_epoch(writer, 2)
    assert writer.scalars[-2:] == [("diagnostics_epoch/a", 4.0, 2), ("diagnostics_epoch/b", 20.0, 2)]
    resumed.reset()
    assert resumed.history_entry() == {}


def test_diagnostics_log_ignores_a_distiller_without_diagnostics():
    log = DiagnosticsLog(object())
    log.record()
    writer = FakeWriter()
    log.write_step(writer, 1)
    assert writer.scalars == [] and log.history_entry() == {} and log.state_dict() == {}


# -- (d) a real run ----------------------------------------------------------------------
def test_ickd_run_logs_diagnostics_to_tensorboard_and_summary(tmp_path):
    from fixtures_data import write_fashion_mnist_fixture
    from harness_utils import REPO, run_config, write_teacher_checkpoint

    root = write_fashion_mnist_fixture(tmp_path / "data", n_train=60, n_test=20)
    teacher = write_teacher_checkpoint(tmp_path / "teacher.pth", "resnet8", "fashion_mnist", 10)
    opts = [
        "DATASET.ROOT", str(root), "DATASET.NUM_WORKERS", "0", "DATASET.TRAIN_SUBSET", "0",
        "DATASET.TEST.BATCH_SIZE", "20", "SOLVER.EPOCHS", "1", "SOLVER.BATCH_SIZE", "20",
        "LOG.PREFIX", str(tmp_path / "runs"), "LOG.TENSORBOARD_FREQ", "1", "DISTILLER.TEACHER", "resnet8",
        "DISTILLER.TEACHER_WEIGHTS", str(teacher), "ICKD.BANK.CACHE_DIR", str(tmp_path / "bank"),
        "ICKD.K", "2", "ICKD.N", "2",
    ]
    summary = run_config(REPO / "configs" / "fashion_mnist" / "ickd_kd" / "res14_res8.yaml", opts)
    on_disk = json.loads((Path(summary["log_path"]) / "summary.json").read_text())
    diagnostics = on_disk["history"][0]["diagnostics"]
    assert set(diagnostics) == set(NAMES)
    assert all(math.isfinite(v) for v in diagnostics.values())
    assert all(-1.0 - TOL <= diagnostics[name] <= 1.0 + TOL for name in ("pos_sim", "neg_sim"))
    assert 0.0 <= diagnostics["nicd_inside_margin"] <= 1.0 and diagnostics["picd_to_base"] > 0.0
    events = b"".join(Path(p).read_bytes() for p in glob.glob(str(Path(summary["log_path"]) / "train.events" / "*")))
    assert b"diagnostics/pos_sim" in events and b"diagnostics_epoch/nicd_inside_margin" in events
