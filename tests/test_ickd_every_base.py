"""ICKD on every registered distiller: ICKD.BASE may name any of them.

For each base, on real zoo models (resnet14 -> resnet8, three classes): the teacher runs once
per step (replayed to the base, feature-based bases included), and with PICD and NICD
weighted 0 the ICKD+base step is the base's own step, bit for bit: the same loss terms, the
same gradients on every learnable parameter, the same teacher mode and BN statistics. The
two runs execute the same float32 operations on the same values in the same order, so the
comparison is exact (torch.equal), not approximate.
"""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch.utils.data import DataLoader
from types import SimpleNamespace

import ickd_plugin
import kdharness.models  # noqa: F401  (registers the zoo)
from kdharness.config import CFG, get_cfg_defaults
from kdharness.distillers import distiller_dict
from kdharness.registry import trainer_dict
from test_ickd_distiller import AddNoise, Identity, TensorSet, count_forwards

ickd_plugin.register(distiller_dict, CFG, trainer_dict)  # idempotent; the entry point does the same

NUM_CLASSES, PER_CLASS, BATCH, CRD_K = 3, 6, 6, 4
NUM_DATA = NUM_CLASSES * PER_CLASS
# the classification bases (segmentation's PIXEL_KD and CWD declare tasks = ("segmentation",))
BASES = sorted(name for name in distiller_dict
               if name != "ICKD" and "classification" in getattr(distiller_dict[name], "tasks", ("classification",)))


def _cfg(base: str):
    cfg = get_cfg_defaults()
    cfg.merge_from_list([
        "ICKD.BASE", base, "ICKD.K", 2, "ICKD.N", 3, "ICKD.WARMUP", 0, "ICKD.BANK.USE_CACHE", False,
        "ICKD.PICD_WEIGHT", 0.0, "ICKD.NICD_WEIGHT", 0.0,
        "CRD.NCE.K", CRD_K, "CRD.FEAT.DIM", 8,
        # resnet8 / resnet14 widths: stages 16-32-64 and the pooled 64-d feature.
        "REVIEWKD.IN_CHANNELS", [16, 32, 64, 64], "REVIEWKD.OUT_CHANNELS", [16, 32, 64, 64],
    ])
    return cfg


def _data() -> tuple[TensorSet, TensorSet]:
    generator = torch.Generator().manual_seed(0)
    targets = [c for c in range(NUM_CLASSES) for _ in range(PER_CLASS)]
    images = torch.randn(NUM_DATA, 3, 32, 32, generator=generator) + torch.tensor(targets).view(-1, 1, 1, 1).float()
    return TensorSet(images, targets, AddNoise()), TensorSet(images[:BATCH], targets[:BATCH], Identity())


def _networks():
    torch.manual_seed(0)
    student = timm.create_model("cifar_resnet8", num_classes=NUM_CLASSES)
    teacher = timm.create_model("cifar_resnet14", num_classes=NUM_CLASSES)
    teacher.requires_grad_(False)
    return student, teacher


def _build(name: str, student, teacher, cfg):
    cls = distiller_dict[name]
    kwargs = {"num_data": NUM_DATA} if name in ("CRD", "ICKD") else {}
    return cls(copy.deepcopy(student), copy.deepcopy(teacher), cfg, **kwargs)


def _own_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if not k.startswith(("student.", "teacher."))}


@pytest.mark.parametrize("base", BASES)
def test_ickd_with_zero_weights_is_the_base_step(base: str):
    cfg = _cfg(base)
    student, teacher = _networks()
    alone = _build(base, student, teacher, cfg)
    ickd = _build("ICKD", student, teacher, cfg)
    # The base inside ICKD has the same modules (connectors, regressors, memories ...) under
    # the same keys; give it the same initial values.
    assert set(_own_state(ickd.base)) == set(_own_state(alone))
    ickd.base.load_state_dict(_own_state(alone), strict=True)

    train_set, val_set = _data()
    trainer = SimpleNamespace(
        distiller=ickd, cfg=cfg,
        train_loader=DataLoader(train_set, batch_size=BATCH), val_loader=DataLoader(val_set, batch_size=BATCH),
    )
    ickd.trainer_hooks()[0].before_train(trainer)
    alone.train(), ickd.train()
    if alone.teacher is not None:
        # The base decides its teacher's mode (OFD keeps it training), and ICKD follows.
        assert ickd.teacher.training == alone.teacher.training

    image, target, index = next(iter(trainer.train_loader))
    batch = {"image": image, "target": target, "index": index, "epoch": 3}
    generator = torch.Generator().manual_seed(1)
    others = torch.randint(0, NUM_DATA, (BATCH, CRD_K), generator=generator)
    batch["contrastive_index"] = torch.cat([index.view(-1, 1), others], dim=1)

    teacher_calls = count_forwards(ickd.teacher)
    torch.manual_seed(2)
    logits_alone, losses_alone = alone(**batch)
    torch.manual_seed(2)
    logits_ickd, losses_ickd = ickd(**batch)

    assert teacher_calls[0] == 1, "one teacher pass per step, replayed to the base"
    assert torch.equal(logits_ickd, logits_alone)
    assert set(losses_ickd) == set(losses_alone) | {"loss_picd", "loss_nicd"}
    for key, value in losses_alone.items():
        assert torch.equal(losses_ickd[key], value), key
    assert losses_ickd["loss_picd"].item() == 0.0 and losses_ickd["loss_nicd"].item() == 0.0

    sum(v.mean() for v in losses_alone.values()).backward()
    sum(v.mean() for v in losses_ickd.values()).backward()
    params_alone, params_ickd = alone.get_learnable_parameters(), ickd.get_learnable_parameters()
    assert len(params_alone) == len(params_ickd)
    for p, q in zip(params_alone, params_ickd):
        assert p.shape == q.shape
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad)
    # Buffers after the step: BN statistics (OFD's training-mode teacher too), CRD's memories.
    state_alone = alone.state_dict()
    state_ickd = {k.removeprefix("base."): v for k, v in ickd.state_dict().items()}
    for key, value in state_alone.items():
        assert torch.equal(state_ickd[key], value), key
