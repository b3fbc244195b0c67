"""mdistiller's feature distillers FITNET, AT, NST, PKT, SP, RKD, KDSVD.

* Each pure loss against values derived by hand on tiny tensors (closed forms in the
  comments; float64 inputs, so the tolerances only cover float64 rounding).
* Each distiller: which features it uses, its loss weights, no dependence on the epoch
  (none of the seven has a warm-up), gradients to the student only, float32 under autocast.
* State dicts against mdistiller's, recorded by running mdistiller's own code
  (kdharness/reference/mdistiller_distiller_states/<METHOD>.json, "produced_by" says how),
  so a checkpoint trained by either harness loads in the other.
* Every method trains a few steps through the real path (config -> data -> trainer).
* With MDISTILLER_ROOT set to an mdistiller checkout: loss values of both on the same
  models, weights and batch (skipped otherwise).
"""
from __future__ import annotations

import importlib
import json
import math
import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kdharness.config import get_cfg_defaults
from kdharness.distillers import distiller_dict
from kdharness.distillers.at import AT, at_loss, at_stage_loss
from kdharness.distillers.fitnet import ConvReg, FitNet, fitnet_loss
from kdharness.distillers.kdsvd import KDSVD, align_to_teacher, kdsvd_loss, truncated_svd
from kdharness.distillers.nst import NST, nst_loss, nst_stage_loss
from kdharness.distillers.pkt import PKT, pkt_loss
from kdharness.distillers.rkd import RKD, rkd_loss
from kdharness.distillers.sp import SP, similarity_loss, sp_loss
from kdharness.models import create_model

REPO = Path(__file__).resolve().parents[1]
STATES_DIR = REPO / "kdharness" / "reference" / "mdistiller_distiller_states"
METHODS = ("FITNET", "AT", "NST", "PKT", "SP", "RKD", "KDSVD")
CLASSES = {"FITNET": FitNet, "AT": AT, "NST": NST, "PKT": PKT, "SP": SP, "RKD": RKD, "KDSVD": KDSVD}
SQRT2 = math.sqrt(2.0)


def _t(values, shape=None) -> torch.Tensor:
    x = torch.tensor(values, dtype=torch.float64)
    return x.reshape(shape) if shape is not None else x


def huber(x: float) -> float:
    """smooth-L1 with beta 1."""
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


# ------------------------------------------------------------------------------ registry, CFG


def test_registered_under_mdistiller_names():
    for name, cls in CLASSES.items():
        assert distiller_dict[name] is cls


# mdistiller/engine/cfg.py's defaults (facts, read from the snapshot).
MDISTILLER_DEFAULTS = {
    "FITNET.HINT_LAYER": 2, "FITNET.INPUT_SIZE": (32, 32), "FITNET.LOSS.CE_WEIGHT": 1.0, "FITNET.LOSS.FEAT_WEIGHT": 100.0,
    "AT.P": 2, "AT.LOSS.CE_WEIGHT": 1.0, "AT.LOSS.FEAT_WEIGHT": 1000.0,
    "NST.LOSS.CE_WEIGHT": 1.0, "NST.LOSS.FEAT_WEIGHT": 50.0,
    "PKT.LOSS.CE_WEIGHT": 1.0, "PKT.LOSS.FEAT_WEIGHT": 30000.0,
    "SP.LOSS.CE_WEIGHT": 1.0, "SP.LOSS.FEAT_WEIGHT": 3000.0,
    "RKD.DISTANCE_WEIGHT": 25, "RKD.ANGLE_WEIGHT": 50, "RKD.LOSS.CE_WEIGHT": 1.0, "RKD.LOSS.FEAT_WEIGHT": 1.0,
    "RKD.PDIST.EPSILON": 1e-12, "RKD.PDIST.SQUARED": False,
    "KDSVD.K": 1, "KDSVD.LOSS.CE_WEIGHT": 1.0, "KDSVD.LOSS.FEAT_WEIGHT": 1.0,
}


def test_cfg_nodes_have_mdistiller_keys_and_defaults():
    cfg = get_cfg_defaults()
    for dotted, value in MDISTILLER_DEFAULTS.items():
        node = cfg
        for part in dotted.split("."):
            node = node[part]
        assert node == value and type(node) is type(value), dotted
    # No keys beyond mdistiller's in these nodes: an mdistiller YAML and ours are interchangeable.
    def leaves(node, prefix):
        for key, value in node.items():
            yield from leaves(value, f"{prefix}.{key}") if isinstance(value, dict) else [f"{prefix}.{key}"]
    ours = {leaf for method in METHODS for leaf in leaves(cfg[method], method)}
    assert ours == set(MDISTILLER_DEFAULTS)


# ------------------------------------------------------------------------------ FitNet


