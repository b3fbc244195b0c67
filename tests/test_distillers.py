"""Baseline distillers: loss values against hand arithmetic, CRD's memory semantics, and the
training contract (teacher frozen and in eval mode, gradients where they belong).

Expected numbers are derived independently of the code under test: closed forms written out
with ``math.log`` where the distributions are simple, otherwise a NumPy re-derivation.
Stand-in models keep the tests independent of the model zoo.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from float_tolerance import log_softmax_kl_atol, max_abs
from kdharness.config import get_cfg_defaults
from kdharness.distillers import Distiller, Vanilla, distiller_dict
from kdharness.distillers.crd import CRD, ContrastMemory, nce_loss
from kdharness.distillers.dkd import DKD, dkd_loss, nckd_loss, tckd_loss, warmup_factor
from kdharness.distillers.kd import KD, kd_loss

LN2, LN3 = math.log(2.0), math.log(3.0)

# Float values against float64 references: run again on a second kernel path by scripts/test.sh.
pytestmark = pytest.mark.numerics


class TinyNet(nn.Module):
    """Stand-in for a zoo model: flatten -> linear -> BN -> ReLU = pooled_feat -> classifier."""

    def __init__(self, in_dim: int, feat_dim: int, num_classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Linear(in_dim, feat_dim)
        self.bn = nn.BatchNorm1d(feat_dim)
        self.fc = nn.Linear(feat_dim, num_classes)

    def forward(self, x: torch.Tensor):
        pre = self.bn(self.body(x.flatten(1)))
        pooled = F.relu(pre)
        return self.fc(pooled), {"pooled_feat": pooled, "feats": [pooled], "preact_feats": [pre]}


def _pair(student_dim: int = 8, teacher_dim: int = 12, in_dim: int = 3 * 32 * 32) -> tuple[TinyNet, TinyNet]:
    student, teacher = TinyNet(in_dim, student_dim), TinyNet(in_dim, teacher_dim)
    teacher.eval()
    return student, teacher


def _batch(batch_size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 3, 32, 32), torch.randint(0, 3, (batch_size,))


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------ registry


def test_registry_names_and_vanilla():
    assert distiller_dict["NONE"] is Vanilla
    assert distiller_dict["KD"] is KD and distiller_dict["DKD"] is DKD and distiller_dict["CRD"] is CRD
    assert issubclass(KD, Distiller) and issubclass(CRD, Distiller)
    with pytest.raises(KeyError, match="DISTILLER.TYPE"):
        distiller_dict["NOPE"]
    student, _ = _pair()
    image, target = _batch()
    logits, losses = Vanilla(student, None, get_cfg_defaults())(image=image, target=target)
    assert set(losses) == {"loss_ce"}
    assert torch.allclose(losses["loss_ce"], F.cross_entropy(logits, target))


# ------------------------------------------------------------------------------ KD

# Sample 1: student uniform (1/3 each), teacher [ln2, 0, 0] -> (1/2, 1/4, 1/4):
#   KL = 1/2 ln(3/2) + 2 * 1/4 ln(3/4) = 1/2 ln(9/8)
# Sample 2: teacher uniform, student [ln2, 0, 0] -> (1/2, 1/4, 1/4):
#   KL = 1/3 ln(2/3) + 2 * 1/3 ln(4/3) = 1/3 ln(32/27)
KD_STUDENT = [[0.0, 0.0, 0.0], [LN2, 0.0, 0.0]]
KD_TEACHER = [[LN2, 0.0, 0.0], [0.0, 0.0, 0.0]]
KD_BATCH_MEAN_KL = (0.5 * math.log(9 / 8) + math.log(32 / 27) / 3) / 2


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_loss_matches_hand_computation(temperature):
    # Logits scaled by T give the same softened distributions, so only the T^2 factor remains.
    s = torch.tensor(KD_STUDENT, dtype=torch.float64) * temperature
    t = torch.tensor(KD_TEACHER, dtype=torch.float64) * temperature
    expected = KD_BATCH_MEAN_KL * temperature**2
    # kd_loss computes in float32: |logit / T| <= ln 2, 3 classes, batch 2, times T^2
    atol = log_softmax_kl_atol(LN2, num_classes=3, batch=2, scale=temperature**2)
    assert kd_loss(s, t, temperature).item() == pytest.approx(expected, abs=atol)


def test_kd_loss_zero_when_equal():
    logits = torch.randn(5, 7)
    atol = log_softmax_kl_atol(max_abs(logits) / 4.0, num_classes=7, batch=5, scale=4.0**2)
    assert kd_loss(logits, logits.clone(), 4.0).item() == pytest.approx(0.0, abs=atol)


def test_kd_distiller_weights_and_teacher_frozen():
    cfg = get_cfg_defaults()
    student, teacher = _pair()
    distiller = KD(student, teacher, cfg)
    distiller.train()
    assert not teacher.training and student.training
    image, target = _batch()
    seen = []  # the teacher logits the step used: the float64 reference starts from the same float32 inputs
    teacher.register_forward_hook(lambda module, args, output: seen.append(output[0].detach().clone()))
    logits, losses = distiller(image=image, target=target, epoch=1)
    assert set(losses) == {"loss_ce", "loss_kd"}

    teacher_logits = seen[0].double().numpy()
    s = logits.detach().double().numpy()
    T = cfg.KD.TEMPERATURE
    p_s, p_t = _np_softmax(s / T), _np_softmax(teacher_logits / T)
    kl = (p_t * (np.log(p_t) - np.log(p_s))).sum(axis=1).mean() * T**2
    ce = -np.log(_np_softmax(s)[np.arange(len(target)), target.numpy()]).mean()
    # The losses are float32: compare with float32's rounding bound, not a relative 1e-5 (the KL
    # here is ~0.07, a small difference of O(1) log-probabilities, so its relative error is large).
    kd_atol = log_softmax_kl_atol(max_abs(logits, seen[0]) / T, num_classes=3, batch=len(target), scale=0.9 * T**2)
    ce_atol = log_softmax_kl_atol(max_abs(logits), num_classes=3, batch=len(target), scale=0.1)
    assert losses["loss_kd"].item() == pytest.approx(0.9 * kl, abs=kd_atol)
    assert losses["loss_ce"].item() == pytest.approx(0.1 * ce, abs=ce_atol)

    sum(losses.values()).backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_kd_requires_teacher():
    student, _ = _pair()
    with pytest.raises(ValueError, match="DISTILLER.TEACHER"):
        KD(student, None, get_cfg_defaults())


# ------------------------------------------------------------------------------ DKD

# Sample 1, target 0: student uniform; teacher [ln2, ln2, 0] -> (2/5, 2/5, 1/5).
#   TCKD: b_t = (2/5, 3/5), b_s = (1/3, 2/3): 2/5 ln(6/5) + 3/5 ln(9/10)
#   NCKD: non-target teacher (2/3, 1/3), student (1/2, 1/2): 2/3 ln(4/3) + 1/3 ln(2/3)
# Sample 2, target 2: student [ln3, 0, 0] -> (3/5, 1/5, 1/5); teacher uniform.
#   TCKD: b_t = (1/3, 2/3), b_s = (1/5, 4/5): 1/3 ln(5/3) + 2/3 ln(5/6)
#   NCKD: non-target teacher (1/2, 1/2), student (3/4, 1/4): 1/2 ln(2/3) + 1/2 ln(2)
DKD_STUDENT = [[0.0, 0.0, 0.0], [LN3, 0.0, 0.0]]
DKD_TEACHER = [[LN2, LN2, 0.0], [0.0, 0.0, 0.0]]
DKD_TARGET = [0, 2]
TCKD_SUM = (0.4 * math.log(6 / 5) + 0.6 * math.log(9 / 10)) + (math.log(5 / 3) / 3 + 2 / 3 * math.log(5 / 6))
NCKD_SUM = (2 / 3 * math.log(4 / 3) + math.log(2 / 3) / 3) + (0.5 * math.log(2 / 3) + 0.5 * LN2)


def _dkd_inputs(temperature: float):
    s = torch.tensor(DKD_STUDENT, dtype=torch.float64) * temperature
    t = torch.tensor(DKD_TEACHER, dtype=torch.float64) * temperature
    return s, t, torch.tensor(DKD_TARGET)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_pieces_match_hand_computation(temperature):
    s, t, y = _dkd_inputs(temperature)
    # Sums over the batch of 2, divided by the batch size, times T^2. Computed in float32 from
    # logits with |z / T| <= ln 3 (the masked target logit's p is exactly 0, so its -1000 offset
    # adds nothing); each term's bound is scaled by its weight.
    def atol(weight: float) -> float:
        return log_softmax_kl_atol(LN3, num_classes=3, batch=2, scale=weight * temperature**2)

    assert tckd_loss(s, t, y, temperature).item() == pytest.approx(TCKD_SUM / 2 * temperature**2, abs=atol(1.0))
    assert nckd_loss(s, t, y, temperature).item() == pytest.approx(NCKD_SUM / 2 * temperature**2, abs=atol(1.0))
    expected = (1.0 * TCKD_SUM + 8.0 * NCKD_SUM) / 2 * temperature**2
    assert dkd_loss(s, t, y, 1.0, 8.0, temperature).item() == pytest.approx(expected, abs=atol(1.0 + 8.0))
    assert dkd_loss(s, t, y, 0.5, 0.0, temperature).item() == pytest.approx(0.5 * TCKD_SUM / 2 * temperature**2, abs=atol(0.5))


def test_dkd_equals_kd_decomposition():
    """The paper's identity: KD = TCKD + (1 - p_gt_teacher) * NCKD, per sample (T = 1)."""
    s = torch.randn(1, 5, dtype=torch.float64)
    t = torch.randn(1, 5, dtype=torch.float64)
    y = torch.tensor([3])
    p_gt = F.softmax(t, dim=1)[0, 3].item()
    decomposed = tckd_loss(s, t, y, 1.0) + (1 - p_gt) * nckd_loss(s, t, y, 1.0)
    # three float32 losses (inputs cast from float64), each within its rounding bound
    atol = 3 * log_softmax_kl_atol(max_abs(s, t), num_classes=5, batch=1)
    assert decomposed.item() == pytest.approx(kd_loss(s, t, 1.0).item(), abs=atol)


