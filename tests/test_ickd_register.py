"""register() against a minimal package laid out like mdistiller, and the kdharness entry point."""
from __future__ import annotations

import importlib
import sys
import textwrap
from importlib.metadata import entry_points

import pytest
import torch
from torch.utils.data import DataLoader
from yacs.config import CfgNode as CN

import ickd_plugin
from test_ickd_distiller import TinyNet, make_data

FAKE_MDISTILLER = {
    "mdistiller/__init__.py": "",
    "mdistiller/distillers/__init__.py": '''
        import torch
        import torch.nn as nn
        import torch.nn.functional as F


        class Distiller(nn.Module):
            def __init__(self, student, teacher):
                super().__init__()
                self.student = student
                self.teacher = teacher

            def train(self, mode=True):
                self.training = mode
                for module in self.children():
                    module.train(mode)
                self.teacher.eval()
                return self

            def get_learnable_parameters(self):
                return [v for k, v in self.student.named_parameters()]

            def get_extra_parameters(self):
                return 0

            def forward_test(self, image):
                return self.student(image)[0]

            def forward(self, **kwargs):
                if self.training:
                    return self.forward_train(**kwargs)
                return self.forward_test(kwargs["image"])


        class Vanilla(nn.Module):
            def __init__(self, student):
                super().__init__()
                self.student = student

            def get_learnable_parameters(self):
                return [v for k, v in self.student.named_parameters()]

            def forward_train(self, image, target, **kwargs):
                logits_student, _ = self.student(image)
                return logits_student, {"ce": F.cross_entropy(logits_student, target)}

            def forward(self, **kwargs):
                if self.training:
                    return self.forward_train(**kwargs)
                return self.student(kwargs["image"])[0]


        class KD(Distiller):
            def __init__(self, student, teacher, cfg):
                super().__init__(student, teacher)
                self.temperature = cfg.KD.TEMPERATURE

            def forward_train(self, image, target, **kwargs):
                logits_student, _ = self.student(image)
                with torch.no_grad():
                    logits_teacher, _ = self.teacher(image)
                t = self.temperature
                loss_kd = F.kl_div(F.log_softmax(logits_student / t, 1), F.softmax(logits_teacher / t, 1),
                                   reduction="batchmean") * t * t
                return logits_student, {"loss_ce": F.cross_entropy(logits_student, target), "loss_kd": loss_kd}


        distiller_dict = {"NONE": Vanilla, "KD": KD}
    ''',
    "mdistiller/engine/cfg.py": '''
        from yacs.config import CfgNode as CN

        CFG = CN()
        CFG.DISTILLER = CN()
        CFG.DISTILLER.TYPE = "NONE"
        CFG.SOLVER = CN()
        CFG.SOLVER.TRAINER = "base"
        CFG.SOLVER.EPOCHS = 1
        CFG.SOLVER.LR = 0.05
        CFG.KD = CN()
        CFG.KD.TEMPERATURE = 4
    ''',
    "mdistiller/engine/trainer.py": '''
        import torch


        class BaseTrainer:
            def __init__(self, experiment_name, distiller, train_loader, val_loader, cfg):
                self.cfg = cfg
                self.distiller = distiller
                self.train_loader = train_loader
                self.val_loader = val_loader
                self.optimizer = torch.optim.SGD(distiller.module.get_learnable_parameters(), lr=cfg.SOLVER.LR)
                self.losses = []

            def train(self, resume=False):
                for epoch in range(1, self.cfg.SOLVER.EPOCHS + 1):
                    self.distiller.train()
                    for data in self.train_loader:
                        self.train_iter(data, epoch, {})

            def train_iter(self, data, epoch, train_meters):
                self.optimizer.zero_grad()
                image, target, index = data
                preds, losses_dict = self.distiller(image=image, target=target, epoch=epoch)
                loss = sum([l.mean() for l in losses_dict.values()])
                loss.backward()
                self.optimizer.step()
                self.losses.append({k: v.item() for k, v in losses_dict.items()})
                return "msg"
    ''',
    "mdistiller/engine/__init__.py": '''
        from .trainer import BaseTrainer

        trainer_dict = {"base": BaseTrainer}
    ''',
}


@pytest.fixture
def mdistiller(tmp_path, monkeypatch):
    """Import the fake mdistiller from tmp_path; drop it from sys.modules afterwards."""
    for relative, source in FAKE_MDISTILLER.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    distillers = importlib.import_module("mdistiller.distillers")
    engine = importlib.import_module("mdistiller.engine")
    cfg_module = importlib.import_module("mdistiller.engine.cfg")
    yield distillers.distiller_dict, cfg_module.CFG, engine.trainer_dict
    for name in [m for m in sys.modules if m == "mdistiller" or m.startswith("mdistiller.")]:
        del sys.modules[name]


