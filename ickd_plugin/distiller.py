"""The ICKD distiller: any registered base distiller plus PICD and NICD from retrieved in-context samples.

One training step runs the teacher once (with a hook on its classifier, which yields the
sample's pooled feature next to its logits) and the student once (inside the base
distiller). The base sees the teacher's output through a replay module that returns the
cached result, so a KD/DKD/CRD base costs no second teacher pass. The teacher's features
query the memory bank; the retrieved bank features go through the teacher's classifier to
give in-context logits, from which PICD and NICD are computed (docs/method.md).
"""
from __future__ import annotations

import inspect
import time
import warnings
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator, Mapping

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ickd_plugin.config import TEACHER_REQUIREMENT, ICKDOptions, parse_ickd_config
from ickd_plugin.diagnostics import as_floats, context_statistics, step_diagnostics
from ickd_plugin.features import ClassifierTap, find_classifier
from ickd_plugin.losses import (
    aggregate_context_logits,
    context_weights,
    mutual_kd_loss,
    nicd_loss,
    picd_loss,
    warmup_factor,
)
from ickd_plugin.bank_cache import bank_cache_key, cache_path, load_bank_cache, save_bank_cache, save_cache_or_warn
from ickd_plugin.distributed import all_gather_rows, dist_world
from ickd_plugin.memory_bank import MemoryBank, describe_bank, report
from ickd_plugin.retrieval import Retrieval, retrieve
from ickd_plugin.sharded_bank import ShardedMemoryBank, checkpoint_dir_for
from ickd_plugin.sharded_retrieval import sharded_retrieve
from ickd_plugin.teacher_pass import extract_features
from ickd_plugin.training_view import no_augmentation_view, preserved_rng

# Where make_ickd_trainer leaves the batch's dataset indices and the epoch for trainers that do
# not pass them (mdistiller's BaseTrainer drops the index, its CRDTrainer the epoch).
INDEX_STASH = "_ickd_index"
EPOCH_STASH = "_ickd_epoch"


class DistillerBase(nn.Module):
    """mdistiller's Distiller protocol (student + teacher; forward dispatches on training mode)."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher

    def train(self, mode: bool = True) -> "DistillerBase":
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.training = mode
        for module in self.children():
            module.train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def get_learnable_parameters(self) -> list[nn.Parameter]:
        return list(self.student.parameters())

    def get_extra_parameters(self) -> int:
        return 0

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, **kwargs: Any):
        raise NotImplementedError

    def forward_test(self, image: torch.Tensor) -> torch.Tensor:
        return self.student(image)[0]

    def forward(self, **kwargs: Any):
        if self.training:
            return self.forward_train(**kwargs)
        return self.forward_test(kwargs["image"])


class _Replay(nn.Module):
    """Stands in for the teacher inside the base distiller: returns this step's cached output, detached."""

    def __init__(self, logits: torch.Tensor, feats: Any) -> None:
        super().__init__()
        self.output = (logits.detach(), _detach_tree(feats))

    def forward(self, *args: Any, **kwargs: Any):
        return self.output


