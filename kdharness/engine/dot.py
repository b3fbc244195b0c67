"""DOT: Zhao et al., "DOT: A Distillation-Oriented Trainer" (ICCV 2023), as in mdistiller.

Plain SGD sums the task loss (cross-entropy) and the distillation loss before taking one
momentum step, so whichever gradient is larger dominates the shared momentum. DOT keeps a
momentum buffer per loss and gives the distillation loss the larger momentum:
``mu_task = SOLVER.MOMENTUM - SOLVER.DOT.DELTA`` and ``mu_kd = SOLVER.MOMENTUM + DELTA``.
One step, for each parameter ``p`` with learning rate ``lr``, weight decay ``wd``,
dampening ``d`` (0), task gradient ``g`` and distillation gradient ``k``:

- task buffer ``b`` (parameters with a task gradient): ``u = g + wd * p``; ``b <- u`` on its
  first step, else ``b <- mu * b + (1 - d) u`` with ``mu = mu_task`` if ``p`` also has a
  distillation gradient, ``(mu_task + mu_kd) / 2`` if not; then ``p <- p - lr * b``;
- distillation buffer ``c`` (parameters with a distillation gradient), after that:
  ``c <- k`` on its first step, else ``c <- mu_kd * c + (1 - d) k`` if ``p`` also has a task
  gradient, else ``c <- (mu_task + mu_kd) / 2 * c + (1 - d) (k + wd * p)``; then
  ``p <- p - lr * c``.

A parameter touched by only one loss thus gets the average momentum and the weight decay
once. These are mdistiller's semantics, its quirks included (no weight decay in a
distillation-only parameter's first step); the optimizer's state (``momentum_buffer``,
``momentum_kd_buffer``) and param-group keys (``momentum_kd``, ``dampening``) are
mdistiller's too, so its checkpoints resume here.

Trainers ``dot`` and ``crd_dot`` (mdistiller's names; ours pass contrastive indices in
both): the task loss is the ``loss_ce`` term (plus ``loss_teacher_ce``, the cross-entropy of
an online ICKD teacher), the distillation loss the sum of all others (mdistiller requires
exactly ``loss_ce`` and ``loss_kd``). Under DDP (ours; mdistiller's DOT
is single-process) the distillation gradients are taken with ``torch.autograd.grad``, which
DDP's gradient hooks do not see, and averaged over the ranks by one all-reduce; the task
backward is DDP's own, so under DDP every parameter the distillation loss reaches must also
get a task gradient (true of KD and DKD, the DOT configs); methods with modules only the
distillation loss trains (CRD's embeddings, OFD's connectors, ...) stop at the first step
with an error naming them.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from kdharness.engine import distributed
from kdharness.engine.trainer import BaseTrainer, unwrap
from kdharness.registry import register_trainer

# Cross-entropy on the labels: the student's, and an online-trained teacher's (ICKD online).
TASK_TERMS = ("loss_ce", "loss_teacher_ce")


class DistillationOrientedTrainer(torch.optim.Optimizer):
    """SGD with separate task / distillation momenta (see the module docstring).

    Per step: ``kd_loss.backward(retain_graph=True)``; ``step_kd()`` (takes the gradients
    and clears them); ``task_loss.backward()``; ``step()``. One param group only, as mdistiller.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float,
        momentum: float = 0.0,
        momentum_kd: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        for name, value in (("lr", lr), ("momentum", momentum), ("momentum_kd", momentum_kd), ("weight_decay", weight_decay)):
            if value < 0.0:
                raise ValueError(f"DistillationOrientedTrainer: {name} = {value}; expected >= 0")
        defaults = dict(lr=lr, momentum=momentum, momentum_kd=momentum_kd, dampening=dampening, weight_decay=weight_decay)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError(f"DistillationOrientedTrainer takes one parameter group; got {len(self.param_groups)}")
        self._kd_grads: dict[nn.Parameter, torch.Tensor] = {}

    def _params(self) -> list[nn.Parameter]:
        return self.param_groups[0]["params"]

    @torch.no_grad()
    def step_kd(self) -> None:
        """Keep the distillation gradients of this step (and clear ``.grad`` for the task backward)."""
        self._kd_grads = {}
        for p in self._params():
            if p.grad is not None:
                self._kd_grads[p] = p.grad
                p.grad = None

    def kd_gradients(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """The distillation gradients that ``step_kd`` took and the next ``step`` will use."""
        return list(self._kd_grads.items())

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Apply the task update, then the distillation update (module docstring)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        lr, wd, damp = group["lr"], group["weight_decay"], group["dampening"]
        mu_task, mu_kd = group["momentum"], group["momentum_kd"]
        mu_mean = (mu_task + mu_kd) / 2.0
        kd_grads, self._kd_grads = self._kd_grads, {}
        task_params = [p for p in self._params() if p.grad is not None]
        for p in task_params:
            update = p.grad.add(p, alpha=wd) if wd != 0 else p.grad
            if mu_task != 0:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.clone(update).detach()
                else:
                    buf.mul_(mu_task if p in kd_grads else mu_mean).add_(update, alpha=1 - damp)
                update = buf
            p.add_(update, alpha=-lr)
        with_task = set(task_params)
        for p, grad in kd_grads.items():
            state = self.state[p]
            buf = state.get("momentum_kd_buffer")
            if buf is None:
                buf = state["momentum_kd_buffer"] = torch.clone(grad).detach()
            elif p in with_task:
                buf.mul_(mu_kd).add_(grad, alpha=1 - damp)
            else:
                update = grad.add(p, alpha=wd) if wd != 0 else grad
                buf.mul_(mu_mean).add_(update, alpha=1 - damp)
            p.add_(buf, alpha=-lr)
        return loss


def split_losses(terms: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(task loss, distillation loss) of a distiller's loss dict: the sum of the ``TASK_TERMS``
    present (``loss_ce`` must be) and the sum of the rest."""
    task_names = [name for name in terms if name in TASK_TERMS]
    if "loss_ce" not in terms or len(terms) == len(task_names):
        raise ValueError(
            f"SOLVER.TRAINER dot needs a 'loss_ce' term and at least one distillation term; the "
            f"distiller returned {sorted(terms)} (DISTILLER.TYPE NONE has nothing to distil)"
        )
    task = sum(terms[name] for name in task_names)
    kd = sum(value for name, value in terms.items() if name not in TASK_TERMS)
    return task, kd


@register_trainer("dot")
class DOTTrainer(BaseTrainer):
    """BaseTrainer whose optimizer is DOT and whose step backpropagates the two losses apart."""

    def init_optimizer(self, cfg: Any) -> torch.optim.Optimizer:
        if cfg.SOLVER.TYPE != "SGD":
            raise ValueError(f"SOLVER.TYPE = {cfg.SOLVER.TYPE!r}; the dot trainer needs SGD")
        if cfg.SOLVER.AMP:
            raise ValueError("SOLVER.AMP is not supported by SOLVER.TRAINER dot (two backward passes, one scaler)")
        delta = float(cfg.SOLVER.DOT.DELTA)
        momentum = float(cfg.SOLVER.MOMENTUM)
        if not 0 <= delta <= momentum:
            raise ValueError(f"SOLVER.DOT.DELTA = {delta}; expected 0 <= DELTA <= SOLVER.MOMENTUM ({momentum})")
        return DistillationOrientedTrainer(
            unwrap(self.distiller).get_learnable_parameters(),
            lr=cfg.SOLVER.LR,
            momentum=momentum - delta,
            momentum_kd=momentum + delta,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        )

    def _backward_and_step(self, terms: dict[str, torch.Tensor], loss: torch.Tensor) -> None:
        task, kd = split_losses(terms)
        self.optimizer.zero_grad(set_to_none=True)
        params = [p for p in self.optimizer.param_groups[0]["params"] if p.requires_grad]
        if kd.requires_grad:
            grads = list(torch.autograd.grad(kd, params, retain_graph=True, allow_unused=True))
            if distributed.is_distributed():
                present = [i for i, g in enumerate(grads) if g is not None]
                for i, mean in zip(present, average_over_ranks([grads[i] for i in present])):
                    grads[i] = mean
            for p, grad in zip(params, grads):
                p.grad = grad
        self.optimizer.step_kd()
        task.backward()
        if distributed.is_distributed():
            self._check_task_gradients()
        self._check_gradients(grad for _, grad in self.optimizer.kd_gradients())  # both losses' gradients finite
        self.optimizer.step()

    def _check_task_gradients(self) -> None:
        """Under DDP, refuse parameters that got a distillation gradient but no task gradient."""
        kd_only = {id(p) for p, _ in self.optimizer.kd_gradients() if p.grad is None}
        if kd_only:
            names = [n for n, p in unwrap(self.distiller).named_parameters() if id(p) in kd_only]
            raise RuntimeError(
                f"SOLVER.TRAINER dot under DDP: {len(names)} parameters get a distillation gradient but no "
                f"task (loss_ce) gradient ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}); DDP "
                f"synchronises only the task backward, so {self.cfg.DISTILLER.TYPE} + DOT runs on one process"
            )


def average_over_ranks(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's mean over the ranks, as new tensors (one all-reduce of a flat copy)."""
    if not tensors:
        return []
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    return [chunk.view_as(t) for chunk, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


# mdistiller's CRD+DOT trainer only differs in passing contrastive indices, which ours always do.
register_trainer("crd_dot")(DOTTrainer)