@pytest.mark.parametrize(
    "s_shape, t_shape, kind, kernel, stride",
    [
        ((1, 4, 16, 16), (1, 6, 8, 8), nn.Conv2d, (3, 3), (2, 2)),  # student twice as large
        ((1, 4, 8, 8), (1, 6, 16, 16), nn.ConvTranspose2d, (4, 4), (2, 2)),  # half as large
        ((1, 4, 8, 8), (1, 6, 8, 8), nn.Conv2d, (1, 1), (1, 1)),  # same size: 1x1
        ((1, 4, 8, 8), (1, 6, 5, 5), nn.Conv2d, (4, 4), (1, 1)),  # larger: "valid" kernel absorbs it
    ],
)
def test_conv_reg_maps_student_shape_to_teacher_shape(s_shape, t_shape, kind, kernel, stride):
    reg = ConvReg(s_shape, t_shape)
    assert type(reg.conv) is kind and reg.conv.kernel_size == kernel and reg.conv.stride == stride
    out = reg(torch.randn(2, *s_shape[1:]))
    assert out.shape == (2, *t_shape[1:]) and (out >= 0).all()  # BN then ReLU


def test_conv_reg_rejects_smaller_student():
    with pytest.raises(ValueError, match="4x3x3.*6x8x8"):
        ConvReg((1, 4, 3, 3), (1, 6, 8, 8))


def test_fitnet_loss_hand_value():
    # Differences (1, -2, 0, 3): mean of squares = 14 / 4.
    assert fitnet_loss(_t([1.0, 0.0, 2.0, 3.0]), _t([0.0, 2.0, 2.0, 0.0])).item() == pytest.approx(3.5, rel=1e-12)
    with pytest.raises(ValueError, match="shape"):
        fitnet_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2))


# ------------------------------------------------------------------------------ AT

# Student stage (B=1, C=2, 2x2): channel 0 = [[1,0],[0,1]], channel 1 = 0.
#   mean_c f^2 = (1,0,0,1)/2 -> normalised (1,0,0,1)/sqrt2.
# Teacher (C=1, 4x4): top-left block (1,3,1,3), bottom-right block (0,2,0,2), rest 0.
#   Pooled to 2x2 FIRST: (2,0,0,1); squared (4,0,0,1) -> /sqrt17.  (Squaring before pooling
#   would give (5,0,0,2)/sqrt29: the order matters and is mdistiller's.)
#   loss = [(1/sqrt2 - 4/sqrt17)^2 + (1/sqrt2 - 1/sqrt17)^2] / 4  (mean over B*HW = 4).
AT_STUDENT = _t([1, 0, 0, 1, 0, 0, 0, 0], (1, 2, 2, 2))
AT_TEACHER = _t([1, 3, 0, 0, 1, 3, 0, 0, 0, 0, 0, 2, 0, 0, 0, 2], (1, 1, 4, 4))
AT_EXPECTED = ((1 / SQRT2 - 4 / math.sqrt(17)) ** 2 + (1 / SQRT2 - 1 / math.sqrt(17)) ** 2) / 4


def test_at_stage_loss_hand_value():
    assert at_stage_loss(AT_STUDENT, AT_TEACHER, 2).item() == pytest.approx(AT_EXPECTED, rel=1e-12)
    # Pooling applies to whichever side is larger: swapping the roles gives the same value.
    assert at_stage_loss(AT_TEACHER, AT_STUDENT, 2).item() == pytest.approx(AT_EXPECTED, rel=1e-12)
    # Scale invariance of the normalised maps.
    assert at_stage_loss(3 * AT_STUDENT, AT_TEACHER, 2).item() == pytest.approx(AT_EXPECTED, rel=1e-12)


def test_at_loss_sums_paired_stages():
    same = _t([1, 2, 3, 4], (1, 1, 2, 2))
    total = at_loss([AT_STUDENT, same, same], [AT_TEACHER, same], 2)  # zip: two pairs
    assert total.item() == pytest.approx(AT_EXPECTED, rel=1e-12)


# ------------------------------------------------------------------------------ NST

# B=1, maps of 1x2 positions. Student, one channel (3,4) -> s = (0.6, 0.8).
# Teacher, two channels: (1,1) -> t1 = (1,1)/sqrt2 and (5,0) -> t2 = (1,0).
#   k(t,t) over 2x2 pairs: (1 + 1/2 + 1/2 + 1)/4 = 3/4;  k(s,s) = 1;
#   k(s,t1) = (1.4/sqrt2)^2 = 0.98, k(s,t2) = 0.36 -> mean 0.67.
#   MMD^2 = 3/4 + 1 - 2 * 0.67 = 0.41.
NST_STUDENT = _t([3, 4], (1, 1, 1, 2))
NST_TEACHER = _t([1, 1, 5, 0], (1, 2, 1, 2))