def test_warmup_factor():
    assert warmup_factor(1, 20) == pytest.approx(0.05)
    assert warmup_factor(10, 20) == pytest.approx(0.5)
    assert warmup_factor(20, 20) == 1.0 and warmup_factor(240, 20) == 1.0
    assert warmup_factor(0, 0) == 1.0 and warmup_factor(3, 0) == 1.0


def test_dkd_distiller_applies_warmup():
    cfg = get_cfg_defaults()  # ALPHA 1, BETA 8, T 4, WARMUP 20, CE_WEIGHT 1
    student, teacher = _pair()
    distiller = DKD(student, teacher, cfg).train()
    image, target = _batch()
    logits, losses = distiller(image=image, target=target, epoch=5)
    assert set(losses) == {"loss_ce", "loss_kd"}
    with torch.no_grad():
        full = dkd_loss(logits, teacher(image)[0], target, 1.0, 8.0, 4.0)
    assert losses["loss_kd"].item() == pytest.approx(0.25 * full.item(), rel=1e-6)
    assert losses["loss_ce"].item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    _, late = distiller(image=image, target=target, epoch=40)
    assert late["loss_kd"].item() == pytest.approx(full.item(), rel=1e-6)

    with pytest.raises(ValueError, match="DKD.WARMUP"):
        distiller(image=image, target=target)
    cfg.DKD.WARMUP = 0
    _, no_ramp = DKD(student, teacher, cfg).train()(image=image, target=target)
    assert no_ramp["loss_kd"].item() == pytest.approx(full.item(), rel=1e-6)


