"""PICD / NICD / mutual-KD values against arithmetic written out by hand (3 classes, 1-2 samples).

The losses compute in float32 and the hand values are exact, so each comparison allows
float32's rounding bound for the logits involved (tests/float_tolerance.py), not a fixed 1e-6.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from float_tolerance import log_softmax_kl_atol, sum_atol
from ickd_plugin.losses import (
    aggregate_context_logits,
    context_weights,
    kl_per_sample,
    mutual_kd_loss,
    nicd_loss,
    picd_loss,
    warmup_factor,
)

E = math.e

# Float values against float64 references: run again on a second kernel path by scripts/test.sh.
pytestmark = pytest.mark.numerics


def test_context_weights_softmax_over_similarity_over_tau() -> None:
    # S = [0.2, 0.1], tau = 0.1 -> softmax([2, 1]) = [e^2, e] / (e^2 + e) = [e/(e+1), 1/(e+1)]
    w = context_weights(torch.tensor([[0.2, 0.1]]), tau=0.1)
    assert torch.allclose(w, torch.tensor([[E / (E + 1), 1 / (E + 1)]]))
    # a padded (-inf) positive gets weight exactly 0
    w = context_weights(torch.tensor([[0.2, float("-inf"), 0.1]]), tau=0.1)
    assert w[0, 1] == 0 and torch.allclose(w[0, [0, 2]], torch.tensor([E / (E + 1), 1 / (E + 1)]))


def test_aggregating_features_equals_aggregating_logits() -> None:
    torch.manual_seed(0)
    classifier = torch.nn.Linear(5, 3)
    features = torch.randn(2, 4, 5)
    weights = torch.softmax(torch.randn(2, 4), dim=1)
    per_positive_logits = classifier(features)  # [2, 4, 3]
    expected = (weights[..., None] * per_positive_logits).sum(1)  # z_bar = sum_j w_j z_j
    got = aggregate_context_logits(weights, features, classifier.weight, classifier.bias)
    # both sides are float32 sums of 4 * 5 products plus the bias, in different orders
    abs_sum = (weights[..., None] * features.abs()).sum(1) @ classifier.weight.abs().t() + classifier.bias.abs()
    assert torch.allclose(got, expected, rtol=0.0, atol=2 * sum_atol(abs_sum.max().item(), n_terms=4 * 5 + 1))


def test_picd_by_hand() -> None:
    # positives z1 = [2, 0, 0], z2 = [0, 2, 0] with weights w = [e/(e+1), 1/(e+1)]
    # z_bar = [2e/(e+1), 2/(e+1), 0] = [1.46212, 0.53788, 0]
    # own teacher logits z_t = [0, 0, 2]; beta1 = 0.5 -> m = [0.73106, 0.26894, 1.0]
    w1, w2 = E / (E + 1), 1 / (E + 1)
    z_bar = torch.tensor([[2 * w1, 2 * w2, 0.0]], requires_grad=True)
    m = [0.5 * 2 * w1, 0.5 * 2 * w2, 1.0]
    # student logits all 0 -> p_s uniform: KL(p_m || u) = sum_c p_m,c log p_m,c + log 3
    def kl_to_uniform(logits: list[float]) -> float:
        z = sum(math.exp(x) for x in logits)
        p = [math.exp(x) / z for x in logits]
        return sum(pc * math.log(pc) for pc in p) + math.log(3)

    # T = 1: p_m = [0.34031, 0.21438, 0.44532], KL = 0.041402
    expected_t1 = kl_to_uniform(m)
    assert expected_t1 == pytest.approx(0.0414016, abs=1e-6)
    student = torch.zeros(1, 3, requires_grad=True)
    got = picd_loss(student, z_bar, torch.tensor([[0.0, 0.0, 2.0]]), beta1=0.5, temperature=1.0)
    # every logit entering a softmax is at most 2 in size (z_bar, z_t, m, the student's zeros)
    assert got.item() == pytest.approx(expected_t1, abs=log_softmax_kl_atol(2.0, num_classes=3))
    # T = 2: T^2 * KL(softmax(m / 2) || u) = 4 * 0.010947 = 0.043789
    got = picd_loss(student, z_bar, torch.tensor([[0.0, 0.0, 2.0]]), beta1=0.5, temperature=2.0)
    atol_t2 = log_softmax_kl_atol(1.0, num_classes=3, scale=2.0**2)
    assert got.item() == pytest.approx(4 * kl_to_uniform([x / 2 for x in m]), abs=atol_t2)
    assert got.item() == pytest.approx(0.0437885, abs=atol_t2 + 5e-8)  # + the constant's own rounding
    # beta1 = 1: in-context only (the own teacher logits drop out)
    got = picd_loss(student, z_bar, torch.tensor([[9.0, -9.0, 5.0]]), beta1=1.0, temperature=1.0)
    assert got.item() == pytest.approx(kl_to_uniform([2 * w1, 2 * w2, 0.0]), abs=log_softmax_kl_atol(9.0, num_classes=3))
    # the target is a constant: gradient reaches the student only
    got.backward()
    assert student.grad is not None and z_bar.grad is None


def test_picd_mean_over_two_samples() -> None:
    student = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    context = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    # sample 1 already matches (KL 0); sample 0: KL(softmax([1,0,0]) || u) = (e/(e+2)) * 1 - log(e+2) + log 3
    kl0 = E / (E + 2) - math.log(E + 2) + math.log(3)
    got = picd_loss(student, context, context, beta1=0.5, temperature=1.0)
    assert got.item() == pytest.approx(kl0 / 2, abs=log_softmax_kl_atol(1.0, num_classes=3, batch=2))


def test_nicd_by_hand() -> None:
    # student z_s = [1, 0, 0]; T = 1; beta2 = 1
    # negative a: z = [0, 1, 0]: p_a = [1, e, 1]/(e+2), p_s = [e, 1, 1]/(e+2)
    #   d = (1/(e+2)) log(1/e) + (e/(e+2)) log(e) + 0 = (e - 1)/(e + 2) = 0.36418 -> hinge 0.63582
    # negative b: z = [1, 0, 0] = the student: d = 0 -> hinge 1
    # negative c: z = [0, 9, 0]: d > beta2 -> hinge 0 (and no gradient)
    student = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    negatives = torch.tensor([[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 9.0, 0.0]]])
    d_a = (E - 1) / (E + 2)
    assert kl_per_sample(negatives[:, 0], student, 1.0).item() == pytest.approx(d_a, abs=log_softmax_kl_atol(1.0, num_classes=3))
    got = nicd_loss(student, negatives, beta2=1.0, temperature=1.0)
    assert got.item() == pytest.approx(((1 - d_a) + 1 + 0) / 3, abs=log_softmax_kl_atol(9.0, num_classes=3, batch=3))
    # bounded by beta2 whatever the logits
    far = nicd_loss(torch.randn(4, 3) * 50, torch.randn(4, 5, 3) * 50, beta2=0.7, temperature=4.0)
    assert 0.0 <= far.item() <= 0.7
    # a student already beta2 away from every negative gets no gradient
    only_far = nicd_loss(student, negatives[:, 2:], beta2=1.0, temperature=1.0)
    only_far.backward()
    assert only_far.item() == 0.0 and torch.all(student.grad == 0)


def test_nicd_pushes_the_student_away() -> None:
    student = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    negative = torch.tensor([[[0.0, 1.0, 0.0]]])
    before = kl_per_sample(negative[:, 0], student, 1.0).item()
    nicd_loss(student, negative, beta2=1.0, temperature=1.0).backward()
    with torch.no_grad():
        moved = student - 0.1 * student.grad
    assert kl_per_sample(negative[:, 0], moved, 1.0).item() > before


def test_mutual_kd_by_hand_and_gradient_direction() -> None:
    # teacher z_t = [0, 0, 0] (uniform), student z_s = [1, 0, 0]: T^2 KL(p_s || u) with T = 1
    teacher = torch.zeros(1, 3, requires_grad=True)
    student = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    got = mutual_kd_loss(teacher, student, temperature=1.0)
    atol = log_softmax_kl_atol(1.0, num_classes=3)
    assert got.item() == pytest.approx(E / (E + 2) - math.log(E + 2) + math.log(3), abs=atol)
    got.backward()
    assert teacher.grad is not None and student.grad is None
    ref = F.kl_div(F.log_softmax(teacher, 1), F.softmax(student.detach(), 1), reduction="batchmean")
    assert got.item() == pytest.approx(ref.item(), abs=2 * atol)  # two float32 computations


def test_warmup_factor() -> None:
    assert warmup_factor(5, 20) == 0.25 and warmup_factor(40, 20) == 1.0 and warmup_factor(None, 0) == 1.0
    with pytest.raises(ValueError, match="ICKD.WARMUP"):
        warmup_factor(None, 20)