def test_nst_stage_loss_hand_value():
    assert nst_stage_loss(NST_STUDENT, NST_TEACHER).item() == pytest.approx(0.41, rel=1e-12)
    # A batch of two copies has the same batch mean; identical maps give 0.
    pair_s, pair_t = NST_STUDENT.repeat(2, 1, 1, 1), NST_TEACHER.repeat(2, 1, 1, 1)
    assert nst_stage_loss(pair_s, pair_t).item() == pytest.approx(0.41, rel=1e-12)
    assert nst_stage_loss(NST_TEACHER, NST_TEACHER).item() == pytest.approx(0.0, abs=1e-15)
    assert nst_loss([NST_STUDENT, NST_STUDENT], [NST_TEACHER, NST_TEACHER]).item() == pytest.approx(0.82, rel=1e-12)


# ------------------------------------------------------------------------------ PKT

# Student rows (1,0), (0,1): cos = I, kernel (cos+1)/2 = [[1, 1/2], [1/2, 1]] -> rows (2/3, 1/3), (1/3, 2/3).
# Teacher rows (1,0), (2,0): cos = 1 everywhere -> rows (1/2, 1/2).
#   loss = mean over 4 entries of p_t log(p_t / p_s)
#        = (1/4) * 2 * [1/2 ln(3/4) + 1/2 ln(3/2)] = (1/4) ln(9/8).
# The eps terms (1e-7 in norms and logs) move this by < 1e-6 relative.


def test_pkt_loss_hand_value():
    value = pkt_loss(_t([[1, 0], [0, 1]]), _t([[1, 0], [2, 0]])).item()
    assert value == pytest.approx(math.log(9 / 8) / 4, rel=2e-6)
    assert pkt_loss(_t([[1, 2], [3, 1]]), _t([[2, 4], [6, 2]])).item() == pytest.approx(0.0, abs=1e-12)


def test_pkt_zero_feature_row_stays_finite():
    # A zero row has norm 0: 0 / (0 + eps) = 0, a cosine of 0 with everything (kernel 1/2).
    f_s = torch.tensor([[0.0, 0.0], [1.0, 0.0]], requires_grad=True)
    loss = pkt_loss(f_s, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f_s.grad).all()


# ------------------------------------------------------------------------------ SP

# Student rows (1,0), (0,1): G = I (rows already unit). Teacher rows (1,0), (1,0): G = all ones,
# rows (1,1)/sqrt2. Each row of G_t - G_s has squared norm (1 - 1/sqrt2)^2 + 1/2 = 2 - sqrt2;
# loss = 2 (2 - sqrt2) / B^2 = (2 - sqrt2) / 2.


def test_sp_loss_hand_value():
    f_s = _t([1, 0, 0, 1], (2, 2, 1, 1))
    f_t = _t([1, 0, 1, 0], (2, 1, 2, 1))  # another shape: only the B x B matrices meet
    assert similarity_loss(f_s, f_t).item() == pytest.approx((2 - SQRT2) / 2, rel=1e-12)
    assert similarity_loss(f_s, f_t).dim() == 0
    assert sp_loss([f_s, f_s], [f_t, 5 * f_s]).item() == pytest.approx((2 - SQRT2) / 2, rel=1e-12)


# ------------------------------------------------------------------------------ RKD

# Student points (0,0), (1,0), (0,1): a right isosceles triangle.
# Teacher points (0,0), (1,0), (2,0): collinear.
# Distances (pairs 01, 02, 12): student 1, 1, sqrt2, off-diagonal mean (2 + sqrt2)/3;
#   teacher 1, 2, 1, mean 4/3. Normalised differences (each pair twice, diagonal 0 = 0):
#   3/(2+sqrt2) - 3/4, 3/(2+sqrt2) - 3/2, 3 sqrt2/(2+sqrt2) - 3/4;  L_d = 2 sum huber / 9.
# Angles: for vertex i, the 9 (j,k) cells hold 5 zeros (j = i or k = i), 2 ones (j = k != i)
#   and twice the cosine at vertex i. Student: 0 at vertex 0, 1/sqrt2 at 1 and 2; teacher:
#   1 at vertex 0, -1 at vertex 1, 1 at vertex 2.  L_a = 2 sum_i huber(c_s,i - c_t,i) / 27.
RKD_STUDENT = _t([[0, 0], [1, 0], [0, 1]])
RKD_TEACHER = _t([[0, 0], [1, 0], [2, 0]])


def _rkd_expected(squared: bool) -> tuple[float, float]:
    if squared:  # squared distances: student 1, 1, 2 (mean 4/3); teacher 1, 4, 1 (mean 2)
        diffs = [0.75 - 0.5, 0.75 - 2.0, 1.5 - 0.5]
    else:
        m = 3 / (2 + SQRT2)
        diffs = [m - 0.75, m - 1.5, SQRT2 * m - 0.75]
    loss_d = 2 * sum(huber(d) for d in diffs) / 9
    loss_a = 2 * (huber(0 - 1) + huber(1 / SQRT2 + 1) + huber(1 / SQRT2 - 1)) / 27
    return loss_d, loss_a