def _detach_tree(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.detach()
    if isinstance(value, dict):
        return {key: _detach_tree(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detach_tree(item) for item in value)
    return value


def build_base_distiller(
    base_cls: Any, student: nn.Module, teacher: nn.Module | None, cfg: Any, num_data: int | None
) -> nn.Module:
    """Construct a base the way its constructor asks: ``(student)``, ``(student, teacher)``,
    ``(student, teacher, cfg)``, plus ``num_data`` when it takes one (CRD)."""
    params = list(inspect.signature(base_cls).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    count = 3 if takes_varargs else min(3, len(positional))
    args = [student, teacher, cfg][:count]
    kwargs = {}
    names = {p.name for p in params}
    if "num_data" in names:
        num_data_param = next(p for p in params if p.name == "num_data")
        if num_data is not None:
            kwargs["num_data"] = num_data
        elif num_data_param.default is inspect.Parameter.empty:
            raise ValueError(
                f"ICKD.BASE {getattr(base_cls, '__name__', base_cls)} needs num_data (the training-set "
                "size); build ICKD with num_data=len(train_set), as for CRD"
            )
    return base_cls(*args, **kwargs)


def _share_without_owning(base: nn.Module, name: str, module: nn.Module | None) -> None:
    """Keep `base.<name>` pointing at `module` but out of base's submodules.

    ICKD owns the student and teacher itself (state_dict keys `student.*` / `teacher.*`, as
    any mdistiller distiller), so they must not appear a second time under `base.`.
    """
    if module is not None and base._modules.get(name) is module:
        del base._modules[name]
        base.__dict__[name] = module


class ICKD(DistillerBase):
    """In-Context Knowledge Distillation on top of the distiller named by ICKD.BASE.

    Use the class returned by `ickd_distiller_class(distiller_dict)` (what `register()` puts
    in `distiller_dict["ICKD"]`): it knows the registry in which to look ICKD.BASE up.
    """

    registry: ClassVar[Mapping[str, Any] | None] = None

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: Any, num_data: int | None = None) -> None:
        registry = type(self).registry
        if registry is None:
            raise TypeError("use ickd_plugin.register(distiller_dict, CFG) and distiller_dict['ICKD'], not ICKD itself")
        opts = parse_ickd_config(cfg.ICKD, registry)
        if opts.paradigm == "teacher_free":
            if teacher is not None:
                warnings.warn("ICKD.PARADIGM teacher_free ignores the given teacher", stacklevel=2)
            teacher = None
        elif teacher is None:
            raise ValueError(
                f"ICKD.PARADIGM {opts.paradigm} distils from a teacher, but none was given; "
                "set DISTILLER.TEACHER (or ICKD.PARADIGM teacher_free)"
            )
        super().__init__(student, teacher)
        if opts.paradigm == "offline":
            # Frozen: no gradient is ever wanted, and DDP must not wait for one.
            teacher.requires_grad_(False)
        self.opts: ICKDOptions = opts
        # The online teacher's CE is smoothed as the student's (a host's SOLVER.LABEL_SMOOTHING;
        # mdistiller has no such key: 0).
        solver = getattr(cfg, "SOLVER", None)
        self.label_smoothing = float(solver.get("LABEL_SMOOTHING", 0.0)) if solver is not None else 0.0
        self.base = build_base_distiller(registry[opts.base], student, teacher, cfg, num_data)
        _share_without_owning(self.base, "student", student)
        _share_without_owning(self.base, "teacher", teacher)
        self.bank = self._make_bank(opts)
        self._pending_refresh: tuple[torch.Tensor, torch.Tensor] | None = None
        self._context_stats: torch.Tensor | None = None  # set by in_context_losses
        self._last_diagnostics: torch.Tensor | None = None  # ickd_plugin.diagnostics, last step
        self._check_networks()

    def __new__(cls, student: nn.Module, teacher: nn.Module | None, cfg: Any, num_data: int | None = None) -> "ICKD":
        # A segmentation student (`get_dense_classifier`, docs/architecture.md) gets the dense
        # ICKD of the same registry: one DISTILLER.TYPE "ICKD" for both tasks. (The signature
        # repeats __init__'s: hosts read it to learn whether to pass num_data.)
        dense = getattr(cls, "dense_class", None)
        if dense is not None and not issubclass(cls, dense) and hasattr(student, "get_dense_classifier"):
            return dense(student, teacher, cfg, num_data)
        return super().__new__(cls)

    def _make_bank(self, opts: ICKDOptions) -> nn.Module:
        bank_class = ShardedMemoryBank if opts.bank_sharded else MemoryBank
        return bank_class(opts.bank_dtype, persistent=opts.paradigm != "offline", centered=opts.similarity == "centered")

    def _check_networks(self) -> None:
        """Fail at construction, not at the first step, when a network has no classifier to tap."""
        find_classifier(self.student)
        find_classifier(self.bank_model)

    # ------------------------------------------------------------------ protocol

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Refuse bad ``ICKD.*`` values when the config is loaded, before data and models are built."""
        parse_ickd_config(cfg.ICKD, cls.registry)

    @classmethod
    def teacher_requirement(cls, cfg: Any) -> str:
        """What the harness must build as teacher: pretrained (offline), scratch (online), none (teacher-free)."""
        node = getattr(cfg, "ICKD", None)
        paradigm = node.PARADIGM if node is not None else "offline"
        return TEACHER_REQUIREMENT.get(paradigm, "pretrained")

    @property
    def bank_model(self) -> nn.Module:
        """The network whose features fill the bank: the teacher, or the student when teacher-free."""
        return self.teacher if self.teacher is not None else self.student

    def train(self, mode: bool = True) -> "ICKD":
        super().train(mode)  # children: student, teacher, base, bank; the base may set its teacher to eval
        if self.teacher is not None:
            online = self.opts.paradigm == "online"
            self.teacher.train(mode and (online or self._base_trains_teacher()))
        return self

    def _base_trains_teacher(self) -> bool:
        """Whether the base's own ``train(True)`` leaves its teacher in training mode.

        Most bases keep the teacher in eval mode; mdistiller's OFD keeps it training (batch
        statistics). ICKD's single teacher pass feeds the base, so it must run in the mode the
        base would have chosen. The teacher is lent back to the base as a child for the call.
        """
        base = self.base
        if base.__dict__.get("teacher") is not self.teacher or "teacher" in base._modules:
            return False
        base._modules["teacher"] = self.teacher
        try:
            base.train(True)
            return self.teacher.training
        finally:
            del base._modules["teacher"]

    def get_learnable_parameters(self) -> list[nn.Parameter]:
        params = list(self.base.get_learnable_parameters())
        if self.opts.paradigm == "online":
            params += list(self.teacher.parameters())
        seen: set[int] = set()
        return [p for p in params if not (id(p) in seen or seen.add(id(p)))]

    def get_extra_parameters(self) -> int:
        getter = getattr(self.base, "get_extra_parameters", None)
        return int(getter()) if callable(getter) else 0

    def trainer_hooks(self) -> list["ICKDHooks"]:
        """What the trainer calls: before_train (fills the bank), after_step (refreshes it)."""
        return [ICKDHooks(self)]

    def diagnostics(self) -> dict[str, float]:
        """The last training step's diagnostics (`ickd_plugin.diagnostics.NAMES`), {} before any step.

        Detached scalars, not losses: a host logs them (docs/architecture.md), never sums them.
        """
        return as_floats(self._last_diagnostics)

    # ------------------------------------------------------------------ the bank

    def _bank_device(self) -> torch.device:
        if self.opts.bank_device == "cpu":
            return torch.device("cpu")
        if self.opts.bank_device == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return next(self.bank_model.parameters()).device

    def _bank_from_resume_state(self, trainer: Any) -> bool:
        """Online / teacher-free under --resume: take the bank from the checkpoint about to be
        restored (a host's ``trainer.resume_state``), not from a pass the restore would overwrite."""
        state = getattr(trainer, "resume_state", None)
        model_state = state.get("model") if isinstance(state, dict) else None
        if not isinstance(model_state, dict):
            return False
        for prefix in ("bank.", "module.bank."):
            if prefix + "features" in model_state:
                self.bank.load_state_dict({k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)})
                return self.bank.is_built
        return False

    def build_bank(self, trainer: Any) -> None:
        """Fill the bank from the training set seen without augmentation (idempotent).

        Offline: reuse the bank if already built for the same key, else a valid cache file,
        else run the teacher over the data (and write the cache). Online / teacher-free: the
        initial bank comes from the untrained network; a bank restored from a checkpoint is kept.
        """
        model = self.bank_model
        classifier = find_classifier(model)
        view = no_augmentation_view(trainer.train_loader.dataset, trainer.val_loader.dataset)
        device = self._bank_device()
        offline = self.opts.paradigm == "offline"
        key = bank_cache_key(model, view, self.opts.bank_dtype, warn_if_unseen=self.opts.use_cache) if offline else None
        if self.bank.is_built and (not offline or self.bank.key == key):
            self.bank.to(device)
            self.bank.check_capacity(self.opts.k, self.opts.n, self.opts.all_same_class)
            origin = "already built for this teacher and data" if offline else "restored from the checkpoint"
            report(f"memory bank: reused, {origin}: {describe_bank(self.bank.features)}")
            return
        if not offline and type(self.bank) is MemoryBank and self._bank_from_resume_state(trainer):
            self.bank.to(device)
            self.bank.check_capacity(self.opts.k, self.opts.n, self.opts.all_same_class)
            report(f"memory bank: restored from the checkpoint being resumed: {describe_bank(self.bank.features)}")
            return
        if isinstance(self.bank, ShardedMemoryBank):  # each rank fills (or reads) its own rows only
            self.bank.checkpoint_dir = checkpoint_dir_for(trainer)
            self.bank.build(
                model, classifier, view, self.opts.bank_batch_size, int(getattr(trainer.train_loader, "num_workers", 0)),
                device, key=key, cache_dir=self.opts.cache_dir if offline and self.opts.use_cache else None,
                resume_state=getattr(trainer, "resume_state", None),
            )
            self.bank.check_capacity(self.opts.k, self.opts.n, self.opts.all_same_class)
            return
        path = cache_path(self.opts.cache_dir, key) if offline and self.opts.use_cache else None
        started = time.perf_counter()
        cached = load_bank_cache(path, key) if path else None
        if dist_world()[1] > 1 and path:  # every rank must take the same branch (building is collective)
            flag = torch.tensor([int(cached is not None)], device=next(model.parameters()).device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            cached = cached if int(flag.item()) else None
        if cached is not None:
            features, labels, indices = cached
        else:
            num_workers = int(getattr(trainer.train_loader, "num_workers", 0))
            # The pass must not consume the global RNG: a run that finds the cache and one that
            # builds the bank then start training from the same random state.
            with preserved_rng():
                features, labels, indices = extract_features(
                    model, classifier, view, self.opts.bank_batch_size, num_workers,
                    dtype=self.bank.dtype, device=device, progress=True,
                )
        self.bank.fill(features, labels, indices, classifier.out_features, device, key=key)
        self.bank.check_capacity(self.opts.k, self.opts.n, self.opts.all_same_class)
        if path and cached is None and dist_world()[0] == 0:
            if not save_cache_or_warn(path, save_bank_cache, key, self.bank.features, self.bank.labels,
                                      indices.sort().values):
                path = None  # the report below must not claim a cache
        seconds = time.perf_counter() - started
        if cached is not None:
            how = f"loaded from the cache {path}"
        else:
            network = "teacher" if model is self.teacher else "student"
            how = f"built by the {network} from {len(view)} training samples without augmentation"
            how += f", cached to {path}" if path else ""
        report(f"memory bank: {how} in {seconds:.1f} s: {describe_bank(self.bank.features)}")

    def refresh_bank(self) -> None:
        """Online / teacher-free: blend the last step's features into their rows (all ranks alike)."""
        if self._pending_refresh is None:
            return
        index, features = self._pending_refresh
        self._pending_refresh = None
        if isinstance(self.bank, ShardedMemoryBank):  # its retrieval gathered the global batch already
            self.bank.refresh_last_batch(self.opts.bank_momentum)
            return
        index = all_gather_rows(index.to(features.device).long())
        features = all_gather_rows(features)
        self.bank.refresh(self.bank.rows_for(index), features, self.opts.bank_momentum)

    # ------------------------------------------------------------------ the step

    def _take_index(self, kwargs: dict) -> torch.Tensor:
        index = kwargs.get("index")
        if index is None:
            index = self.__dict__.pop(INDEX_STASH, None)
        else:
            self.__dict__.pop(INDEX_STASH, None)
        if index is None:
            raise ValueError(
                "ICKD needs each sample's dataset index (to exclude the sample from its own positives "
                "and to refresh the bank): call distiller(image=..., target=..., index=..., epoch=...), "
                'or with mdistiller\'s trainers set SOLVER.TRAINER "ickd" (or "ickd_crd" for a CRD base)'
            )
        return index

    def _take_epoch(self, kwargs: dict) -> Any:
        """The epoch passed to the call, else the one the trainer stashed (None if neither)."""
        stashed = self.__dict__.pop(EPOCH_STASH, None)
        epoch = kwargs.get("epoch")
        return stashed if epoch is None else epoch

    @contextmanager
    def _replay_teacher(self, logits: torch.Tensor, feats: Any) -> Iterator[None]:
        """Let the base call `self.teacher(image)` and get this step's teacher output for free."""
        if self.base.__dict__.get("teacher") is not self.teacher or self.teacher is None:
            yield
            return
        self.base.__dict__["teacher"] = _Replay(logits, feats)
        try:
            yield
        finally:
            self.base.__dict__["teacher"] = self.teacher

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, **kwargs: Any):
        if not self.bank.is_built:
            raise RuntimeError(
                "the ICKD memory bank is empty: the trainer must call distiller.trainer_hooks().before_train"
                '(trainer) before training (mdistiller: set SOLVER.TRAINER "ickd")'
            )
        index = self._take_index(kwargs)
        if index.shape[0] != image.shape[0]:
            raise ValueError(
                f"ICKD got {index.shape[0]} dataset indices for {image.shape[0]} images; with mdistiller's "
                "trainer this happens under multi-GPU DataParallel, which splits the images but not the "
                "stashed indices: train on one GPU per process (DDP) instead"
            )
        scale = warmup_factor(self._take_epoch(kwargs), self.opts.warmup)
        kwargs["index"] = index
        paradigm = self.opts.paradigm
        if paradigm == "teacher_free":
            classifier = find_classifier(self.student)
            with ClassifierTap(classifier) as tap:
                logits_student, losses = self.base.forward_train(image=image, target=target, **kwargs)
            query, own_logits = tap.features.detach(), logits_student.detach()
        else:
            classifier = find_classifier(self.teacher)
            with ClassifierTap(classifier) as tap, torch.set_grad_enabled(paradigm == "online" and torch.is_grad_enabled()):
                logits_teacher, feats_teacher = self.teacher(image)
            query, own_logits = tap.features.detach(), logits_teacher.detach()
            with self._replay_teacher(logits_teacher, feats_teacher):
                logits_student, losses = self.base.forward_train(image=image, target=target, **kwargs)
        losses = dict(losses)
        base_losses = list(losses.values())
        loss_picd, loss_nicd = self.in_context_losses(query, target, index, logits_student, own_logits, classifier)
        losses["loss_picd"] = scale * self.opts.picd_weight * loss_picd
        losses["loss_nicd"] = scale * self.opts.nicd_weight * loss_nicd
        self._last_diagnostics = step_diagnostics(base_losses, losses["loss_picd"], losses["loss_nicd"], self._context_stats)
        if paradigm == "online":
            losses["loss_teacher_ce"] = self.opts.online_ce_weight * F.cross_entropy(
                logits_teacher, target, label_smoothing=self.label_smoothing
            )
            losses["loss_teacher_kd"] = self.opts.online_mutual_weight * mutual_kd_loss(
                logits_teacher, logits_student, self.opts.temperature
            )
        if paradigm != "offline":
            self._pending_refresh = (index, query)
        return logits_student, losses

    def _clean_query(self, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """ICKD.QUERY clean: each sample's own bank row (`rows`, from `bank.rows_for(index)`), the
        un-augmented feature the bank holds for it."""
        if bool((rows < 0).any()):
            missing = index[(rows < 0).to(index.device)].tolist()[:5]
            raise ValueError(f"ICKD.QUERY clean: dataset indices {missing} have no bank row; the bank must hold "
                             "every training sample (or set ICKD.QUERY augmented)")
        return self.bank.features[rows].float()

    def retrieve_context(
        self, query: torch.Tensor, target: torch.Tensor, index: torch.Tensor
    ) -> tuple[Retrieval, torch.Tensor, torch.Tensor]:
        """(retrieval, positive bank features, negative bank features) for the batch's queries."""
        opts, bank = self.opts, self.bank
        device = bank.features.device
        if isinstance(bank, ShardedMemoryBank):  # candidates per shard, merged; the rows sent by their owners
            return sharded_retrieve(  # (ICKD.QUERY clean is refused with a sharded bank)
                bank, query.to(device), target, index, opts.k, opts.n, chunk_size=opts.bank_chunk_size
            )
        own_rows = bank.rows_for(index)
        if opts.query == "clean":
            query = self._clean_query(index, own_rows)
        found = retrieve(
            query.to(device), target.to(device, non_blocking=True).long(), own_rows, bank.features, bank.inv_norms,
            bank.class_rows, opts.k, opts.n, all_same_class=opts.all_same_class, chunk_size=opts.bank_chunk_size,
            center=bank.similarity_center, ties=bank.ties,
        )
        return found, bank.features[found.pos_rows], bank.features[found.neg_rows]

    def in_context_losses(
        self,
        query: torch.Tensor,
        target: torch.Tensor,
        index: torch.Tensor,
        logits_student: torch.Tensor,
        own_logits: torch.Tensor,
        classifier: nn.Linear,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(PICD, NICD) for the batch: retrieve, classify the retrieved bank features, compare."""
        opts = self.opts
        # Retrieval and the in-context logits are constants of the step: no graph, and full
        # precision even under autocast, so that the ranking does not depend on AMP.
        with torch.no_grad(), torch.autocast(device_type=logits_student.device.type, enabled=False):
            found, positives, negatives = self.retrieve_context(query, target, index)
            weight, bias = classifier.weight.detach(), None if classifier.bias is None else classifier.bias.detach()
            out = logits_student.device
            positives = positives.to(out, weight.dtype)
            negatives = negatives.to(out, weight.dtype)
            weights = context_weights(found.pos_sim.to(out), opts.tau)
            context_logits = aggregate_context_logits(weights, positives, weight, bias)
            negative_logits = F.linear(negatives, weight, bias)
            self._context_stats = context_statistics(
                found.pos_sim, found.pos_mask, found.neg_sim, logits_student, negative_logits, opts.beta2, opts.temperature,
                weights=weights,
            )
        loss_picd = picd_loss(logits_student, context_logits, own_logits, opts.beta1, opts.temperature)
        loss_nicd = nicd_loss(logits_student, negative_logits, opts.beta2, opts.temperature)
        return loss_picd, loss_nicd


class ICKDHooks:
    """Trainer hooks of one ICKD distiller (the host calls them; `make_ickd_trainer` does for mdistiller)."""

    def __init__(self, distiller: ICKD) -> None:
        self.distiller = distiller

    def before_train(self, trainer: Any) -> None:
        self.distiller.build_bank(trainer)

    def after_step(self, trainer: Any, step: int | None = None, losses: Any = None) -> None:
        self.distiller.refresh_bank()

    def before_checkpoint(self, trainer: Any, step: int) -> None:
        """Every rank, before rank 0 writes a checkpoint: a sharded online bank writes its rows."""
        bank = self.distiller.bank
        if isinstance(bank, ShardedMemoryBank) and self.distiller.opts.paradigm != "offline":
            bank.save_for_checkpoint(step)
