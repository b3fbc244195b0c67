"""register() and the launcher against a minimal package laid out like mdistiller, and the kdharness entry point.

The fake follows the real mdistiller's call signatures (facts, not code): BaseTrainer.train(resume)
loads ``latest`` when resuming, then runs train_epoch(epoch) -> train_iter(data, epoch, meters);
BaseTrainer.train_iter unpacks (image, target, index) and calls the distiller with image, target
and epoch; CRDTrainer.train_iter unpacks four values and passes image, target, index and
contrastive_index but no epoch; CRD is built with (student, teacher, cfg, num_data); tools/train.py
passes num_data and get_dataset builds the contrastive loader only for DISTILLER.TYPE "CRD", and
its wandb fallback assigns to the frozen cfg. tests/test_mdistiller_real.py runs the real tree.
"""
from __future__ import annotations

import importlib
import importlib.util
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


        class CRD(Distiller):
            def __init__(self, student, teacher, cfg, num_data):
                super().__init__(student, teacher)
                self.embed = nn.Linear(3, 4)
                self.register_buffer("memory", torch.randn(num_data, 4))

            def get_learnable_parameters(self):
                return super().get_learnable_parameters() + list(self.embed.parameters())

            def forward_train(self, image, target, index, contrastive_index, **kwargs):
                logits_student, _ = self.student(image)
                with torch.no_grad():
                    logits_teacher, _ = self.teacher(image)
                embedded = F.normalize(self.embed(logits_student), dim=1)
                negatives = self.memory[contrastive_index]
                loss_crd = torch.logsumexp((negatives @ embedded[:, :, None]).squeeze(2), dim=1).mean()
                with torch.no_grad():
                    self.memory[index] = F.normalize(self.embed(logits_teacher), dim=1)
                return logits_student, {"loss_ce": F.cross_entropy(logits_student, target), "loss_kd": loss_crd}


        distiller_dict = {"NONE": Vanilla, "KD": KD, "CRD": CRD}
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
        CFG.SOLVER.BATCH_SIZE = 6
        CFG.LOG = CN()
        CFG.LOG.PREFIX = "./output"
        CFG.LOG.WANDB = True
        CFG.KD = CN()
        CFG.KD.TEMPERATURE = 4
        CFG.CRD = CN()
        CFG.CRD.NCE = CN()
        CFG.CRD.NCE.K = 5
    ''',
    "mdistiller/engine/trainer.py": '''
        import os

        import torch


        class BaseTrainer:
            def __init__(self, experiment_name, distiller, train_loader, val_loader, cfg):
                self.cfg = cfg
                self.distiller = distiller
                self.train_loader = train_loader
                self.val_loader = val_loader
                self.optimizer = torch.optim.SGD(distiller.module.get_learnable_parameters(), lr=cfg.SOLVER.LR)
                self.log_path = os.path.join(cfg.LOG.PREFIX, experiment_name)
                os.makedirs(self.log_path, exist_ok=True)
                self.losses = []

            def train(self, resume=False):
                epoch = 1
                if resume:
                    state = torch.load(os.path.join(self.log_path, "latest"), weights_only=False)
                    epoch = state["epoch"] + 1
                    self.distiller.load_state_dict(state["model"])
                    self.optimizer.load_state_dict(state["optimizer"])
                while epoch < self.cfg.SOLVER.EPOCHS + 1:
                    self.train_epoch(epoch)
                    epoch += 1

            def train_epoch(self, epoch):
                self.distiller.train()
                for data in self.train_loader:
                    self.train_iter(data, epoch, {})
                state = {"epoch": epoch, "model": self.distiller.state_dict(), "optimizer": self.optimizer.state_dict()}
                torch.save(state, os.path.join(self.log_path, "latest"))

            def step(self, losses_dict):
                loss = sum([l.mean() for l in losses_dict.values()])
                loss.backward()
                self.optimizer.step()
                self.losses.append({k: v.item() for k, v in losses_dict.items()})

            def train_iter(self, data, epoch, train_meters):
                self.optimizer.zero_grad()
                image, target, index = data
                preds, losses_dict = self.distiller(image=image, target=target, epoch=epoch)
                self.step(losses_dict)
                return "msg"


        class CRDTrainer(BaseTrainer):
            def train_iter(self, data, epoch, train_meters):
                self.optimizer.zero_grad()
                image, target, index, contrastive_index = data
                preds, losses_dict = self.distiller(
                    image=image, target=target, index=index, contrastive_index=contrastive_index
                )
                self.step(losses_dict)
                return "msg"
    ''',
    "mdistiller/dataset/__init__.py": '''
        import torch
        from torch.utils.data import DataLoader, Dataset

        from test_ickd_distiller import make_data


        class Sample(Dataset):
            """CIFAR100InstanceSample's contract: (image, target, index, contrastive indices) while is_sample."""

            def __init__(self, inner, k):
                self.inner, self.k, self.is_sample = inner, k, True
                self.transform, self.targets = inner.transform, inner.targets

            def __len__(self):
                return len(self.inner)

            def __getitem__(self, i):
                image = self.inner.images[i]
                if self.transform is not None:
                    image = self.transform(image)
                if not self.is_sample:
                    return image, self.targets[i], i
                return image, self.targets[i], i, torch.randint(len(self), (self.k + 1,))


        def get_dataset(cfg):
            train_set, val_set = make_data()
            if cfg.DISTILLER.TYPE == "CRD":
                train_set = Sample(train_set, cfg.CRD.NCE.K)
            train_loader = DataLoader(train_set, batch_size=cfg.SOLVER.BATCH_SIZE, shuffle=True)
            return train_loader, DataLoader(val_set, batch_size=6), len(train_set), 3
    ''',
    "tools/train.py": '''
        import torch

        from mdistiller.dataset import get_dataset
        from mdistiller.distillers import distiller_dict
        from mdistiller.engine import trainer_dict
        from mdistiller.engine.cfg import CFG as cfg
        from test_ickd_distiller import TinyNet

        TRAINERS = []


        def main(cfg, resume, opts):
            if cfg.LOG.WANDB:
                try:
                    import wandb
                except:
                    cfg.LOG.WANDB = False  # mdistiller's fallback: fails on the frozen cfg
            train_loader, val_loader, num_data, num_classes = get_dataset(cfg)
            torch.manual_seed(0)
            student, teacher = TinyNet(), TinyNet()
            if cfg.DISTILLER.TYPE == "CRD":
                distiller = distiller_dict[cfg.DISTILLER.TYPE](student, teacher, cfg, num_data)
            else:
                distiller = distiller_dict[cfg.DISTILLER.TYPE](student, teacher, cfg)
            distiller = torch.nn.DataParallel(distiller)
            trainer = trainer_dict[cfg.SOLVER.TRAINER]("exp", distiller, train_loader, val_loader, cfg)
            trainer.train(resume=resume)
            TRAINERS.append(trainer)


        if __name__ == "__main__":
            raise SystemExit("run through the launcher")
    ''',
    "mdistiller/engine/__init__.py": '''
        from .trainer import BaseTrainer, CRDTrainer

        trainer_dict = {"base": BaseTrainer, "crd": CRDTrainer}
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
    for name in [m for m in sys.modules if m.startswith(("mdistiller.", "mdistiller_tools_train")) or m == "mdistiller"]:
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
    cfg.LOG.PREFIX = str(tmp_path / "output")
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