@pytest.mark.parametrize("paradigm", ["offline", "online"])
def test_one_call_then_train_through_mdistiller_trainer(mdistiller, tmp_path, paradigm: str) -> None:
    distiller_dict, CFG, trainer_dict = mdistiller
    ickd_plugin.register(distiller_dict, CFG, trainer_dict)
    assert {"NONE", "KD", "ICKD"} <= set(distiller_dict) and "ickd" in trainer_dict and "ICKD" in CFG
    cfg = CFG.clone()
    cfg.DISTILLER.TYPE, cfg.SOLVER.TRAINER = "ICKD", "ickd"
    cfg.ICKD.K, cfg.ICKD.N, cfg.ICKD.PARADIGM = 2, 3, paradigm
    cfg.ICKD.BANK.CACHE_DIR = str(tmp_path / "cache")
    torch.manual_seed(0)
    distiller = distiller_dict["ICKD"](TinyNet(), TinyNet(), cfg)
    wrapped = torch.nn.DataParallel(distiller)  # as mdistiller's train.py does
    train_set, val_set = make_data()
    trainer = trainer_dict[cfg.SOLVER.TRAINER](
        "exp", wrapped, DataLoader(train_set, batch_size=6, shuffle=True), DataLoader(val_set, batch_size=6), cfg
    )
    refreshes = []
    refresh = distiller.refresh_bank
    distiller.refresh_bank = lambda: (refreshes.append(distiller._pending_refresh is not None), refresh())
    trainer.train()
    assert distiller.bank.is_built
    assert len(trainer.losses) == 3
    expected = {"loss_ce", "loss_kd", "loss_picd", "loss_nicd"}
    if paradigm == "online":
        expected |= {"loss_teacher_ce", "loss_teacher_kd"}
    assert all(set(step) == expected for step in trainer.losses)
    assert trainer.losses[0]["loss_picd"] > 0
    assert refreshes == [paradigm == "online"] * 3, "after_step runs after every step; online has rows to refresh"


def test_register_is_idempotent_and_handles_a_frozen_cfg(mdistiller) -> None:
    distiller_dict, CFG, trainer_dict = mdistiller
    CFG.freeze()
    ickd_plugin.register(distiller_dict, CFG, trainer_dict)
    assert CFG.is_frozen() and CFG.ICKD.BASE == "KD"
    ickd_cls, ickd_trainer = distiller_dict["ICKD"], trainer_dict["ickd"]
    CFG.defrost()
    CFG.ICKD.K = 3  # a user's value survives a second registration
    ickd_plugin.register(distiller_dict, CFG, trainer_dict)
    assert distiller_dict["ICKD"] is ickd_cls and trainer_dict["ickd"] is ickd_trainer and CFG.ICKD.K == 3
    assert ickd_cls.registry is distiller_dict


def test_register_into_a_dict_subclass_without_trainers() -> None:
    class Registry(dict):
        def __missing__(self, name):
            raise KeyError(f"unknown {name}")

    distillers = Registry(NONE=object)
    cfg = CN()
    ickd_plugin.register(distillers, cfg)
    assert distillers["ICKD"].registry is distillers and "ICKD" in cfg


def test_trainer_defers_to_a_host_that_calls_hooks() -> None:
    calls = []

    class HostTrainer:
        hooks: list = []

        def __init__(self, distiller):
            self.distiller = distiller

        def train(self, resume=False):
            calls.append("host.train")

        def train_iter(self, data, epoch, train_meters):
            calls.append("host.iter")

    class Spy(torch.nn.Module):
        def trainer_hooks(self):
            return [type("H", (), {"before_train": lambda s, t: calls.append("before"),
                                   "after_step": lambda s, t, i, l: calls.append("after")})()]

    trainer = ickd_plugin.make_ickd_trainer(HostTrainer)(Spy())
    trainer.train()
    trainer.train_iter((torch.zeros(1), torch.zeros(1), torch.tensor([4])), 1, {})
    assert calls == ["host.train", "host.iter"]
    assert ickd_plugin.make_ickd_trainer(type(trainer)) is type(trainer)


def test_kdharness_entry_point_names_register() -> None:
    names = {entry.name: entry.value for entry in entry_points(group="kdharness.plugins")}
    assert names.get("ickd") == "ickd_plugin:register"


def test_plugin_never_imports_the_host() -> None:
    import pathlib

    for source in pathlib.Path(ickd_plugin.__file__).parent.glob("*.py"):
        text = source.read_text()
        assert "import kdharness" not in text and "from kdharness" not in text, source
