"""OFD, VID and ReviewKD: loss pieces against closed forms on tiny tensors, state_dict layout
against mdistiller's, and (when MDISTILLER_ROOT names an mdistiller checkout) the same loss
values as mdistiller's own distillers on the same models, weights and batch.

Hand values are written out with ``math``; tolerances are float32's: a few ulps (``2**-23``
relative) per operation, times the handful of operations in each expression.
"""
from __future__ import annotations

import copy
import math
import os
import sys

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import kdharness.models  # noqa: F401  (registers the zoo)
from kdharness.config import get_cfg_defaults
from kdharness.distillers import distiller_dict
from kdharness.distillers.ofd import OFD, ofd_feature_loss, ofd_margin
from kdharness.distillers.reviewkd import ABF, ReviewKD, hcl_loss, probe_review_lists, warmup_scale
from kdharness.distillers.vid import VID, inverse_softplus, match_spatial, probe_feature_channels, vid_nll

F32_EPS = 2.0**-23
RTOL = 64 * F32_EPS  # a few dozen float32 operations per value, each within half an ulp


def _cfg(**overrides):
    cfg = get_cfg_defaults()
    cfg.merge_from_list([item for pair in overrides.items() for item in pair])
    return cfg


def _models(student: str = "cifar_resnet8x4", teacher: str = "cifar_resnet32x4", num_classes: int = 10):
    torch.manual_seed(0)
    s = timm.create_model(student, num_classes=num_classes)
    t = timm.create_model(teacher, num_classes=num_classes)
    t.requires_grad_(False)
    return s, t


def test_registered_under_mdistillers_names():
    assert distiller_dict["OFD"] is OFD and distiller_dict["VID"] is VID and distiller_dict["REVIEWKD"] is ReviewKD


# --------------------------------------------------------------------------------- OFD


def test_ofd_margin_closed_form():
    # beta = 0, gamma = +-2: E[x | x < 0] of N(0, 4) = -2 * phi(0) / (1/2) = -2 * 2 / sqrt(2 pi).
    # beta = 1, gamma = 1: 1 - phi(1) / Phi(-1), Phi(-1) = erfc(1/sqrt2)/2.
    # beta = 10, gamma = 1: P(x < 0) = Phi(-10) < 1e-3, so the margin is -3 * |gamma| = -3.
    gamma = torch.tensor([2.0, -2.0, 1.0, 1.0])
    beta = torch.tensor([0.0, 0.0, 1.0, 10.0])
    phi1 = math.exp(-0.5) / math.sqrt(2 * math.pi)
    expected = [-4 / math.sqrt(2 * math.pi)] * 2 + [1 - phi1 / (0.5 * math.erfc(1 / math.sqrt(2))), -3.0]
    got = ofd_margin(gamma, beta)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx(expected, rel=1e-12)


def test_ofd_feature_loss_each_region():
    # One channel, margin -1; teacher values in the three regions, student above / below.
    margin = torch.tensor([-1.0]).view(1, 1, 1, 1)
    t = torch.tensor([[2.0, 2.0, -0.5, -0.5, -3.0, -3.0]]).view(1, 1, 1, 6)
    s = torch.tensor([[1.0, 3.0, 0.5, -2.0, 0.0, -2.0]]).view(1, 1, 1, 6)
    # t > 0: (s-t)^2 = 1, 1; -1 < t <= 0: s > t -> (1)^2 = 1, else 0; t <= -1: s > -1 -> (0+1)^2 = 1, else 0.
    assert ofd_feature_loss(s, t, margin).item() == 4.0
    # Batch mean, channel/space sum: a second sample with zero error halves it.
    s2, t2 = torch.cat([s, t]), torch.cat([t, t])
    assert ofd_feature_loss(s2, t2, margin).item() == 2.0