@pytest.mark.parametrize("squared", [False, True])
def test_rkd_loss_hand_value(squared):
    loss_d, loss_a = _rkd_expected(squared)
    assert rkd_loss(RKD_STUDENT, RKD_TEACHER, squared, 1e-12, 1.0, 0.0).item() == pytest.approx(loss_d, rel=1e-12)
    assert rkd_loss(RKD_STUDENT, RKD_TEACHER, squared, 1e-12, 0.0, 1.0).item() == pytest.approx(loss_a, rel=1e-12)
    full = rkd_loss(RKD_STUDENT, RKD_TEACHER, squared, 1e-12, 25.0, 50.0).item()
    assert full == pytest.approx(25 * loss_d + 50 * loss_a, rel=1e-12)


def test_rkd_invariant_to_scale_and_translation_and_finite_for_coincident_samples():
    # Relations only: a scaled and shifted copy of the teacher costs nothing.
    assert rkd_loss(3 * RKD_STUDENT + 7, RKD_STUDENT).item() == pytest.approx(0.0, abs=1e-10)
    f_s = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], requires_grad=True)  # two equal rows
    loss = rkd_loss(f_s, torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f_s.grad).all()


# ------------------------------------------------------------------------------ KDSVD


def _rotation(theta: float) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return _t([[c, -s], [s, c]])  # columns (c, s) and (-s, c)


def test_truncated_svd_and_alignment_by_hand():
    # One 2x2 matrix diag(3, 4) (C=1, H=2, W=2): singular values (4, 3), top right vector +-e2.
    s, v = truncated_svd(_t([3, 0, 0, 4], (1, 1, 2, 2)), 1)
    assert s.tolist() == [[pytest.approx(1.0)]]  # one value, normalised
    assert v.abs().squeeze().tolist() == [pytest.approx(0.0, abs=1e-12), pytest.approx(1.0)]
    # Alignment: teacher vector e1; student candidates q1 = -(cos30, sin30), q2 = (-sin30, cos30).
    # |cos| = (0.866, 0.5): q1 wins, taken with the cosine's sign -> (cos30, sin30).
    q = _rotation(math.pi / 6)
    v_s = torch.stack([-q[:, 0], q[:, 1]], dim=1).unsqueeze(0)
    aligned = align_to_teacher(v_s, _t([1, 0], (1, 2, 1)))
    assert aligned.squeeze().tolist() == [pytest.approx(math.cos(math.pi / 6)), pytest.approx(0.5)]
    with pytest.raises(ValueError, match="width"):
        align_to_teacher(torch.zeros(1, 3, 2), torch.zeros(1, 2, 1))


def test_kdsvd_loss_hand_value():
    """Two stages, K = 1, B = 1; matrices (C*H) x W = 2 x 2.

    Teacher: stage 1 diag(2, 1) (top right vector sigma1 e1), stage 2 diag(1, 2) (sigma2 e2).
    Student: stage 1 = diag(2, 1) Q^T with Q = rotation(30 deg) (top vector +-q1, q1 = (cos30,
    sin30)); stage 2 = the teacher's. After alignment the student vectors are sigma1 q1 and
    sigma2 e2; normalised singular values are 1. With a = stage-2 vector, b = stage-1 vector,
    R[c, c'] = exp(-(a_c - b_c')^2 / 8) and (sigma2 a_c - sigma1 b_c')^2 = a_c^2 + b_c'^2 -
    2 rho a_c b_c' with rho = sigma1 sigma2: the loss depends on the teacher's singular-vector
    signs, which are LAPACK's (as in mdistiller). rho is read from torch.linalg.svd; everything
    else is computed here by hand.
    """
    q1 = (math.cos(math.pi / 6), math.sin(math.pi / 6))
    t1, t2 = _t([[2, 0], [0, 1]]), _t([[1, 0], [0, 2]])
    s1 = t1 @ _rotation(math.pi / 6).T
    sigma1 = torch.linalg.svd(t1)[2][0, 0].sign().item()  # first right vector's e1 component
    sigma2 = torch.linalg.svd(t2)[2][0, 1].sign().item()  # first right vector's e2 component
    rho = sigma1 * sigma2

    def rbf(a, b):
        return [[math.exp(-(a[c] ** 2 + b[d] ** 2 - 2 * rho * a[c] * b[d]) / 8) for d in range(2)] for c in range(2)]

    r_s, r_t = rbf((0, 1), q1), rbf((0, 1), (1, 0))
    expected = sum((r_s[c][d] - r_t[c][d]) ** 2 for c in range(2) for d in range(2))
    g_s = [s1.reshape(1, 1, 2, 2), t2.reshape(1, 1, 2, 2)]
    g_t = [t1.reshape(1, 1, 2, 2), t2.reshape(1, 1, 2, 2)]
    # The SVD runs in float32 (as mdistiller's): kernel values O(1) carry ~1e-7 absolute error,
    # their differences are ~0.1, so the loss is good to ~1e-6 relative; bound 2e-5.
    assert kdsvd_loss(g_s, g_t, 1).item() == pytest.approx(expected, rel=2e-5)
    assert expected > 1e-4  # not trivially zero
    # Identical stages: the student's vectors align exactly onto the teacher's.
    assert kdsvd_loss(g_t, g_t, 1).item() == pytest.approx(0.0, abs=1e-12)
    # Divided by the batch size: a batch of two copies gives the same value.
    twice = lambda g: [x.repeat(2, 1, 1, 1) for x in g]  # noqa: E731
    assert kdsvd_loss(twice(g_s), twice(g_t), 1).item() == pytest.approx(expected, rel=2e-5)


