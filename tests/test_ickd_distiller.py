"""ICKD distiller: one step per base x paradigm, one teacher pass per step, gradients, bank refresh.

Also home of the tiny stand-ins (network, dataset, trainer, base distillers) that the other
test_ickd_* files import: no dependency on the host's model zoo or data.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from yacs.config import CfgNode as CN

from ickd_plugin import get_ickd_defaults, ickd_distiller_class
from ickd_plugin.distiller import INDEX_STASH

IN_DIM, FEAT_DIM, NUM_CLASSES, PER_CLASS = 12, 6, 3, 6

# Float values against float64 references: run again on a second kernel path by scripts/test.sh.
pytestmark = pytest.mark.numerics


# ----------------------------------------------------------------------------- stand-ins


class TinyNet(nn.Module):
    """(logits, {"pooled_feat", "feats", "preact_feats"}) like the host's zoo, with fc + get_classifier()."""

    def __init__(self, in_dim: int = IN_DIM, dim: int = FEAT_DIM, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_dim, dim), nn.BatchNorm1d(dim), nn.ReLU())
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor):
        pooled = self.body(x.flatten(1))
        return self.fc(pooled), {"pooled_feat": pooled, "feats": [pooled], "preact_feats": [pooled]}

    def get_classifier(self) -> nn.Linear:
        return self.fc