# ------------------------------------------------------------------------------ CRD

NUM_DATA, K, FEAT_DIM = 10, 4, 6


def _crd_cfg():
    cfg = get_cfg_defaults()
    cfg.CRD.NCE.K = K
    cfg.CRD.FEAT.DIM = FEAT_DIM
    return cfg


def _crd_batch(batch_size: int = 3, offset: int = 0):
    image, target = _batch(batch_size)
    index = (torch.arange(batch_size) * 3 + offset) % NUM_DATA
    negatives = torch.stack([(index + j + 1) % NUM_DATA for j in range(K)], dim=1)
    return image, target, index, torch.cat([index[:, None], negatives], dim=1)


def test_nce_loss_hand_value():
    # m = 2 negatives, P_n = 1/4 -> m * P_n = 1/2.
    scores = torch.tensor([[0.5, 0.1, 0.2]], dtype=torch.float64)
    expected = -(math.log(0.5 / 1.0) + math.log(0.5 / 0.6) + math.log(0.5 / 0.7))
    assert nce_loss(scores, num_data=4).item() == pytest.approx(expected, rel=1e-6)


def test_crd_memory_shapes_buffers_and_inferred_dims():
    cfg = _crd_cfg()
    student, teacher = _pair(student_dim=8, teacher_dim=12)
    distiller = CRD(student, teacher, cfg, NUM_DATA)
    # Widths measured from the models, not cfg.CRD.FEAT.STUDENT_DIM/TEACHER_DIM (256).
    assert distiller.embed_s.linear.in_features == 8 and distiller.embed_t.linear.in_features == 12
    assert not teacher.training  # the probe restored the teacher's mode
    memory = distiller.contrast
    assert memory.memory_v1.shape == (NUM_DATA, FEAT_DIM) and memory.memory_v2.shape == (NUM_DATA, FEAT_DIM)
    stdv = 1.0 / math.sqrt(FEAT_DIM / 3)
    assert memory.memory_v1.abs().max() <= stdv and memory.memory_v2.abs().max() <= stdv
    state = distiller.state_dict()
    for key in ("contrast.memory_v1", "contrast.memory_v2", "contrast.params"):
        assert key in state
    assert memory.params.tolist()[:3] == [K, pytest.approx(0.07), -1.0]

    embed_params = [*distiller.embed_s.parameters(), *distiller.embed_t.parameters()]
    learnable = distiller.get_learnable_parameters()
    assert all(any(p is q for q in learnable) for p in embed_params)
    assert distiller.get_extra_parameters() == (8 * 6 + 6) + (12 * 6 + 6) + 2 * NUM_DATA * FEAT_DIM + 5

    cfg.DATASET.TYPE = "unknown_dataset"  # no known input shape: the config keys decide
    fallback = CRD(student, teacher, cfg, NUM_DATA)
    assert fallback.embed_s.linear.in_features == cfg.CRD.FEAT.STUDENT_DIM