@pytest.mark.parametrize("shape", [(3, 12, 5), (3, 4, 7)])  # tall and wide matrices
@pytest.mark.parametrize("n", [2, 0])  # the leading two kept, or all
def test_leading_svd_backward_is_torchs_where_that_is_finite(shape, n):
    """Same values and, in float64 on matrices with distinct singular values, the same
    gradient as torch.linalg.svd's own backward (the same formula; only pairs of two unused
    indices, whose terms are exactly zero, are left out)."""
    from kdharness.distillers.kdsvd import LeadingSVD

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(*shape, dtype=torch.float64, generator=generator).requires_grad_(True)
    kept = n if n > 0 else min(shape[1:])
    w_s = torch.randn(shape[0], kept, dtype=torch.float64, generator=generator)
    w_v = torch.randn(shape[0], kept, shape[2], dtype=torch.float64, generator=generator)

    def loss(s, vh):  # invariant to the vectors' signs, as KDSVD is after alignment
        return (s[:, :kept] * w_s).sum() + ((vh[:, :kept] * w_v).sum(-1) ** 2).sum()

    s_ref, vh_ref = torch.linalg.svd(a, full_matrices=False)[1:]
    s_new, vh_new = LeadingSVD.apply(a, n)
    assert torch.equal(s_ref, s_new) and torch.equal(vh_ref, vh_new)
    (g_ref,) = torch.autograd.grad(loss(s_ref, vh_ref), a)
    (g_new,) = torch.autograd.grad(loss(s_new, vh_new), a)
    assert torch.allclose(g_new, g_ref, rtol=1e-9, atol=1e-9 * g_ref.abs().max().item())


def test_kdsvd_gradient_is_finite_on_zero_padded_images():
    """Issue 23: on resnet14 -> resnet8 and Fashion-MNIST-like images (28x28 in a 32x32 zero
    frame, dark borders), stage 1's (C*H) x W matrices have identical constant columns, so
    repeated zero singular values. The loss was finite, but torch's SVD backward gave 0/0 = NaN
    for those unused pairs and the run ended at step 2 in a LinAlgError."""
    torch.manual_seed(0)
    student = create_model("resnet8", "fashion_mnist", 10)
    teacher = create_model("resnet14", "fashion_mnist", 10).eval().requires_grad_(False)
    distiller = KDSVD(student, teacher, get_cfg_defaults()).train()
    image = torch.zeros(8, 3, 32, 32)
    image[:, :, 2:30, 9:23] = torch.rand(8, 1, 28, 14)  # the item in the middle, dark around it
    _, losses = distiller(image=image, target=torch.arange(8))
    assert losses["loss_kd"].item() > 0 and torch.isfinite(losses["loss_kd"])
    sum(losses.values()).backward()
    for name, parameter in student.named_parameters():
        assert torch.isfinite(parameter.grad).all(), name


# ------------------------------------------------------------------------------ distillers on stand-in models


class TinyConvNet(nn.Module):
    """Stand-in zoo model, mdistiller's feats layout: stem + 3 stages (8x8, 8x8, 4x4, 2x2)."""

    def __init__(self, width: int, num_classes: int = 5) -> None:
        super().__init__()
        chans = [width, width, 2 * width, 4 * width]
        self.stem = nn.Sequential(nn.Conv2d(3, chans[0], 3, padding=1), nn.BatchNorm2d(chans[0]))
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1), nn.BatchNorm2d(chans[i + 1]))
            for i in range(3)
        )
        self.fc = nn.Linear(chans[-1], num_classes)

    def forward(self, x: torch.Tensor):
        pre = [self.stem(x)]
        feats = [F.relu(pre[0])]
        for stage in self.stages:
            pre.append(stage(feats[-1]))
            feats.append(F.relu(pre[-1]))
        pooled = feats[-1].mean(dim=(2, 3))
        return self.fc(pooled), {"feats": feats, "preact_feats": pre, "pooled_feat": pooled}


def _cfg():
    cfg = get_cfg_defaults()
    cfg.FITNET.INPUT_SIZE = (8, 8)
    return cfg


def _models():
    torch.manual_seed(1)
    student, teacher = TinyConvNet(4), TinyConvNet(6)
    teacher.eval()
    return student, teacher