def test_ofd_modules_state_dict_and_stage_weights():
    student, teacher = _models()
    ofd = OFD(student, teacher, _cfg())
    keys = {k: tuple(v.shape) for k, v in ofd.state_dict().items() if not k.startswith(("student.", "teacher."))}
    # resnet8x4 stages 64/128/256 -> resnet32x4 64/128/256 (mdistiller's layout).
    for i, c in enumerate((64, 128, 256)):
        assert keys[f"connectors.connectors.{i}.0.weight"] == (c, c, 1, 1)
        assert keys[f"connectors.connectors.{i}.1.weight"] == (c,)
        assert keys[f"connectors.connectors.{i}.1.running_var"] == (c,)
    assert len(keys) == 3 * 6 and not any("margin" in k for k in keys)
    bns = teacher.get_bn_before_relu()
    for margin, bn in zip(ofd.margins, bns):
        assert torch.equal(margin.view(-1), ofd_margin(bn.weight, bn.bias).float())
    assert ofd.get_extra_parameters() == sum(p.numel() for p in ofd.connectors.parameters())
    ofd.train()
    assert ofd.teacher.training  # as mdistiller: the teacher runs in training mode under OFD

    # ofd_loss = sum_i loss_i / 2^(n-1-i): check against the pieces.
    feats_s = [torch.randn(2, c, h, h) for c, h in ((64, 8), (128, 4), (256, 2))]
    feats_t = [torch.randn(2, c, 2 * h, 2 * h) for c, h in ((64, 8), (128, 4), (256, 2))]
    with torch.no_grad():
        got = ofd.ofd_loss(feats_s, feats_t)
        ofd.connectors.eval()  # the pieces below must see the same BN statistics
        got = ofd.ofd_loss(feats_s, feats_t)
        pieces = [
            ofd_feature_loss(conn(f_s), F.adaptive_avg_pool2d(f_t, f_s.shape[-2:]), m) / 2 ** (2 - i)
            for i, (conn, f_s, f_t, m) in enumerate(zip(ofd.connectors.connectors, feats_s, feats_t, ofd.margins))
        ]
    assert got.item() == pytest.approx(sum(p.item() for p in pieces), rel=RTOL)


def test_ofd_rejects_shufflenet_teacher_and_bad_kernel():
    student, _ = _models()
    with pytest.raises(NotImplementedError, match="OFD teacher"):
        OFD(student, timm.create_model("cifar_ShuffleV2", num_classes=10), _cfg())
    with pytest.raises(ValueError, match="OFD.CONNECTOR.KERNEL_SIZE"):
        OFD(*_models(), _cfg(**{"OFD.CONNECTOR.KERNEL_SIZE": 2}))


# --------------------------------------------------------------------------------- VID


def test_vid_nll_closed_form():
    # alpha with softplus(alpha) = 2 - eps: variance 2; mean 1, target 3: 0.5 * (4 / 2 + ln 2).
    eps = 1e-5
    alpha = torch.full((1,), inverse_softplus(2.0 - eps))
    got = vid_nll(torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 3.0), alpha, eps)
    assert got.item() == pytest.approx(0.5 * (2.0 + math.log(2.0)), rel=RTOL)


def test_vid_match_spatial_pools_the_larger_map():
    a, b = torch.arange(16.0).view(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)
    pa, pb = match_spatial(a, b)
    assert pb is b and pa.shape == (1, 1, 2, 2)
    assert pa.view(-1).tolist() == [2.5, 4.5, 10.5, 12.5]  # means of the 2x2 quadrants
    pb2, pa2 = match_spatial(b, a)
    assert pb2 is b and torch.equal(pa2, pa)


def test_vid_state_dict_constant_variance_and_untouched_models():
    student, teacher = _models()
    student_stats = copy.deepcopy(student.state_dict())
    rng = torch.get_rng_state()
    assert probe_feature_channels(student, (32, 32)) == [32, 64, 128, 256]
    assert torch.equal(torch.get_rng_state(), rng)  # the width probe draws no random numbers
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in student_stats.items())  # nor moves BN stats
    assert student.training  # and leaves the mode as it found it
    vid = VID(student, teacher, _cfg())
    keys = {k: tuple(v.shape) for k, v in vid.state_dict().items() if not k.startswith(("student.", "teacher."))}
    assert keys == {
        f"regressors.{i}.{j}.weight": shape
        for i, (s, t) in enumerate(((64, 64), (128, 128), (256, 256)))
        for j, shape in ((0, (t, s, 1, 1)), (2, (t, t, 1, 1)), (4, (t, t, 1, 1)))
    }
    expected_var = 5.0  # softplus(alpha) + eps = INIT_PRED_VAR
    for scale in vid.log_scales:
        assert (torch.log1p(torch.exp(scale.double())) + 1e-5).tolist() == pytest.approx([expected_var] * len(scale), rel=RTOL)
    params = {id(p) for p in vid.get_learnable_parameters()}
    assert not any(id(s) in params for s in vid.log_scales)


# ------------------------------------------------------------------------------- ReviewKD