def test_crd_step_loss_memory_update_and_z():
    cfg = _crd_cfg()
    student, teacher = _pair()
    distiller = CRD(student, teacher, cfg, NUM_DATA).train()
    assert not teacher.training
    teacher_bn_mean = teacher.bn.running_mean.clone()
    image, target, index, contrast_index = _crd_batch()

    memory = distiller.contrast
    old_v1, old_v2 = memory.memory_v1.clone().double().numpy(), memory.memory_v2.clone().double().numpy()
    logits, losses = distiller(image=image, target=target, index=index, contrastive_index=contrast_index, epoch=1)
    assert set(losses) == {"loss_ce", "loss_kd"}
    assert torch.isfinite(losses["loss_kd"]) and losses["loss_kd"].item() > 0

    # Embeddings, re-derived by hand: linear then unit length (the student is still in train
    # mode, so its BatchNorm normalises with the same batch statistics as in the step).
    with torch.no_grad():
        f_s = student(image)[1]["pooled_feat"].double().numpy()
        f_t = teacher(image)[1]["pooled_feat"].double().numpy()
    ws, bs = (p.detach().double().numpy() for p in distiller.embed_s.linear.parameters())
    wt, bt = (p.detach().double().numpy() for p in distiller.embed_t.linear.parameters())
    v1 = f_s @ ws.T + bs
    v1 /= np.linalg.norm(v1, axis=1, keepdims=True)
    v2 = f_t @ wt.T + bt
    v2 /= np.linalg.norm(v2, axis=1, keepdims=True)

    # Memory rows of the batch: normalize(0.5 * old + 0.5 * new); other rows untouched.
    i = int(index[1])
    row = 0.5 * old_v1[i] + 0.5 * v1[1]
    assert np.allclose(memory.memory_v1[i].double().numpy(), row / np.linalg.norm(row), atol=1e-5)
    row = 0.5 * old_v2[i] + 0.5 * v2[1]
    assert np.allclose(memory.memory_v2[i].double().numpy(), row / np.linalg.norm(row), atol=1e-5)
    untouched = sorted(set(range(NUM_DATA)) - set(index.tolist()))
    assert np.array_equal(memory.memory_v1[untouched].double().numpy(), old_v1[untouched])

    # Z = num_data * mean exp(<m, v> / T) over the first batch's scored rows (memory before update).
    T = float(np.float32(0.07))
    ci = contrast_index.numpy()
    z_v1 = NUM_DATA * np.exp(np.einsum("bkd,bd->bk", old_v2[ci], v1) / T).mean()
    z_v2 = NUM_DATA * np.exp(np.einsum("bkd,bd->bk", old_v1[ci], v2) / T).mean()
    assert memory.z.tolist() == [pytest.approx(z_v1, rel=1e-4), pytest.approx(z_v2, rel=1e-4)]

    # The full loss, re-derived: CE_WEIGHT * CE + FEAT_WEIGHT * (NCE_s + NCE_t).
    def nce(scores: np.ndarray) -> float:
        noise = K / NUM_DATA
        return -(np.log(scores[:, 0] / (scores[:, 0] + noise)).sum() + np.log(noise / (scores[:, 1:] + noise)).sum()) / len(scores)

    out_v1 = np.exp(np.einsum("bkd,bd->bk", old_v2[ci], v1) / T) / z_v1
    out_v2 = np.exp(np.einsum("bkd,bd->bk", old_v1[ci], v2) / T) / z_v2
    assert losses["loss_kd"].item() == pytest.approx(0.8 * (nce(out_v1) + nce(out_v2)), rel=1e-4)
    assert losses["loss_ce"].item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)

    # Gradients: student and both embeddings, never the teacher; teacher BN untouched.
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in student.parameters())
    for embed in (distiller.embed_s, distiller.embed_t):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in embed.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert torch.equal(teacher.bn.running_mean, teacher_bn_mean) and not teacher.training

    # Z stays fixed after the first batch.
    z_first = memory.z.clone()
    _, second = distiller(**dict(zip(("image", "target", "index", "contrastive_index"), _crd_batch(offset=1))))
    assert torch.equal(memory.z, z_first)
    assert torch.isfinite(second["loss_kd"])