def _expected_feature_loss(method: str, distiller, fs: dict, ft: dict, cfg) -> torch.Tensor:
    """The unweighted loss from the features mdistiller's method reads (fixed here, per method)."""
    if method == "FITNET":
        return fitnet_loss(distiller.conv_reg(fs["feats"][2]), ft["feats"][2])
    if method == "AT":
        return at_loss(fs["feats"][1:], ft["feats"][1:], 2)
    if method == "NST":
        return nst_loss(fs["feats"][1:], ft["feats"][1:])
    if method == "PKT":
        return pkt_loss(fs["pooled_feat"], ft["pooled_feat"])
    if method == "SP":
        return similarity_loss(fs["feats"][-1], ft["feats"][-1])
    if method == "RKD":
        return rkd_loss(fs["pooled_feat"], ft["pooled_feat"], False, 1e-12, 25, 50)
    return kdsvd_loss(fs["feats"][1:], ft["feats"][1:], 1)


FEAT_WEIGHT = {"FITNET": 100.0, "AT": 1000.0, "NST": 50.0, "PKT": 30000.0, "SP": 3000.0, "RKD": 1.0, "KDSVD": 1.0}


@pytest.mark.parametrize("method", METHODS)
def test_distiller_loss_features_weights_and_gradients(method):
    cfg = _cfg()
    student, teacher = _models()
    distiller = distiller_dict[method](student, teacher, cfg).train()
    assert not teacher.training and student.training
    image, target = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
    teacher_bn = teacher.stem[1].running_mean.clone()

    values = []
    for epoch in (1, 10, 100):  # no warm-up in any of the seven: the epoch changes nothing
        logits, losses = distiller(image=image, target=target, epoch=epoch)
        assert set(losses) == {"loss_ce", "loss_kd"}
        values.append(losses["loss_kd"].item())
    assert values[0] == values[1] == values[2]

    with torch.no_grad():
        _, fs = student(image)
        _, ft = teacher(image)
        expected = FEAT_WEIGHT[method] * _expected_feature_loss(method, distiller, fs, ft, cfg)
    # float32 features, sums of at most ~1e3 terms: relative error far below 1e-5.
    assert losses["loss_kd"].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-9)
    assert losses["loss_ce"].item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    assert losses["loss_kd"].dim() == 0 and torch.isfinite(losses["loss_kd"])

    sum(losses.values()).backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert torch.equal(teacher.stem[1].running_mean, teacher_bn)
    learnable = {id(p) for p in distiller.get_learnable_parameters()}
    extra = [p for name, p in distiller.named_parameters() if not name.startswith(("student.", "teacher."))]
    assert all(id(p) in learnable and p.grad is not None for p in extra)
    assert distiller.get_extra_parameters() == sum(p.numel() for p in extra)
    assert torch.equal(distiller.eval()(image=image), student(image)[0])


@pytest.mark.parametrize("method", METHODS)
def test_feature_losses_stay_float32_under_autocast(method):
    distiller = distiller_dict[method](*_models(), _cfg()).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = distiller(image=torch.randn(4, 3, 8, 8), target=torch.randint(0, 5, (4,)), epoch=1)
    assert losses["loss_kd"].dtype == torch.float32 and torch.isfinite(losses["loss_kd"])


def test_fitnet_hint_layer_and_probe_leave_models_untouched():
    cfg = _cfg()
    student, teacher = _models()
    student_state = {k: v.clone() for k, v in student.state_dict().items()}
    distiller = FitNet(student, teacher, cfg)
    # Stage 2 is 8 -> 12 channels at 4x4 on both sides: a 1x1 conv.
    assert distiller.conv_reg.conv.weight.shape == (12, 8, 1, 1)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in student_state.items())  # eval-mode probe
    assert student.training and not teacher.training
    cfg.FITNET.HINT_LAYER = 7
    with pytest.raises(ValueError, match="FITNET.HINT_LAYER = 7"):
        FitNet(student, teacher, cfg)
    with pytest.raises(ValueError, match="DISTILLER.TEACHER"):
        FitNet(student, None, _cfg())


# ------------------------------------------------------------------------------ state dicts vs mdistiller


def _recorded(method: str) -> dict:
    return json.loads((STATES_DIR / f"{method}.json").read_text())


def test_recorded_states_cover_the_eleven_pairs_and_say_how_they_were_made():
    for method in METHODS:
        record = _recorded(method)
        assert record["method"] == method and "mdistiller" in record["produced_by"]
        assert len(record["pairs"]) == 11
        if method != "FITNET":  # only FitNet adds modules
            assert all(p["extra_state"] == {} and p["extra_parameters"] == 0 for p in record["pairs"].values())