def _ickd_cfg(CFG, tmp_path, **ickd):
    cfg = CFG.clone()
    cfg.DISTILLER.TYPE = "ICKD"
    cfg.ICKD.K, cfg.ICKD.N = 2, 3
    cfg.ICKD.BANK.CACHE_DIR = str(tmp_path / "cache")
    cfg.LOG.PREFIX = str(tmp_path / "output")
    for key, value in ickd.items():
        cfg.ICKD[key] = value
    return cfg


def test_ickd_crd_trainer_passes_the_epoch_mdistillers_crd_trainer_drops(mdistiller, tmp_path) -> None:
    """Issue 12 §1(c): CRDTrainer.train_iter passes no epoch; the default ICKD.WARMUP 20 needs one."""
    import importlib

    distiller_dict, CFG, trainer_dict = mdistiller
    ickd_plugin.register(distiller_dict, CFG, trainer_dict)
    cfg = _ickd_cfg(CFG, tmp_path, BASE="CRD")
    cfg.SOLVER.TRAINER, cfg.DISTILLER.TYPE = "ickd_crd", "CRD"
    train_loader, val_loader, num_data, _ = importlib.import_module("mdistiller.dataset").get_dataset(cfg)
    assert cfg.ICKD.WARMUP == 20
    torch.manual_seed(0)
    distiller = distiller_dict["ICKD"](TinyNet(), TinyNet(), cfg, num_data)
    seen = []
    forward = distiller.forward_train
    distiller.forward_train = lambda **kw: (seen.append(kw.get("epoch")), forward(**kw))[1]
    trainer = trainer_dict["ickd_crd"]("exp", torch.nn.DataParallel(distiller), train_loader, val_loader, cfg)
    trainer.train()
    assert seen == [None] * 3, "the fake's CRDTrainer, like mdistiller's, passes no epoch"
    assert all(set(step) == {"loss_ce", "loss_kd", "loss_picd", "loss_nicd"} for step in trainer.losses)
    assert "_ickd_epoch" not in distiller.__dict__ and "_ickd_index" not in distiller.__dict__


