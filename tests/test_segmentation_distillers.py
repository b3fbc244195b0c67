"""Pixel-wise KD and CWD against their equations, worked by hand on two-class maps, and against
CIRKD's formulation; the distillers' refusal of classification configs; their loss dicts."""
from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

import kdharness.models  # noqa: F401  (registers the models)
from kdharness.compose import check_distiller_config, load_builtin_components
from kdharness.config import ConfigError, get_cfg_defaults
from kdharness.distillers.cwd import CWD, cwd_loss
from kdharness.distillers.pixel_kd import PixelKD, pixel_kd_loss

LN3 = math.log(3.0)
F64 = torch.float64  # hand values in float64: the losses keep float64 inputs as they are


def _kl_two(p: float, q: float) -> float:
    """KL([p, 1-p] || [q, 1-q])."""
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def test_pixel_kd_by_hand():
    # one pixel, teacher logits (ln 3, 0) -> p_t = (3/4, 1/4); student (0, 0) -> (1/2, 1/2)
    teacher = torch.tensor([LN3, 0.0], dtype=F64).reshape(1, 2, 1, 1)
    student = torch.zeros(1, 2, 1, 1, dtype=F64)
    assert float(pixel_kd_loss(student, teacher, 1.0)) == pytest.approx(_kl_two(0.75, 0.5))  # 0.130812
    # T = 2: p_t = softmax(ln3 / 2, 0) = (sqrt3 / (sqrt3 + 1), ...); times T^2
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    assert float(pixel_kd_loss(student, teacher, 2.0)) == pytest.approx(4 * _kl_two(p, 0.5))
    # a second pixel where both agree halves the mean (the mean is over pixels)
    teacher2 = torch.tensor([[LN3, 1.0], [0.0, 1.0]], dtype=F64).reshape(1, 2, 1, 2)
    student2 = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=F64).reshape(1, 2, 1, 2)
    assert float(pixel_kd_loss(student2, teacher2, 1.0)) == pytest.approx(_kl_two(0.75, 0.5) / 2)


def test_cwd_by_hand():
    # one channel over two pixels: spatial softmax of teacher (ln 3, 0) = (3/4, 1/4), student uniform
    teacher = torch.tensor([LN3, 0.0], dtype=F64).reshape(1, 1, 1, 2)
    student = torch.zeros(1, 1, 1, 2, dtype=F64)
    assert float(cwd_loss(student, teacher, 1.0)) == pytest.approx(_kl_two(0.75, 0.5))
    # T = 4: p_t = softmax(ln3 / 4, 0), times T^2 = 16
    p = 3 ** 0.25 / (3 ** 0.25 + 1)
    assert float(cwd_loss(student, teacher, 4.0)) == pytest.approx(16 * _kl_two(p, 0.5))
    # a second channel (same pixels) that agrees: the sum is divided by B * C = 2
    teacher2 = torch.stack([teacher[0, 0], torch.zeros(1, 2, dtype=F64)]).unsqueeze(0)
    student2 = torch.zeros(1, 2, 1, 2, dtype=F64)
    assert float(cwd_loss(student2, teacher2, 1.0)) == pytest.approx(_kl_two(0.75, 0.5) / 2)
    # and a second image: B * C = 4
    assert float(cwd_loss(student2.repeat(2, 1, 1, 1), torch.cat([teacher2, torch.zeros_like(teacher2)]), 1.0)) == pytest.approx(
        _kl_two(0.75, 0.5) / 4)