@pytest.mark.parametrize("pair", sorted(_recorded("FITNET")["pairs"]))
def test_fitnet_state_dict_matches_mdistiller(pair):
    record = _recorded("FITNET")["pairs"][pair]
    student = create_model(record["student"], "cifar100", 100)
    teacher = create_model(record["teacher"], "cifar100", 100)
    distiller = FitNet(student, teacher, get_cfg_defaults())
    state = distiller.state_dict()
    extra = {k: list(v.shape) for k, v in state.items() if not k.startswith(("student.", "teacher."))}
    assert extra == record["extra_state"]
    assert distiller.get_extra_parameters() == record["extra_parameters"]
    beyond = sum(p.numel() for p in distiller.get_learnable_parameters()) - sum(p.numel() for p in student.parameters())
    assert beyond == record["learnable_beyond_student"]
    # A checkpoint in mdistiller's layout (same keys and shapes, other values) loads strictly.
    foreign = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in state.items()}
    FitNet(create_model(record["student"], "cifar100", 100), teacher, get_cfg_defaults()).load_state_dict(foreign, strict=True)


def test_parameter_free_methods_add_no_state():
    student, teacher = _models()
    keys = {f"student.{k}" for k in student.state_dict()} | {f"teacher.{k}" for k in teacher.state_dict()}
    for method in METHODS:
        if method != "FITNET":
            distiller = distiller_dict[method](student, teacher, _cfg())
            assert set(distiller.state_dict()) == keys and distiller.get_extra_parameters() == 0


# ------------------------------------------------------------------------------ through tools/train.py's path


TRAIN_CONFIGS = {
    "FITNET": "fitnet/res56_res20.yaml", "AT": "at/res56_res20.yaml", "NST": "nst/res56_res20.yaml",
    "PKT": "pkt/res56_res20.yaml", "SP": "sp/res56_res20.yaml", "RKD": "rkd/res56_res20.yaml",
    "KDSVD": "kdsvd/res32x4_res8x4.yaml",
}
# Small students/teachers keep each run a few seconds on one core; KDSVD needs equal-width stages.
TRAIN_MODELS = {"KDSVD": ("resnet8x4", "resnet8x4")}


def test_every_method_has_its_configs():
    for method in METHODS:
        folder = REPO / "configs" / "cifar100" / method.lower()
        files = sorted(folder.glob("*.yaml"))
        assert len(files) == (1 if method == "KDSVD" else 11), method
        for path in files:
            text = path.read_text()
            assert f'TYPE: "{method}"' in text and f'TAG: "{method.lower()},{path.stem}"' in text


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    from fixtures_data import write_cifar100_fixture

    root = tmp_path_factory.mktemp("cifar")
    write_cifar100_fixture(root, n_train=40, n_test=16)
    return root


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_a_few_steps(method, cifar_root: Path, tmp_path: Path):
    from harness_utils import TINY_CIFAR, run_config, write_teacher_checkpoint

    teacher, student = TRAIN_MODELS.get(method, ("resnet20", "resnet8"))
    weights = write_teacher_checkpoint(tmp_path / "teacher.pth", teacher, "cifar100", 100)
    opts = TINY_CIFAR + [
        "DATASET.ROOT", str(cifar_root), "LOG.PREFIX", str(tmp_path),
        "DISTILLER.TEACHER", teacher, "DISTILLER.STUDENT", student, "DISTILLER.TEACHER_WEIGHTS", str(weights),
    ]
    summary = run_config(REPO / "configs" / "cifar100" / TRAIN_CONFIGS[method], opts)
    assert summary["complete"] and summary["epochs"] == 1
    assert 0.0 <= summary["best_top1"] <= 100.0


# ------------------------------------------------------------------------------ against a real mdistiller checkout


def _import_mdistiller(root: str, monkeypatch) -> types.SimpleNamespace:
    """mdistiller's cfg, CIFAR models and the seven distiller modules, without its distillers
    package __init__ (which imports OFD and with it scipy, needed by none of these)."""
    monkeypatch.syspath_prepend(root)
    for name in list(sys.modules):
        if name == "mdistiller" or name.startswith("mdistiller."):
            monkeypatch.delitem(sys.modules, name)
    package = types.ModuleType("mdistiller.distillers")
    package.__path__ = [os.path.join(root, "mdistiller", "distillers")]
    importlib.import_module("mdistiller")
    monkeypatch.setitem(sys.modules, "mdistiller.distillers", package)
    modules = {"FITNET": "FitNet", "AT": "AT", "NST": "NST", "PKT": "PKT", "SP": "SP", "RKD": "RKD", "KDSVD": "KDSVD"}
    classes = {m: getattr(importlib.import_module(f"mdistiller.distillers.{f}"), f) for m, f in modules.items()}
    cfg = importlib.import_module("mdistiller.engine.cfg").CFG
    models = importlib.import_module("mdistiller.models.cifar").cifar_model_dict
    return types.SimpleNamespace(classes=classes, cfg=cfg, models=models)