def test_online_resume_restores_the_bank_without_a_pass(mdistiller, tmp_path, monkeypatch, capsys) -> None:
    """Issue 12 §3.6: on --resume the checkpoint's bank is used; no pass builds one to overwrite."""
    import ickd_plugin.distiller as distiller_module

    distiller_dict, CFG, trainer_dict = mdistiller
    ickd_plugin.register(distiller_dict, CFG, trainer_dict)
    cfg = _ickd_cfg(CFG, tmp_path, PARADIGM="online", WARMUP=0)
    cfg.SOLVER.TRAINER = "ickd"
    train_set, val_set = make_data()

    def run(epochs: int, resume: bool):
        cfg.SOLVER.EPOCHS = epochs
        torch.manual_seed(0)
        distiller = distiller_dict["ICKD"](TinyNet(), TinyNet(), cfg)
        loaders = DataLoader(train_set, batch_size=6, shuffle=True), DataLoader(val_set, batch_size=6)
        trainer = trainer_dict["ickd"]("exp", torch.nn.DataParallel(distiller), *loaders, cfg)
        trainer.train(resume=resume)
        return distiller

    first = run(1, resume=False)
    saved = torch.load(tmp_path / "output" / "exp" / "latest", weights_only=False)["model"]
    passes = []
    extract = distiller_module.extract_features
    monkeypatch.setattr(distiller_module, "extract_features", lambda *a, **k: (passes.append(1), extract(*a, **k))[1])
    capsys.readouterr()
    seen_at_start = []
    refresh = distiller_module.ICKD.refresh_bank
    monkeypatch.setattr(distiller_module.ICKD, "refresh_bank",
                        lambda self: (seen_at_start.append(self.bank.features.clone()), refresh(self))[1])
    run(2, resume=True)
    assert passes == [], "the resumed run builds no bank"
    assert torch.equal(seen_at_start[0], saved["module.bank.features"]), "it starts from the checkpoint's bank"
    assert "memory bank: reused, restored from the checkpoint" in capsys.readouterr().out
    assert first.bank.is_built


def _launch(root, tmp_path, body: str, *opts: str):
    from ickd_plugin.mdistiller import main

    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(body))
    main(["--mdistiller", str(root), "--cfg", str(path), "LOG.PREFIX", str(tmp_path / "output"), *opts])
    return sys.modules["mdistiller_tools_train"].TRAINERS[-1]


@pytest.mark.parametrize("base", ["KD", "CRD"])
def test_launcher_runs_mdistillers_train_py_with_ickd(mdistiller, tmp_path, capsys, base: str) -> None:
    """Issue 12 §1-§2: train.py's num_data / contrastive loader keyed on TYPE "CRD", trainer "base"."""
    body = f"""
        DISTILLER:
          TYPE: "ICKD"
        ICKD:
          BASE: "{base}"
          K: 2
          N: 3
          BANK:
            CACHE_DIR: "{tmp_path / 'cache'}"
    """
    trainer = _launch(tmp_path, tmp_path, body)
    out = capsys.readouterr().out
    wanted = "ickd_crd" if base == "CRD" else "ickd"
    assert f"SOLVER.TRAINER 'base' -> '{wanted}'" in out
    assert type(trainer).__name__ == ("ICKDCRDTrainer" if base == "CRD" else "ICKDBaseTrainer")
    assert len(trainer.losses) == 3 and all("loss_picd" in step for step in trainer.losses)
    if importlib.util.find_spec("wandb") is None:
        assert "LOG.WANDB True but wandb is not installed: LOG.WANDB -> False" in out
        assert trainer.cfg.LOG.WANDB is False
    if base == "CRD":
        assert trainer.train_loader.dataset.is_sample, "training draws CRD's negatives"
        assert trainer.distiller.module.base.memory.shape[0] == 18, "num_data reached the CRD base"


def test_launcher_runs_plain_kd_unchanged(mdistiller, tmp_path) -> None:
    body = """
        DISTILLER:
          TYPE: "KD"
    """
    trainer = _launch(tmp_path, tmp_path, body)
    assert type(trainer).__name__ == "BaseTrainer" and len(trainer.losses) == 3


def test_launcher_refuses_ickd_on_several_gpus(mdistiller, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(SystemExit, match=r"DataParallel over all 2 visible GPUs.*CUDA_VISIBLE_DEVICES=0"):
        _launch(tmp_path, tmp_path, 'DISTILLER:\n  TYPE: "ICKD"\n')


def test_launcher_names_a_missing_checkout(tmp_path) -> None:
    from ickd_plugin.mdistiller import main

    with pytest.raises(SystemExit, match=r"--mdistiller: expected the root of an mdistiller checkout"):
        main(["--mdistiller", str(tmp_path / "nowhere"), "--cfg", "x.yaml"])


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
