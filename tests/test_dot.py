"""DOT (engine/dot.py): the optimizer's update against a step computed by hand, its reduction
to SGD when both momenta are equal, and the trainer's two backward passes.

Tolerances: parameters of order 1 updated by a handful of float32 operations; each rounds
within half an ulp (2**-24 relative), so 1e-6 absolute is several ulps of slack.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import timm
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import kdharness.models  # noqa: F401  (registers the zoo)
from kdharness.config import get_cfg_defaults
from kdharness.distillers.kd import KD
from kdharness.engine.dot import DistillationOrientedTrainer, DOTTrainer, split_losses
from kdharness.registry import trainer_dict

ATOL = 1e-6


def _step(opt: DistillationOrientedTrainer, params, kd_grads, task_grads) -> None:
    for p, g in zip(params, kd_grads):
        p.grad = None if g is None else torch.tensor([g])
    opt.step_kd()
    assert all(p.grad is None for p in params)  # step_kd takes the distillation gradients
    for p, g in zip(params, task_grads):
        p.grad = None if g is None else torch.tensor([g])
    opt.step()


def test_dot_step_by_hand():
    # a: task and kd gradients; b: task only; c: kd only.
    # lr 0.1, wd 0.01, mu_task 0.8, mu_kd 0.95, mean momentum 0.875.
    a, b, c = (nn.Parameter(torch.tensor([v])) for v in (1.0, 2.0, 3.0))
    opt = DistillationOrientedTrainer([a, b, c], lr=0.1, momentum=0.8, momentum_kd=0.95, weight_decay=0.01)
    # Step 1 (first: buffers start as the gradient, with weight decay on the task side only):
    #   a: task buf 1 + 0.01 = 1.01 -> a = 1 - 0.101 = 0.899; kd buf 0.5 -> a = 0.849
    #   b: task buf -1 + 0.02 = -0.98 -> b = 2 + 0.098 = 2.098
    #   c: kd buf 0.25 (no weight decay on a first step) -> c = 3 - 0.025 = 2.975
    _step(opt, [a, b, c], kd_grads=[0.5, None, 0.25], task_grads=[1.0, -1.0, None])
    assert [a.item(), b.item(), c.item()] == pytest.approx([0.849, 2.098, 2.975], abs=ATOL)
    # Step 2:
    #   a task: 0.8 * 1.01 + (-0.5 + 0.01 * 0.849) = 0.31649 -> a = 0.849 - 0.031649 = 0.817351
    #   b task (no kd): 0.875 * -0.98 + (0.3 + 0.01 * 2.098) = -0.53652 -> b = 2.098 + 0.053652 = 2.151652
    #   a kd (has task): 0.95 * 0.5 + 0.2 = 0.675 -> a = 0.817351 - 0.0675 = 0.749851
    #   c kd (no task): 0.875 * 0.25 + (0.4 + 0.01 * 2.975) = 0.6485 -> c = 2.975 - 0.06485 = 2.91015
    _step(opt, [a, b, c], kd_grads=[0.2, None, 0.4], task_grads=[-0.5, 0.3, None])
    assert [a.item(), b.item(), c.item()] == pytest.approx([0.749851, 2.151652, 2.91015], abs=ATOL)
    state = opt.state_dict()["state"]
    assert set(state[0]) == {"momentum_buffer", "momentum_kd_buffer"}  # mdistiller's state keys
    assert set(state[1]) == {"momentum_buffer"} and set(state[2]) == {"momentum_kd_buffer"}
    assert state[0]["momentum_kd_buffer"].item() == pytest.approx(0.675, abs=ATOL)
    assert {"momentum", "momentum_kd", "dampening", "weight_decay", "lr"} <= set(opt.state_dict()["param_groups"][0])


def test_equal_momenta_reduce_to_sgd_on_the_summed_loss():
    # Both buffers are linear in the gradients: with mu_task = mu_kd their sum is SGD's buffer.
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    twin = copy.deepcopy(model)
    dot = DistillationOrientedTrainer(model.parameters(), lr=0.1, momentum=0.9, momentum_kd=0.9, weight_decay=1e-3)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for step in range(3):
        x, y = torch.randn(5, 4), torch.randn(5, 3)
        task, kd = ((model(x) - y) ** 2).mean(), model(x).pow(2).mean()
        dot.zero_grad(set_to_none=True)
        kd.backward(retain_graph=True)
        dot.step_kd()
        task.backward()
        dot.step()
        sgd.zero_grad()
        (((twin(x) - y) ** 2).mean() + twin(x).pow(2).mean()).backward()
        sgd.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(p, q, atol=ATOL, rtol=0)


def test_split_losses():
    terms = {"loss_ce": torch.tensor(1.0), "loss_kd": torch.tensor(2.0), "loss_picd": torch.tensor(0.5)}
    task, kd = split_losses(terms)
    assert task.item() == 1.0 and kd.item() == 2.5
    with pytest.raises(ValueError, match="loss_ce"):
        split_losses({"loss_ce": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="loss_ce"):
        split_losses({"loss_kd": torch.tensor(1.0)})
    # ICKD online: the teacher's cross-entropy is a task term too, its mutual KD a distillation term.
    online = dict(terms, loss_teacher_ce=torch.tensor(4.0), loss_teacher_kd=torch.tensor(8.0))
    task, kd = split_losses(online)
    assert task.item() == 5.0 and kd.item() == 10.5


def _trainer(tmp_path, distiller, **solver):
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["SOLVER.TRAINER", "dot", "LOG.PREFIX", str(tmp_path), "LOG.TENSORBOARD_FREQ", 0])
    for key, value in solver.items():
        cfg.merge_from_list([f"SOLVER.{key}", value])
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 5, (8,)), torch.arange(8))
    loader = DataLoader(data, batch_size=4)
    return trainer_dict["dot"]("dot_test", distiller, loader, loader, cfg), loader


def test_trainer_names_and_step_matches_manual_dot(tmp_path):
    assert trainer_dict["dot"] is DOTTrainer and trainer_dict["crd_dot"] is DOTTrainer
    torch.manual_seed(0)
    student, teacher = timm.create_model("cifar_resnet8", num_classes=5), timm.create_model("cifar_resnet8", num_classes=5)
    cfg = get_cfg_defaults()
    distiller = KD(student, teacher, cfg)
    manual = copy.deepcopy(distiller)
    trainer, loader = _trainer(tmp_path, distiller, **{"DOT.DELTA": 0.05, "MOMENTUM": 0.9, "LR": 0.05})
    group = trainer.optimizer.param_groups[0]
    assert (group["momentum"], group["momentum_kd"]) == pytest.approx((0.85, 0.95))
    opt = DistillationOrientedTrainer(
        manual.get_learnable_parameters(), lr=0.05, momentum=0.85, momentum_kd=0.95, weight_decay=cfg.SOLVER.WEIGHT_DECAY
    )
    distiller.train(), manual.train()
    for step, data in enumerate(loader):
        trainer._run_step(data, epoch=1, step=step)
        image, target, _ = data
        _, losses = manual(image=image, target=target, epoch=1)
        opt.zero_grad(set_to_none=True)
        losses["loss_kd"].backward(retain_graph=True)
        opt.step_kd()
        losses["loss_ce"].backward()
        opt.step()
    for (name, p), q in zip(distiller.student.named_parameters(), manual.student.parameters()):
        assert torch.allclose(p, q, atol=ATOL, rtol=0), name
    assert any(not torch.equal(p, q) for p, q in zip(distiller.student.parameters(), teacher.parameters()))


def test_trainer_rejects_bad_delta_and_amp(tmp_path):
    student, teacher = timm.create_model("cifar_resnet8", num_classes=5), timm.create_model("cifar_resnet8", num_classes=5)
    with pytest.raises(ValueError, match="SOLVER.DOT.DELTA"):
        _trainer(tmp_path, KD(student, teacher, get_cfg_defaults()), **{"DOT.DELTA": 0.95})
    with pytest.raises(ValueError, match="SOLVER.AMP"):
        _trainer(tmp_path / "amp", KD(student, teacher, get_cfg_defaults()), AMP=True)


# ----------------------------------------------------------------------------- DDP

DDP_WORLD, DDP_GLOBAL_BATCH = 2, 16


def _dot_cfg(log_prefix, batch_size: int):
    from kdharness.compose import load_builtin_components

    load_builtin_components()
    cfg = get_cfg_defaults()
    cfg.merge_from_list([
        "EXPERIMENT.NAME", "dot", "DISTILLER.TYPE", "KD", "SOLVER.TRAINER", "dot", "SOLVER.BATCH_SIZE", batch_size,
        "SOLVER.EPOCHS", 2, "SOLVER.LR", 0.1, "SOLVER.WEIGHT_DECAY", 5e-4, "DATASET.NUM_WORKERS", 0,
        "DATASET.TEST.BATCH_SIZE", 8, "LOG.PREFIX", str(log_prefix), "LOG.TENSORBOARD_FREQ", 0,
        "LOG.SAVE_CHECKPOINT_FREQ", 0,
    ])
    cfg.freeze()
    return cfg


def _dot_student_after_training(cfg, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    """KD + DOT on test_distributed's BatchNorm-free MLPs; the student's weights after training."""
    from test_distributed import MLP, make_datasets

    from kdharness.data.loaders import build_loaders
    from kdharness.engine import distributed
    from kdharness.engine.trainer import unwrap

    train_set, val_set = make_datasets()
    train_loader, val_loader = build_loaders(cfg, train_set, val_set, rank=rank, world_size=world)
    torch.manual_seed(1)
    student, teacher = MLP(), MLP(hidden=10)
    teacher.requires_grad_(False)
    wrapped = distributed.wrap(KD(student, teacher, cfg), torch.device("cpu"), cfg.SOLVER.DDP_FIND_UNUSED_PARAMETERS)
    trainer = DOTTrainer(cfg.EXPERIMENT.NAME, wrapped, train_loader, val_loader, cfg)
    trainer.train()
    return {k: v.clone() for k, v in unwrap(trainer.distiller).student.state_dict().items()}


def _dot_rank(rank: int, world: int, port: int, workdir: str) -> None:
    import os

    import torch.distributed as dist
    from test_distributed import loopback_env

    os.environ.update(loopback_env())
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        state = _dot_student_after_training(_dot_cfg(f"{workdir}/ddp", DDP_GLOBAL_BATCH // world), rank, world)
        torch.save(state, f"{workdir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_dot_under_ddp_equals_single_process_global_batch(tmp_path):
    """Half batches on two gloo ranks give the single-process weights of the whole batch: DOT's
    update is linear in the gradients, and both kinds are averaged over the ranks."""
    import torch.multiprocessing as mp
    from test_distributed import free_port, torch_threads

    mp.spawn(_dot_rank, args=(DDP_WORLD, free_port(), str(tmp_path)), nprocs=DDP_WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(DDP_WORLD)]
    with torch_threads(1):
        single = _dot_student_after_training(_dot_cfg(tmp_path / "single", DDP_GLOBAL_BATCH))
    torch.manual_seed(1)
    from test_distributed import MLP

    initial = MLP().state_dict()
    for name, value in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        assert torch.allclose(ranks[0][name], value, rtol=1e-5, atol=1e-6), name
        assert not torch.equal(value, initial[name]), "training did not move the weights"


def test_ddp_refuses_distillation_only_parameters(tmp_path, monkeypatch):
    """Under DDP only the task backward is synchronised: OFD's connectors (distillation-only)
    must stop the run at once with their names, not fail later inside DDP."""
    import kdharness.engine.dot as dot_module
    from kdharness.distillers.ofd import OFD

    torch.manual_seed(0)
    student, teacher = timm.create_model("cifar_resnet8", num_classes=5), timm.create_model("cifar_resnet14", num_classes=5)
    trainer, loader = _trainer(tmp_path, OFD(student, teacher, get_cfg_defaults()))
    # dot.py alone believes it runs under DDP (the base trainer's own checks stay single-process).
    monkeypatch.setattr(dot_module, "distributed", SimpleNamespace(is_distributed=lambda: True))
    monkeypatch.setattr(dot_module, "average_over_ranks", lambda tensors: tensors)  # one process stands in
    with pytest.raises(RuntimeError, match=r"no task \(loss_ce\) gradient \(connectors\.connectors\.0\.0\.weight"):
        trainer._run_step(next(iter(loader)), epoch=1, step=0)


def test_ickd_on_kd_trains_with_dot(tmp_path):
    """ICKD's terms join the distillation side; the hooks (bank) run as under the base trainer."""
    from test_distributed import MLP, make_cfg, make_datasets

    from kdharness.data.loaders import build_loaders
    from kdharness.registry import distiller_dict

    cfg = make_cfg(tmp_path, 16, "ickd_dot").clone()
    cfg.defrost()
    cfg.SOLVER.TRAINER = "dot"
    cfg.freeze()
    train_set, val_set = make_datasets()
    train_loader, val_loader = build_loaders(cfg, train_set, val_set)
    torch.manual_seed(1)
    student, teacher = MLP(), MLP(hidden=10)
    teacher.requires_grad_(False)
    initial = copy.deepcopy(student.state_dict())
    distiller = distiller_dict["ICKD"](student, teacher, cfg, num_data=len(train_set))
    summary = trainer_dict["dot"](cfg.EXPERIMENT.NAME, distiller, train_loader, val_loader, cfg).train()
    assert summary["complete"] and summary["method"] == "ICKD+KD+DOT"
    assert distiller.bank.is_built
    assert all(not torch.equal(v, student.state_dict()[k]) for k, v in initial.items())