@pytest.mark.slow  # ~20 s per method on one core: resnet32x4 in float64
@pytest.mark.skipif(not os.environ.get("MDISTILLER_ROOT"), reason="set MDISTILLER_ROOT to an mdistiller checkout")
@pytest.mark.parametrize("method", METHODS)
def test_losses_equal_mdistiller(method, monkeypatch):
    """resnet32x4 -> resnet8x4 (mdistiller's configured pair for all seven), the same random
    weights in both harnesses, one batch of 8, epochs 1, 10 and 100.

    In float64: at random initialisation the pooled features of a batch are nearly parallel,
    and PKT's KL between two nearly uniform distributions amplifies rounding ~3e5-fold (in
    float32 its value moves by 2% under a 1-ulp change of pooled_feat, and our pooled_feat
    comes from another pooling kernel than mdistiller's, 1 ulp apart). In float64 the same
    amplification leaves ~1e-10 relative, so rel 1e-6 holds for every method with margin.
    KDSVD's SVD runs in float32 in both (mdistiller's cast) on bitwise-equal stage features.
    """
    md = _import_mdistiller(os.environ["MDISTILLER_ROOT"], monkeypatch)
    torch.manual_seed(3)
    ours_s, ours_t = create_model("resnet8x4", "cifar100", 100), create_model("resnet32x4", "cifar100", 100)
    ours_t.eval()
    theirs_s, theirs_t = md.models["resnet8x4"][0](num_classes=100), md.models["resnet32x4"][0](num_classes=100)
    ours = distiller_dict[method](ours_s, ours_t, get_cfg_defaults()).train()
    theirs = md.classes[method](theirs_s, theirs_t, md.cfg)
    # mdistiller's FitNet probes shapes in train mode (moving BN statistics): load afterwards.
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours, theirs = ours.double().train(), theirs.double().train()
    image, target = torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 100, (8,))
    for epoch in (1, 10, 100):
        _, got = ours(image=image, target=target, epoch=epoch)
        _, want = theirs(image=image, target=target, epoch=epoch)
        for key in ("loss_ce", "loss_kd"):
            assert got[key].item() == pytest.approx(want[key].sum().item(), rel=1e-6, abs=1e-12), (key, epoch)


@pytest.mark.skipif(not os.environ.get("MDISTILLER_ROOT"), reason="set MDISTILLER_ROOT to an mdistiller checkout")
@pytest.mark.parametrize("method", METHODS)
def test_mdistiller_yaml_loads_unchanged(method):
    from kdharness.compose import load_config

    cfg = load_config(os.path.join(os.environ["MDISTILLER_ROOT"], "configs", "cifar100", f"{method.lower()}.yaml"))
    assert cfg.DISTILLER.TYPE == method and cfg.DISTILLER.STUDENT == "resnet8x4"


# ------------------------------------------------------------------------------ published figures on the leaderboard


PUBLISHED_RES32X4_RES8X4 = {"FITNET": 73.50, "AT": 73.44, "SP": 72.94, "RKD": 71.90, "PKT": 73.64, "NST": 73.30}


def test_published_rows_for_the_six_methods_are_packaged():
    from kdharness.results.reference import load_reference

    figures = [f for f in load_reference() if f.method in PUBLISHED_RES32X4_RES8X4]
    assert len(figures) == 66  # 6 methods x 11 CIFAR-100 pairs
    assert all(f.dataset == "cifar100" and "CRD paper" in f.source for f in figures)
    pairs = {(f.teacher, f.student) for f in figures}
    kd_pairs = {(f.teacher, f.student) for f in load_reference() if f.method == "KD" and f.dataset == "cifar100"}
    assert pairs == kd_pairs  # the same 11 pairs as the KD baseline, same model names


def test_leaderboard_shows_published_columns_for_the_new_methods(tmp_path: Path, capsys):
    """tools/leaderboard.py over one FITNET run: the six published columns appear, in the CRD
    paper's order after KD/DKD/CRD, with their figures for resnet32x4 -> resnet8x4."""
    import importlib.util

    run_dir = tmp_path / "project" / "fitnet,res32x4_res8x4,EXPERIMENT.SEED:0"
    run_dir.mkdir(parents=True)
    summary = {
        "complete": True, "experiment": "fitnet,res32x4_res8x4,EXPERIMENT.SEED:0", "dataset": "cifar100",
        "distiller": "FITNET", "method": "FITNET", "ickd_base": None, "teacher": "resnet32x4",
        "student": "resnet8x4", "seed": 0, "epochs": 2, "best_top1": 71.25, "best_epoch": 2,
        "last_top1": 71.0, "history": [{"epoch": 1}, {"epoch": 2}],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    spec = importlib.util.spec_from_file_location("_zoo_a_leaderboard", REPO / "tools" / "leaderboard.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "FITNET (published)" in line)
    columns = [c.strip() for c in header.strip("|").split("|")]
    published = [c.split(" (published)")[0] for c in columns if "(published)" in c]
    order = ["KD", "DKD", "CRD", "FITNET", "AT", "SP", "RKD", "PKT", "NST"]  # others (VID, ...) may sit between
    assert [m for m in published if m in order] == order
    row = next(line for line in out.splitlines() if "resnet8x4" in line and "71.25" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    for method, value in PUBLISHED_RES32X4_RES8X4.items():
        assert cells[columns.index(next(c for c in columns if c.startswith(f"{method} (published)")))] == f"{value:.2f}"