def test_crd_state_dict_resume_is_exact():
    cfg = _crd_cfg()
    student, teacher = _pair()
    first = CRD(student, teacher, cfg, NUM_DATA).train()
    first(**dict(zip(("image", "target", "index", "contrastive_index"), _crd_batch())))
    batch = dict(zip(("image", "target", "index", "contrastive_index"), _crd_batch(offset=2)))

    torch.manual_seed(123)  # a different initialisation, overwritten by the checkpoint
    resumed = CRD(*_pair(), cfg, NUM_DATA).train()
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(resumed.contrast.z, first.contrast.z)
    _, expected = first(**batch)
    _, got = resumed(**batch)
    assert torch.equal(got["loss_kd"], expected["loss_kd"])
    assert torch.equal(resumed.contrast.memory_v1, first.contrast.memory_v1)


def test_crd_rejects_missing_or_mis_sized_contrastive_index():
    cfg = _crd_cfg()
    distiller = CRD(*_pair(), cfg, NUM_DATA).train()
    image, target, index, contrast_index = _crd_batch()
    with pytest.raises(ValueError, match="contrastive_index"):
        distiller(image=image, target=target, index=index)
    with pytest.raises(ValueError, match="CRD.NCE.K"):
        distiller(image=image, target=target, index=index, contrastive_index=contrast_index[:, :3])
    with pytest.raises(ValueError, match="contrastive_index"):
        ContrastMemory(FEAT_DIM, NUM_DATA, K)(torch.randn(3, FEAT_DIM), torch.randn(3, FEAT_DIM), index, None)


def test_crd_under_autocast_stays_float32_and_finite():
    """exp(<m, v> / 0.07) reaches ~1.6e6, beyond float16: the contrast must run in float32."""
    distiller = CRD(*_pair(), _crd_cfg(), NUM_DATA).train()
    batch = dict(zip(("image", "target", "index", "contrastive_index"), _crd_batch()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = distiller(**batch)
    assert torch.isfinite(losses["loss_kd"]) and losses["loss_kd"].dtype == torch.float32
    assert distiller.contrast.memory_v1.dtype == torch.float32


def test_eval_mode_returns_student_logits():
    student, teacher = _pair()
    distiller = CRD(student, teacher, _crd_cfg(), NUM_DATA).eval()
    image, _ = _batch()
    assert torch.equal(distiller(image=image), student(image)[0])