def test_hcl_closed_form():
    # 4x4 maps differing by a constant c everywhere: every pooled level differs by c as well.
    # Levels used for h = 4: full, 2x2 (w 1/4... ) -- sides 4 >= 4 is skipped, then 2 (w 1/2), 1 (w 1/4).
    c = 3.0
    fs, ft = torch.full((2, 3, 4, 4), c), torch.zeros(2, 3, 4, 4)
    assert hcl_loss([fs], [ft]).item() == pytest.approx(c * c, rel=RTOL)
    # A zero-mean difference (+1/-1 checkerboard): MSE 1 at full size, 0 once pooled to 2x2 / 1x1.
    sign = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(2, 2).view(1, 1, 4, 4)
    assert hcl_loss([sign], [torch.zeros(1, 1, 4, 4)]).item() == pytest.approx(1.0 / (1 + 0.5 + 0.25), rel=RTOL)
    # 1x1 maps use the full MSE only; pairs add up.
    one = hcl_loss([torch.ones(1, 2, 1, 1), sign], [torch.zeros(1, 2, 1, 1), torch.zeros(1, 1, 4, 4)])
    assert one.item() == pytest.approx(1.0 + 1.0 / 1.75, rel=RTOL)


@pytest.mark.parametrize("epoch, expected", [(1, 1 / 20), (10, 0.5), (20, 1.0), (100, 1.0)])
def test_reviewkd_warmup(epoch: int, expected: float):
    assert warmup_scale(epoch, 20) == expected


def test_abf_fusion_by_hand():
    torch.manual_seed(0)
    abf = ABF(in_channel=3, mid_channel=2, out_channel=4, fuse=True).eval()
    x, residual = torch.randn(1, 3, 4, 4), torch.randn(1, 2, 2, 2)
    out, fused = abf(x, residual, shape=4, out_shape=4)
    with torch.no_grad():
        projected = abf.conv1(x)
        up = residual.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest x2
        weights = torch.sigmoid(F.conv2d(torch.cat([projected, up], 1), abf.att_conv[0].weight, abf.att_conv[0].bias))
        expected = projected * weights[:, :1] + up * weights[:, 1:]
    assert torch.allclose(fused, expected, rtol=RTOL, atol=RTOL)
    assert out.shape == (1, 4, 4, 4)


def test_reviewkd_state_dict_layout_and_loss_ramp():
    student, teacher = _models()
    rkd = ReviewKD(student, teacher, _cfg())
    keys = {k: tuple(v.shape) for k, v in rkd.state_dict().items() if not k.startswith(("student.", "teacher."))}
    # Deepest first: abfs.0 maps the pooled 256-d feature (no fusion), abfs.3 the 64-channel stage.
    assert keys["abfs.0.conv1.0.weight"] == (256, 256, 1, 1) and "abfs.0.att_conv.0.weight" not in keys
    assert keys["abfs.3.conv1.0.weight"] == (256, 64, 1, 1) and keys["abfs.3.conv2.0.weight"] == (64, 256, 3, 3)
    assert keys["abfs.1.att_conv.0.weight"] == (2, 512, 1, 1) and keys["abfs.1.att_conv.0.bias"] == (2,)
    torch.manual_seed(1)
    image, target = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    rkd.train()
    state = copy.deepcopy(rkd.state_dict())
    losses = {}
    for epoch in (1, 10, 100):
        rkd.load_state_dict(state)
        _, out = rkd(image=image, target=target, epoch=epoch)
        losses[epoch] = out["loss_kd"].item()
    assert losses[1] == pytest.approx(losses[100] / 20, rel=RTOL)
    assert losses[10] == pytest.approx(losses[100] / 2, rel=RTOL)
    with pytest.raises(ValueError, match="epoch"):
        rkd(image=image, target=target)
    with pytest.raises(ValueError, match="REVIEWKD.SHAPES"):
        ReviewKD(student, teacher, _cfg(**{"REVIEWKD.SHAPES": "[1, 8]"}))