def test_cwd_normalises_over_positions_not_classes():
    # a channel shifted by a constant over all positions has the same spatial softmax: no loss,
    # although each pixel's class distribution changed
    student = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    shifted = student + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64).reshape(1, 3, 1, 1)
    assert float(cwd_loss(student, shifted, 4.0)) == pytest.approx(0.0, abs=1e-12)
    assert float(pixel_kd_loss(student, shifted, 1.0)) > 1e-3


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_both_match_cirkd_formulations(temperature):
    """CIRKD's CriterionKD (pixels as rows, batchmean) and CriterionCWD (channel norm, KL sum / (n c))."""
    generator = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, 3, 4, generator=generator, dtype=torch.float64)
    t = torch.randn(2, 5, 3, 4, generator=generator, dtype=torch.float64)
    rows_s = s.permute(0, 2, 3, 1).reshape(-1, 5)
    rows_t = t.permute(0, 2, 3, 1).reshape(-1, 5)
    kd = F.kl_div(F.log_softmax(rows_s / temperature, 1), F.softmax(rows_t / temperature, 1), reduction="batchmean")
    assert float(pixel_kd_loss(s, t, temperature)) == pytest.approx(float(kd) * temperature**2, rel=1e-10)
    norm_s = (s / temperature).reshape(2, 5, -1).softmax(-1)
    norm_t = (t / temperature).reshape(2, 5, -1).softmax(-1)
    cwd = F.kl_div(norm_s.log(), norm_t, reduction="sum") / (2 * 5)
    assert float(cwd_loss(s, t, temperature)) == pytest.approx(float(cwd) * temperature**2, rel=1e-10)


def _seg_cfg(method: str):
    load_builtin_components()
    cfg = get_cfg_defaults()
    cfg.DATASET.TYPE, cfg.DATASET.TASK = "fashion_mnist_scenes", "segmentation"
    cfg.DISTILLER.TYPE = method
    return cfg


@pytest.mark.parametrize("cls, method", [(PixelKD, "PIXEL_KD"), (CWD, "CWD")])
def test_distillers_train_and_refuse_classification(cls, method):
    cfg = _seg_cfg(method)
    student = timm.create_model("seg_deeplabv3_cifar_resnet8", num_classes=11)
    teacher = timm.create_model("seg_deeplabv3_cifar_resnet14x2", num_classes=11)
    distiller = cls(student, teacher, cfg).train()
    student.eval()  # no dropout, fixed BN statistics: the loss can be recomputed below
    image = torch.randn(2, 3, 32, 32)
    target = torch.randint(0, 11, (2, 32, 32))
    logits, losses = distiller(image=image, target=target, epoch=1)
    assert logits.shape == (2, 11, 32, 32)
    assert set(losses) == {"loss_ce", "loss_kd"} and all(torch.isfinite(v) for v in losses.values())
    _, feats_s = student(image)
    with torch.no_grad():
        _, feats_t = teacher(image)
    loss_fn = pixel_kd_loss if method == "PIXEL_KD" else cwd_loss
    temperature = 1.0 if method == "PIXEL_KD" else 4.0
    weight = 1.0 if method == "PIXEL_KD" else 3.0
    expected = weight * loss_fn(feats_s["dense_logits"], feats_t["dense_logits"], temperature)
    assert losses["loss_kd"].item() == pytest.approx(expected.item(), rel=1e-5)
    sum(losses.values()).backward()
    assert student.classifier.weight.grad is not None and teacher.classifier.weight.grad is None

    classification = get_cfg_defaults()
    classification.DISTILLER.TYPE = method
    with pytest.raises(ConfigError, match=f"{method} is for segmentation; DATASET.TASK = 'classification'"):
        check_distiller_config(classification)
    with pytest.raises(ValueError, match="DATASET.TASK"):
        cls(student, teacher, classification)


def test_classification_methods_refuse_segmentation_but_kd_and_vanilla_train_both():
    cfg = _seg_cfg("DKD")
    with pytest.raises(ConfigError, match="DKD is for classification.*NONE, KD, PIXEL_KD, CWD"):
        check_distiller_config(cfg)
    for method in ("NONE", "KD"):
        cfg.DISTILLER.TYPE = method
        check_distiller_config(cfg)


def test_teacher_map_of_another_size_is_resized_to_the_students():
    from kdharness.distillers._dense import dense_logits

    student, teacher = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 16, 16)
    s, t = dense_logits({"dense_logits": student}, {"dense_logits": teacher})
    assert s is student and t.shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="dense_logits"):
        dense_logits({"feats": []}, {"dense_logits": teacher})