def count_forwards(model: nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    return calls


class AddNoise:
    """The 'augmentation' of the stand-in training set (random, so the bank must not use it)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * torch.randn_like(x)

    def __repr__(self) -> str:
        return "AddNoise(0.1)"


class Identity:
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def __repr__(self) -> str:
        return "Identity()"


class TensorSet(Dataset):
    """(image, target, index) with a plain `transform` attribute, like IndexedDataset / CIFAR100Instance."""

    def __init__(self, images: torch.Tensor, targets: list[int], transform=None) -> None:
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        image = self.images[i]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[i], i


def make_data(per_class: int = PER_CLASS, seed: int = 0) -> tuple[TensorSet, TensorSet]:
    generator = torch.Generator().manual_seed(seed)
    targets = [c for c in range(NUM_CLASSES) for _ in range(per_class)]
    centers = torch.randn(NUM_CLASSES, IN_DIM, generator=generator) * 2
    images = centers[targets] + torch.randn(len(targets), IN_DIM, generator=generator)
    return TensorSet(images, targets, AddNoise()), TensorSet(images[:6], targets[:6], Identity())


def make_trainer(distiller: nn.Module, batch_size: int = 6) -> SimpleNamespace:
    train_set, val_set = make_data()
    return SimpleNamespace(
        distiller=distiller,
        train_loader=DataLoader(train_set, batch_size=batch_size, shuffle=True),
        val_loader=DataLoader(val_set, batch_size=batch_size),
        cfg=distiller.cfg if hasattr(distiller, "cfg") else None,
    )


class Vanilla(nn.Module):
    """mdistiller's NONE: takes the student only."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def get_learnable_parameters(self):
        return [v for _, v in self.student.named_parameters()]

    def get_extra_parameters(self) -> int:
        return 0

    def forward_train(self, image, target, **kwargs):
        logits, _ = self.student(image)
        return logits, {"loss_ce": F.cross_entropy(logits, target)}


class KD(nn.Module):
    """mdistiller's KD shape: (student, teacher, cfg); calls the teacher under no_grad."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: CN) -> None:
        super().__init__()
        self.student, self.teacher, self.temperature = student, teacher, cfg.KD.TEMPERATURE

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def get_learnable_parameters(self):
        return [v for _, v in self.student.named_parameters()]

    def get_extra_parameters(self) -> int:
        return 0

    def forward_train(self, image, target, **kwargs):
        logits_student, _ = self.student(image)
        with torch.no_grad():
            logits_teacher, _ = self.teacher(image)
        t = self.temperature
        loss_kd = F.kl_div(F.log_softmax(logits_student / t, 1), F.softmax(logits_teacher / t, 1), reduction="batchmean")
        return logits_student, {"loss_ce": F.cross_entropy(logits_student, target), "loss_kd": loss_kd * t * t}


class DKDLike(KD):
    """A DKD-shaped base: warm-up on the epoch, reads the teacher's feature dict too."""

    def forward_train(self, image, target, **kwargs):
        logits_student, _ = self.student(image)
        with torch.no_grad():
            logits_teacher, feats_teacher = self.teacher(image)
        assert not feats_teacher["pooled_feat"].requires_grad
        warm = min(kwargs["epoch"] / 20, 1.0)
        loss = warm * F.mse_loss(F.softmax(logits_student, 1), F.softmax(logits_teacher, 1))
        return logits_student, {"loss_ce": F.cross_entropy(logits_student, target), "loss_kd": loss}


class CRDLike(KD):
    """A CRD-shaped base: an extra module, and num_data in its constructor."""

    def __init__(self, student, teacher, cfg, num_data):
        super().__init__(student, teacher, cfg)
        self.num_data = num_data
        self.embed = nn.Linear(FEAT_DIM, 4)

    def get_learnable_parameters(self):
        return super().get_learnable_parameters() + list(self.embed.parameters())

    def forward_train(self, image, target, **kwargs):
        assert kwargs["index"] is not None
        logits_student, feats_student = self.student(image)
        with torch.no_grad():
            _, feats_teacher = self.teacher(image)
        loss = F.mse_loss(self.embed(feats_student["pooled_feat"]), self.embed(feats_teacher["pooled_feat"]))
        return logits_student, {"loss_ce": F.cross_entropy(logits_student, target), "loss_kd": loss}


def make_registry() -> dict:
    return {"NONE": Vanilla, "KD": KD, "DKD": DKDLike, "CRD": CRDLike}


def make_cfg(**ickd: object) -> CN:
    cfg = CN()
    cfg.KD = CN()
    cfg.KD.TEMPERATURE = 4.0
    cfg.ICKD = get_ickd_defaults()
    cfg.ICKD.K, cfg.ICKD.N, cfg.ICKD.WARMUP, cfg.ICKD.BANK.USE_CACHE = 2, 3, 0, False
    for key, value in ickd.items():
        node = cfg.ICKD
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return cfg


def make_ickd(registry: dict | None = None, teacher: bool = True, num_data=None, **ickd: object):
    registry = registry if registry is not None else make_registry()
    cls = ickd_distiller_class(registry)
    torch.manual_seed(0)
    student, teacher_net = TinyNet(), (TinyNet() if teacher else None)
    return cls(student, teacher_net, make_cfg(**ickd), num_data=num_data)


def first_batch(trainer: SimpleNamespace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    image, target, index = next(iter(trainer.train_loader))
    return image, target, index


# ----------------------------------------------------------------------------- tests

STEP_CASES = [
    (base, paradigm)
    for paradigm in ("offline", "online")
    for base in ("NONE", "KD", "DKD", "CRD")
] + [("NONE", "teacher_free")]


@pytest.mark.parametrize("base,paradigm", STEP_CASES)
def test_one_step_per_base_and_paradigm(base: str, paradigm: str) -> None:
    distiller = make_ickd(BASE=base, PARADIGM=paradigm, teacher=paradigm != "teacher_free", num_data=18)
    trainer = make_trainer(distiller)
    distiller.trainer_hooks()[0].before_train(trainer)
    distiller.train()
    teacher_calls = count_forwards(distiller.teacher) if distiller.teacher is not None else None
    student_calls = count_forwards(distiller.student)
    image, target, index = first_batch(trainer)
    logits, losses = distiller(image=image, target=target, index=index, epoch=1)
    assert logits.shape == (6, NUM_CLASSES)
    expected = {"loss_ce", "loss_picd", "loss_nicd"}
    if base != "NONE":
        expected.add("loss_kd")
    if paradigm == "online":
        expected |= {"loss_teacher_ce", "loss_teacher_kd"}
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert student_calls[0] == 1
    if teacher_calls is not None:
        assert teacher_calls[0] == 1, "the teacher must run once per step, replayed to the base"
    sum(losses.values()).backward()
    params = distiller.get_learnable_parameters()
    assert all(p.grad is not None for p in distiller.student.parameters())
    if paradigm == "online":
        assert all(p.grad is not None for p in distiller.teacher.parameters())
        assert distiller.teacher.training
    elif paradigm == "offline":
        assert all(p.grad is None for p in distiller.teacher.parameters())
        assert not distiller.teacher.training
        assert not any(p is q for p in params for q in distiller.teacher.parameters())
    if base == "CRD":
        assert any(p is distiller.base.embed.weight for p in params)
        assert distiller.base.num_data == 18
    # the base sees the real teacher again after the step
    if distiller.teacher is not None and "teacher" in distiller.base.__dict__:
        assert distiller.base.teacher is distiller.teacher


def test_state_dict_has_student_and_teacher_once() -> None:
    offline = make_ickd(BASE="KD")
    keys = set(offline.state_dict())
    assert any(k.startswith("student.") for k in keys) and any(k.startswith("teacher.") for k in keys)
    assert not any(k.startswith("base.student") or k.startswith("base.teacher") for k in keys)
    assert not any(k.startswith("bank.") for k in keys), "offline bank is rebuilt from the cache, not checkpointed"
    online = make_ickd(BASE="KD", PARADIGM="online")
    assert {"bank.features", "bank.labels", "bank.row_of_index"} <= set(online.state_dict())


def test_online_bank_refresh_by_hand_and_exact_resume() -> None:
    distiller = make_ickd(BASE="KD", PARADIGM="online", **{"BANK.MOMENTUM": 0.25})
    trainer = make_trainer(distiller)
    (hooks,) = distiller.trainer_hooks()
    hooks.before_train(trainer)
    distiller.train()
    image, target, index = first_batch(trainer)
    row = int(distiller.bank.rows_for(index[:1]))
    before = distiller.bank.features[row].clone()
    _, losses = distiller(image=image, target=target, index=index, epoch=1)
    sum(losses.values()).backward()
    pending = distiller._pending_refresh[1][0].clone()  # the teacher's feature of index[0] in this step
    hooks.after_step(trainer, 1, losses)
    expected = 0.25 * before + 0.75 * pending  # row <- m * row + (1 - m) * new
    assert torch.allclose(distiller.bank.features[row], expected, atol=1e-6)
    assert torch.allclose(distiller.bank.inv_norms[row], 1 / expected.norm(), atol=1e-6)
    assert distiller._pending_refresh is None
    # exact resume: a fresh distiller gets the refreshed bank from the checkpoint; before_train keeps it
    resumed = make_ickd(BASE="KD", PARADIGM="online")
    resumed.load_state_dict(distiller.state_dict())
    resumed.trainer_hooks()[0].before_train(make_trainer(resumed))
    assert torch.equal(resumed.bank.features, distiller.bank.features)


def test_teacher_free_uses_student_bank_and_refreshes() -> None:
    distiller = make_ickd(BASE="NONE", PARADIGM="teacher_free", teacher=False)
    assert distiller.teacher is None and type(distiller).teacher_requirement(make_cfg(PARADIGM="teacher_free")) == "none"
    trainer = make_trainer(distiller)
    distiller.trainer_hooks()[0].before_train(trainer)
    distiller.train()
    image, target, index = first_batch(trainer)
    rows = distiller.bank.rows_for(index)
    before = distiller.bank.features[rows].clone()
    _, losses = distiller(image=image, target=target, index=index, epoch=1)
    sum(losses.values()).backward()
    distiller.trainer_hooks()[0].after_step(trainer, 1, losses)
    assert not torch.equal(distiller.bank.features[rows], before)


def test_teacher_requirement_per_paradigm() -> None:
    cls = ickd_distiller_class(make_registry())
    assert [cls.teacher_requirement(make_cfg(PARADIGM=p)) for p in ("offline", "online", "teacher_free")] == [
        "pretrained", "scratch", "none"]


def test_index_from_stash_and_missing_index_error() -> None:
    distiller = make_ickd(BASE="KD")
    trainer = make_trainer(distiller)
    distiller.trainer_hooks()[0].before_train(trainer)
    distiller.train()
    image, target, index = first_batch(trainer)
    setattr(distiller, INDEX_STASH, index)
    distiller(image=image, target=target, epoch=1)  # index taken from the stash, then consumed
    with pytest.raises(ValueError, match='SOLVER.TRAINER "ickd"'):
        distiller(image=image, target=target, epoch=1)


def test_unbuilt_bank_is_a_clear_error() -> None:
    distiller = make_ickd(BASE="KD").train()
    with pytest.raises(RuntimeError, match="before_train"):
        distiller(image=torch.randn(2, IN_DIM), target=torch.tensor([0, 1]), index=torch.tensor([0, 1]), epoch=1)


def test_warmup_scales_in_context_terms() -> None:
    distiller = make_ickd(BASE="KD", WARMUP=4)
    trainer = make_trainer(distiller)
    distiller.trainer_hooks()[0].before_train(trainer)
    distiller.eval()  # BN in eval: the two calls below see identical networks
    image, target, index = first_batch(trainer)
    _, full = distiller.forward_train(image=image, target=target, index=index, epoch=8)
    _, quarter = distiller.forward_train(image=image, target=target, index=index, epoch=1)
    assert torch.allclose(quarter["loss_picd"], full["loss_picd"] / 4)
    assert torch.allclose(quarter["loss_nicd"], full["loss_nicd"] / 4)
    assert torch.allclose(quarter["loss_kd"], full["loss_kd"])


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("PARADIGM", "semi", "ICKD.PARADIGM"),
        ("BASE", "ICKD", "ICKD.BASE"),
        ("BASE", "FITNET", "ICKD.BASE.*allowed: CRD, DKD, KD, NONE"),
        ("K", 0, "ICKD.K"),
        ("N", 0, "ICKD.N"),
        ("TAU", 0.0, "ICKD.TAU"),
        ("T", -1.0, "ICKD.T"),
        ("PICD_WEIGHT", -0.1, "ICKD.PICD_WEIGHT"),
        ("NICD_WEIGHT", -0.1, "ICKD.NICD_WEIGHT"),
        ("BETA1", 1.5, "ICKD.BETA1"),
        ("BETA2", -1.0, "ICKD.BETA2"),
        ("BANK.MOMENTUM", 1.0, "ICKD.BANK.MOMENTUM"),
        ("BANK.DTYPE", "float64", "ICKD.BANK.DTYPE"),
        ("BANK.DEVICE", "tpu", "ICKD.BANK.DEVICE"),
        ("ONLINE.CE_WEIGHT", -1.0, "ICKD.ONLINE.CE_WEIGHT"),
        ("QUERY", "mixed", "ICKD.QUERY.*allowed: augmented, clean"),
    ],
)
def test_config_validation_names_the_key(key: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_ickd(**{key: value})


def test_teacher_free_requires_base_none_and_offline_requires_teacher() -> None:
    with pytest.raises(ValueError, match="ICKD.BASE"):
        make_ickd(BASE="KD", PARADIGM="teacher_free", teacher=False)
    with pytest.raises(ValueError, match="teacher"):
        make_ickd(BASE="NONE", PARADIGM="offline", teacher=False)


def test_clean_query_retrieves_with_the_samples_own_bank_row() -> None:
    augmented, clean = make_ickd(BASE="KD"), make_ickd(BASE="KD", QUERY="clean")
    for distiller in (augmented, clean):
        trainer = make_trainer(distiller)
        distiller.trainer_hooks()[0].before_train(trainer)
    _, target, index = first_batch(trainer)
    torch.manual_seed(1)
    logits, own = torch.randn(len(index), NUM_CLASSES), torch.randn(len(index), NUM_CLASSES)
    bank_rows = augmented.bank.features[augmented.bank.rows_for(index)].float()
    classifier = augmented.teacher.fc
    expected = augmented.in_context_losses(bank_rows, target, index, logits, own, classifier)
    unrelated = 100 * torch.randn_like(bank_rows)
    # "clean" ignores the query it is given and uses the bank row; "augmented" uses what it is given.
    assert all(map(torch.equal, clean.in_context_losses(unrelated, target, index, logits, own, classifier), expected))
    moved = augmented.in_context_losses(unrelated, target, index, logits, own, classifier)
    assert not all(map(torch.equal, moved, expected))
    with pytest.raises(ValueError, match=r"ICKD.QUERY clean: dataset indices \[99\]"):
        clean.in_context_losses(bank_rows[:1], target[:1], torch.tensor([99]), logits[:1], own[:1], classifier)


def test_clean_query_is_refused_with_a_sharded_bank() -> None:
    with pytest.raises(ValueError, match="ICKD.QUERY.*ICKD.BANK.SHARDED"):
        make_ickd(QUERY="clean", **{"BANK.SHARDED": True})