def test_reviewkd_lists_left_at_their_defaults_follow_the_models():
    """Issue 23: mdistiller's defaults are resnet32x4's; on resnet14 -> resnet8 (Fashion-MNIST)
    they ended in 'expected input[64, 64, 1, 1] to have 256 channels'. Left at their defaults,
    the lists are now the models' own, and the ImageNet configs' lists are what the probe finds."""
    student, teacher = _models("cifar_resnet8", "cifar_resnet14")
    rkd = ReviewKD(student, teacher, _cfg()).train()
    assert rkd.abfs[0].conv1[0].weight.shape == (64, 64, 1, 1)  # pooled 64-d feature, common width 64
    assert [abf.conv2[0].out_channels for abf in rkd.abfs] == [64, 64, 32, 16]  # deepest first
    assert rkd.shapes == [1, 8, 16, 32] and rkd.out_shapes == [1, 8, 16, 32]
    _, losses = rkd(image=torch.randn(4, 3, 32, 32), target=torch.randint(0, 10, (4,)), epoch=30)
    assert torch.isfinite(losses["loss_kd"]) and losses["loss_kd"].item() > 0
    big_student, big_teacher = _models("imagenet_MobileNetV1", "imagenet_ResNet50")
    assert probe_review_lists(big_student, big_teacher) == {  # configs/imagenet/reviewkd/r50_mv1.yaml
        "IN_CHANNELS": [128, 256, 512, 1024, 1024], "OUT_CHANNELS": [256, 512, 1024, 2048, 2048],
        "SHAPES": [1, 7, 14, 28, 56], "OUT_SHAPES": [1, 7, 14, 28, 56]}


def test_reviewkd_channel_lists_that_do_not_fit_are_refused_naming_keys_and_channels():
    student, teacher = _models("cifar_resnet8", "cifar_resnet14")
    with pytest.raises(ValueError, match=r"REVIEWKD\.IN_CHANNELS = \[8, 8, 8, 8\] does not fit.* "
                                         r"\[16, 32, 64, 64\] channels \(REVIEWKD\.IN_CHANNELS\)"):
        ReviewKD(student, teacher, _cfg(**{"REVIEWKD.IN_CHANNELS": "[8, 8, 8, 8]"}))
    with pytest.raises(ValueError, match=r"REVIEWKD\.IN_CHANNELS = .* and REVIEWKD\.OUT_CHANNELS = \[16, 32, 64\] do not"):
        ReviewKD(student, teacher, _cfg(**{"REVIEWKD.IN_CHANNELS": "[8, 8, 8, 8]", "REVIEWKD.OUT_CHANNELS": "[16, 32, 64]"}))
    ReviewKD(student, teacher, _cfg(**{"REVIEWKD.IN_CHANNELS": "[16, 32, 64, 64]"}))  # set by hand and right: kept


@pytest.mark.parametrize("name", ["OFD", "VID", "REVIEWKD"])
def test_gradients_reach_student_and_added_modules_only(name: str):
    student, teacher = _models()
    distiller = distiller_dict[name](student, teacher, _cfg())
    distiller.train()
    _, losses = distiller(image=torch.randn(4, 3, 32, 32), target=torch.randint(0, 10, (4,)), epoch=30)
    sum(losses.values()).backward()
    learnable = distiller.get_learnable_parameters()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in learnable)
    assert all(p.grad is None for p in teacher.parameters())
    extra = [p for p in learnable if all(p is not q for q in student.parameters())]
    assert sum(p.numel() for p in extra) == distiller.get_extra_parameters() > 0


# ------------------------------------------------------------- against a real mdistiller checkout

MDISTILLER_ROOT = os.environ.get("MDISTILLER_ROOT")
PAIRS = [("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("wrn_40_2", "wrn_16_2"), ("ResNet50", "MobileNetV2")]


@pytest.fixture(scope="module")
def mdistiller():
    if not MDISTILLER_ROOT:
        pytest.skip("set MDISTILLER_ROOT to an mdistiller checkout to compare against it")
    pytest.importorskip("scipy")  # mdistiller's OFD imports scipy.stats
    sys.path.insert(0, MDISTILLER_ROOT)
    from mdistiller.distillers import distiller_dict as md_distillers
    from mdistiller.engine.cfg import CFG as MD_CFG
    from mdistiller.models import cifar_model_dict

    return md_distillers, MD_CFG, cifar_model_dict


@pytest.mark.slow
@pytest.mark.parametrize("name", ["OFD", "VID", "REVIEWKD"])
@pytest.mark.parametrize("teacher_name, student_name", PAIRS)
def test_same_losses_and_keys_as_mdistiller(mdistiller, name: str, teacher_name: str, student_name: str):
    md_distillers, md_cfg, md_models = mdistiller
    if name == "OFD" and student_name == "MobileNetV2":
        pytest.skip("mdistiller's OFD cannot run this pair (its MobileNetV2 has no preact_feats)")
    if name == "REVIEWKD" and (teacher_name, student_name) != ("resnet32x4", "resnet8x4"):
        pytest.skip("REVIEWKD's shapes/channels are configured for resnet32x4 -> resnet8x4 only")
    torch.manual_seed(0)
    md_student = md_models[student_name][0](num_classes=100)
    md_teacher = md_models[teacher_name][0](num_classes=100)
    with torch.no_grad():  # a teacher with non-trivial BN parameters and statistics
        for module in md_teacher.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    md = md_distillers[name](md_student, md_teacher, md_cfg)
    ours_student = timm.create_model(f"cifar_{student_name}", num_classes=100)
    ours_teacher = timm.create_model(f"cifar_{teacher_name}", num_classes=100)
    ours_teacher.load_state_dict(md_teacher.state_dict())
    ours = distiller_dict[name](ours_student, ours_teacher, _cfg())
    md_state = md.state_dict()
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert ours_shapes == {k: tuple(v.shape) for k, v in md_state.items()}
    ours.load_state_dict(md_state)  # an mdistiller checkpoint loads here
    torch.manual_seed(2)
    image, target = torch.randn(8, 3, 32, 32), torch.randint(0, 100, (8,))
    for epoch in (1, 10, 100):
        md.load_state_dict(md_state)
        ours.load_state_dict(md_state)
        md.train(), ours.train()
        _, md_losses = md(image=image, target=target, epoch=epoch)
        _, our_losses = ours(image=image, target=target, epoch=epoch)
        assert set(our_losses) == set(md_losses)
        for key in md_losses:
            # Same operations on the same values, summed possibly in another order: a few
            # ulps per reduction step over ~1e5 elements bounds the relative error by ~1e-5.
            assert our_losses[key].item() == pytest.approx(md_losses[key].item(), rel=1e-5), (key, epoch)
        # Same running statistics afterwards (OFD's teacher runs in training mode in both).
        for (k, a), b in zip(md.state_dict().items(), ours.state_dict().values()):
            assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), k


# ------------------------------------------------------------------------------- configs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MY_CONFIGS = sorted(
    os.path.relpath(os.path.join(folder, name), REPO)
    for sub in ("cifar100/ofd", "cifar100/vid", "cifar100/reviewkd", "cifar100/dot", "imagenet/at",
                "imagenet/ofd", "imagenet/reviewkd", "imagenet/dot", "tiny_imagenet/dot")
    for folder in [os.path.join(REPO, "configs", sub)]
    for name in os.listdir(folder)
)


@pytest.mark.parametrize("path", MY_CONFIGS)
def test_configs_load_and_dot_pairs_have_published_figures(path: str):
    from kdharness.compose import load_config
    from kdharness.engine.trainer import method_name
    from kdharness.results.reference import load_reference, reference_by_pair

    cfg = load_config(os.path.join(REPO, path))
    assert cfg.DISTILLER.TYPE in path.upper().replace("/DOT/", "/KD/") or cfg.SOLVER.TRAINER == "dot"
    published = reference_by_pair(load_reference()).get((cfg.DATASET.TYPE, cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT), {})
    if cfg.SOLVER.TRAINER == "dot":
        assert method_name(cfg) == "KD+DOT" and "KD+DOT" in published
    if cfg.DISTILLER.TYPE == "VID":
        assert "VID" in published


@pytest.mark.parametrize("name", ["OFD", "VID", "REVIEWKD"])
def test_losses_stay_float32_under_autocast(name: str):
    # The networks may run in bfloat16/float16; the feature losses (sums of many squares, logs
    # of variances) are computed in float32 (kdharness/distillers/_numerics.py).
    student, teacher = _models()
    distiller = distiller_dict[name](student, teacher, _cfg())
    distiller.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = distiller(image=torch.randn(2, 3, 32, 32), target=torch.randint(0, 10, (2,)), epoch=30)
    assert losses["loss_kd"].dtype == torch.float32 and torch.isfinite(losses["loss_kd"])


@pytest.mark.parametrize("path", [p for p in MY_CONFIGS if p.startswith("configs/imagenet/") and "/dot/" not in p])
def test_imagenet_configs_build_and_step_at_224(path: str):
    """The ImageNet configs' channel/shape lists fit the models: one step on two 224x224 images."""
    from kdharness.compose import load_config
    from kdharness.models import create_model

    cfg = load_config(os.path.join(REPO, path))
    torch.manual_seed(0)
    student = create_model(cfg.DISTILLER.STUDENT, "imagenet", 10)
    teacher = create_model(cfg.DISTILLER.TEACHER, "imagenet", 10).requires_grad_(False)
    distiller = distiller_dict[cfg.DISTILLER.TYPE](student, teacher, cfg)
    distiller.train()
    _, losses = distiller(image=torch.randn(2, 3, 224, 224), target=torch.tensor([1, 2]), epoch=1)
    assert set(losses) == {"loss_ce", "loss_kd"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
