"""The training loop: mdistiller's BaseTrainer, made resumable to the step and observable.

Same constructor and `train(resume=False)` as mdistiller, so its trainer variants and
plugins that subclass it keep working. What it adds:

- hook points (`before_train`, `after_step`, `before_checkpoint`, `after_epoch`) that a
  distiller offers through `trainer_hooks()`; ICKD builds and refreshes its memory bank
  there (`before_checkpoint(trainer, global_step)` runs on every rank before rank 0 writes
  a full checkpoint: a sharded bank writes its rows then);
- exact resume: checkpoints carry the step within the epoch, the meters, the RNG states and
  every registered buffer, and the data order is a pure function of (seed, epoch);
- safety: atomic checkpoints with checksums, fallback to the newest intact one, a lock on
  the run directory, SIGINT/SIGTERM saving a resumable state, a NaN/inf guard;
- a machine-readable `summary.json` per run next to mdistiller's `worklog.txt`.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
from tqdm import tqdm

from kdharness.data.loaders import build_train_eval_loader
from kdharness.engine import distributed, run_dir
from kdharness.engine.checkpoint import atomic_write_bytes, keep_previous, save_checkpoint
from kdharness.engine.step_state import StepStateSnapshot
from kdharness.engine.diagnostics import DiagnosticsLog
from kdharness.engine.io_errors import append_text
from kdharness.engine.run_info import run_metadata
from kdharness.engine.scalar_log import open_scalar_log
from kdharness.engine.tasks import task_for, validate  # noqa: F401  (validate: tools/eval.py's and the tests' import)
from kdharness.engine.utils import (
    AverageMeter,
    learning_rate,
    log_msg,
    rng_state,
    set_learning_rate,
    set_rng_state,
    shows_progress,
)
from kdharness.registry import register_trainer

METER_NAMES = ("training_time", "data_time", "losses", "top1", "top5")
# Schedules whose LR changes at every step (the others change once per epoch).
PER_STEP_SCHEDULERS = ("cosine", "poly")


class RunDirectoryLocked(RuntimeError):
    """Another live process is writing to the same run directory."""


# tools/train.py's exit status for RunDirectoryLocked (EX_TEMPFAIL: try again later);
# tools/sweep.py counts a run that ends with it as busy, not as failed.
EXIT_RUN_DIRECTORY_LOCKED = 75


class NonFiniteLossError(FloatingPointError):
    """A loss term or a gradient became NaN or infinite (or too many were skipped); the state before the step was saved."""


class NonFiniteGradient(FloatingPointError):
    """Raised between backward and the optimizer step; the message names the parameters."""


def unwrap(module: nn.Module) -> nn.Module:
    """The distiller inside DataParallel / DistributedDataParallel wrappers."""
    return module.module if hasattr(module, "module") else module


def is_main_process() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0


class _StopRequested(Exception):
    pass


@register_trainer("base")
class BaseTrainer:
    """SGD training of a distiller with per-epoch evaluation, logs and checkpoints."""

    def __init__(self, experiment_name: str, distiller: nn.Module, train_loader, val_loader, cfg) -> None:
        self.cfg = cfg
        self.task = task_for(cfg)  # classification or segmentation: the score, evaluation and words
        self.distiller = distiller
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.device = next(unwrap(distiller).parameters()).device
        self.log_path = os.path.join(cfg.LOG.PREFIX, experiment_name)
        self.is_main = is_main_process()
        self.best_acc = -1.0
        self.best_epoch = 0
        self.history: list[dict[str, float]] = []
        self.wall_time = 0.0
        self.start_epoch, self.start_step = 1, 0
        self.global_step = 0
        self.skipped_steps = 0
        self.meters = {name: AverageMeter() for name in METER_NAMES}
        self.optimizer = self.init_optimizer(cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=bool(cfg.SOLVER.AMP) and self.device.type == "cuda")
        if cfg.SOLVER.AMP and self.device.type != "cuda" and self.is_main:
            # CPU autocast would mean bfloat16, which most CPUs run slower than float32.
            print(log_msg(f"SOLVER.AMP applies to CUDA only; on {self.device.type} this run stays in float32", "WARN"))
        self.hooks: list[Any] = list(getattr(unwrap(distiller), "trainer_hooks", lambda: [])())
        # What a forward changes in the buffers (BatchNorm statistics, CRD's memory rows), copied
        # before each step so that a skipped one can be undone.
        dataset = getattr(train_loader, "dataset", None)
        self._step_state = StepStateSnapshot(unwrap(distiller), len(dataset) if dataset is not None else 0)
        self.diagnostics = DiagnosticsLog(unwrap(distiller))  # the distiller's optional diagnostics()
        self._stop_signal: int | None = None
        self._resumed_from: str | None = None
        self._stop_agreed = False  # distributed: some rank had a stop signal at the last step
        self._lock_handle = None
        self.tf_writer = None
        self.train_eval_loader = None
        if cfg.LOG.get("EVAL_TRAIN_SET", False) and hasattr(train_loader, "dataset"):
            self.train_eval_loader = build_train_eval_loader(cfg, train_loader.dataset, val_loader.dataset)
        # The directory, its lock (a second live run is refused at once) and the event writer.
        # `kdharness.engine.build.check_run_directory` refuses a command that cannot run
        # before the trainer is built: such a command creates nothing.
        self._open_run_directory()
        self._open_event_writer()

    # -- set-up -------------------------------------------------------------------------
    def init_optimizer(self, cfg) -> torch.optim.Optimizer:
        if cfg.SOLVER.TYPE != "SGD":
            raise ValueError(f"SOLVER.TYPE = {cfg.SOLVER.TYPE!r}; allowed: SGD")
        return torch.optim.SGD(
            unwrap(self.distiller).get_learnable_parameters(),
            lr=cfg.SOLVER.LR,
            momentum=cfg.SOLVER.MOMENTUM,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        )

    def register_hook(self, hook: Any) -> None:
        self.hooks.append(hook)

    def _call_hooks(self, event: str, *args: Any) -> None:
        for hook in self.hooks:
            method: Callable | None = getattr(hook, event, None)
            if method is not None:
                method(self, *args)

    def _acquire_lock(self) -> None:
        """Refuse a second live run in the same directory; the OS drops the lock when we die.

        The file names its holder while the run lives and is emptied when the run ends; a
        holder named by a file whose lock nobody holds is a process that died, and its lock
        is taken over with a note.
        """
        path = os.path.join(self.log_path, "run.lock")
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise RunDirectoryLocked(
                f"run directory {self.log_path!r} is in use by another training process ({owner}); "
                "choose another EXPERIMENT.NAME / LOG.PREFIX or wait for it to finish"
            ) from None
        handle.seek(0)
        stale = handle.read().strip()
        if stale:
            print(log_msg(f"taking over the lock of {path}: its holder ({stale}) ended without releasing it", "INFO"))
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        handle.flush()
        self._lock_handle = handle

    def _release_lock(self) -> None:
        """Empty the lock file (it then names no holder) and unlock it."""
        if self._lock_handle is not None:
            self._lock_handle.seek(0)
            self._lock_handle.truncate()
            self._lock_handle.flush()
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    def _open_run_directory(self) -> None:
        """Rank 0: create the run directory and take its lock (before anything in it changes)."""
        if self.is_main:
            os.makedirs(self.log_path, exist_ok=True)
            self._acquire_lock()

    def _open_event_writer(self) -> None:
        if self.is_main:
            # tensorboard events, and wandb with LOG.WANDB (kdharness/engine/scalar_log.py, wandb_log.py)
            self.tf_writer = open_scalar_log(self.log_path, self.cfg, os.path.relpath(self.log_path, self.cfg.LOG.PREFIX))

    # -- checkpoints --------------------------------------------------------------------
    def _state(self, epoch: int, step_in_epoch: int) -> dict[str, Any]:
        """Everything needed to continue exactly: `step_in_epoch` batches of `epoch` are done."""
        return {
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": self.global_step,
            "model": unwrap(self.distiller).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "meters": {name: meter.state_dict() for name, meter in self.meters.items()},
            "diagnostics": self.diagnostics.state_dict(),
            "rng": rng_state(),
            "wall_time": self.wall_time,
            "skipped_steps": self.skipped_steps,
            "config": self.cfg.dump(),  # what `--resume` compares the current config with
        }

    def _save(self, state: dict[str, Any], name: str) -> None:
        save_checkpoint(state, os.path.join(self.log_path, name))

    def _save_latest(self, state: dict[str, Any]) -> None:
        """Keep the previous `latest` as `latest.prev` so one bad write never loses the run."""
        path = os.path.join(self.log_path, "latest")
        if os.path.exists(path):
            keep_previous(path, path + ".prev")  # `latest` stays too, should its successor fail to write
        save_checkpoint(state, path)

    def _prepare_run_directory(self, resume: bool, start_over: bool) -> dict[str, Any] | None:
        """Before any training: the checkpoint to resume from (config checked), or a directory
        free of any earlier run (refused, or that run set aside with `start_over`)."""
        if resume:
            path, state = run_dir.load_resume_state(self.log_path, warn=lambda m: print(log_msg(m, "WARN")))
            run_dir.check_resume_config(self.log_path, state, self.cfg.dump())
            self._resumed_from = path
            return state
        # Every rank checks (so all refuse together); only rank 0 moves the old run aside.
        moved = run_dir.prepare_fresh_start(self.log_path, start_over, move=self.is_main)
        distributed.barrier()
        if moved is not None:
            print(log_msg(f"--start-over: the earlier run in {self.log_path} was moved to {moved}", "WARN"))
            self.tf_writer.reopen()  # its events file moved along; continue in a new one
        if self.is_main:
            print(log_msg(f"run directory {self.log_path} (its config and every epoch go to worklog.txt)", "INFO"))
        return None

    def load_resume_state(self) -> None:
        """Load the newest intact full checkpoint (say which were skipped and why) and continue from it."""
        self._restore(self._prepare_run_directory(resume=True, start_over=False))

    def _restore(self, state: dict[str, Any], announce: bool = True) -> None:
        unwrap(self.distiller).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state.get("scaler", {}))
        self.best_acc = state["best_acc"]
        self.best_epoch = state.get("best_epoch", 0)
        self.history = list(state.get("history", []))
        self.wall_time = state.get("wall_time", 0.0)
        self.global_step = state.get("global_step", 0)
        self.skipped_steps = state.get("skipped_steps", 0)
        step = state.get("step_in_epoch", 0)
        # step == len(loader): stopped after the epoch's last step, before its evaluation;
        # train_epoch then runs no step and goes straight to end_epoch.
        if step and step <= len(self.train_loader):
            self.start_epoch, self.start_step = state["epoch"], step
            for name, meter_state in state["meters"].items():
                self.meters[name].load_state_dict(meter_state)
            self.diagnostics.load_state_dict(state.get("diagnostics", {}))
        else:
            self.start_epoch, self.start_step = state["epoch"] + 1, 0
        if "rng" in state:
            set_rng_state(state["rng"])
        if self.is_main and announce:
            where = f"step {self.start_step} of {len(self.train_loader)}" if self.start_step else "its start"
            source = self._resumed_from or "the checkpoint"
            print(log_msg(
                f"resuming from {source} (epoch {state['epoch']}, step {step}, global step {self.global_step}): "
                f"continuing with epoch {self.start_epoch} of {self.cfg.SOLVER.EPOCHS} at {where}", "INFO"))

    # -- signals ------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        previous = {}

        def request_stop(signum, _frame):
            self._stop_signal = signum

        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, request_stop)
        except ValueError:  # not the main thread: leave signals alone
            pass
        return previous

    # -- the loop -----------------------------------------------------------------------
    def train(self, resume: bool = False, start_over: bool = False) -> dict[str, Any]:
        """Train to SOLVER.EPOCHS; returns the run summary (also written to summary.json).

        Without `resume`, a run directory that already holds a run is refused
        (`run_dir.ExistingRunError`) unless `start_over`, which moves that run aside first.
        """
        state = self._prepare_run_directory(resume, start_over)
        try:
            return self._train_from(state)
        finally:  # on every way out; the file then names no holder
            if self.tf_writer is not None:
                self.tf_writer.close()
            self._release_lock()

    def _train_from(self, state: dict[str, Any] | None) -> dict[str, Any]:
        if state is not None and state["epoch"] >= self.cfg.SOLVER.EPOCHS and not state.get("step_in_epoch"):
            print(log_msg(
                f"{self.log_path} is complete: all {self.cfg.SOLVER.EPOCHS} epochs are trained, nothing to resume "
                f"(best {self.task.metric} {state['best_acc']:.2f}); raise SOLVER.EPOCHS to train it further", "INFO"))
            self._restore(state, announce=False)
            return self.write_summary(complete=True, persist=False)
        # Hooks may read the checkpoint about to be restored (ICKD takes an online bank from
        # it instead of building one the restore would overwrite).
        self.resume_state = state
        self._call_hooks("before_train")
        if state is not None:
            self._restore(state)
        self.resume_state = None
        previous_handlers = self._install_signal_handlers()
        try:
            for epoch in range(self.start_epoch, self.cfg.SOLVER.EPOCHS + 1):
                self.train_epoch(epoch)
        except _StopRequested:
            print(log_msg(f"stopped by signal {self._stop_signal}; resume with --resume", "WARN"))
            raise SystemExit(128 + int(self._stop_signal or 0))
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
        summary = self.write_summary(complete=True)
        if self.is_main:
            what = "accuracy" if self.task.metric == "top-1" else self.task.metric
            print(log_msg(f"Best {what}: {self.best_acc:.2f} (epoch {self.best_epoch}); run directory {self.log_path}", "EVAL"))
            append_text(os.path.join(self.log_path, "worklog.txt"), f"best_acc\t{self.best_acc:.2f}\n")
        return summary

    def train_epoch(self, epoch: int) -> None:
        lr = learning_rate(epoch, self.cfg)
        set_learning_rate(self.optimizer, lr)
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        first_step = self.start_step if epoch == self.start_epoch else 0
        if first_step:
            sampler.set_start(first_step, self.cfg.SOLVER.BATCH_SIZE)
        else:
            self.meters = {name: AverageMeter() for name in METER_NAMES}
            self.diagnostics.reset()
        num_iter = len(self.train_loader) + first_step
        self.distiller.train()
        pbar = tqdm(total=num_iter, initial=first_step, disable=not (self.is_main and shows_progress()), dynamic_ncols=True)
        self._pbar = pbar  # closed by a NaN stop too, so its error line starts a line of its own
        step = first_step
        epoch_start = time.time()
        for data in self.train_loader:
            if self.cfg.SOLVER.SCHEDULER in PER_STEP_SCHEDULERS:
                set_learning_rate(self.optimizer, learning_rate(epoch, self.cfg, step / num_iter))
            losses = self._run_step(data, epoch, step)
            step += 1
            self.global_step += 1
            if losses is not None:  # a skipped step must not reach the hooks (ICKD would bank its features)
                self._call_hooks("after_step", self.global_step, losses)
            if not pbar.disable:  # redrawn at tqdm's pace (mininterval), not at every step
                pbar.set_description(log_msg(self._progress_message(epoch), "TRAIN"), refresh=False)
            pbar.update()
            stop = self._stop_requested()
            if stop or (self.cfg.LOG.SAVE_STEP_FREQ and step % self.cfg.LOG.SAVE_STEP_FREQ == 0 and step < num_iter):
                self.wall_time += time.time() - epoch_start
                epoch_start = time.time()
                self._call_hooks("before_checkpoint", self.global_step)
                if self.is_main:
                    self._save_latest(self._state(epoch, step))
                if stop:
                    pbar.close()
                    raise _StopRequested
        pbar.close()
        self.wall_time += time.time() - epoch_start
        self._epoch_seconds = time.time() - epoch_start
        self.end_epoch(epoch, lr)

    def _batch_to_device(self, data) -> dict[str, torch.Tensor]:
        names = ("image", "target", "index", "contrastive_index")
        batch = {}
        for name, value in zip(names, data):
            value = torch.as_tensor(value).to(self.device, non_blocking=True)
            batch[name] = value.float() if name == "image" else value
        if self.cfg.SOLVER.CHANNELS_LAST:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch

    def _run_step(self, data, epoch: int, step: int) -> dict[str, float] | None:
        """One optimisation step; the loss terms, or None for a non-finite step that was skipped."""
        start = time.time()
        batch = self._batch_to_device(data)
        self.meters["data_time"].update(time.time() - start)
        self.optimizer.zero_grad(set_to_none=True)
        self._step_state.take(batch.get("index"))
        with torch.autocast(device_type=self.device.type, enabled=self.scaler.is_enabled()):
            try:
                preds, losses_dict = self.distiller(**batch, epoch=epoch)
            except RuntimeError as error:
                if "find_unused_parameters" in str(error):  # DDP found a parameter that got no gradient
                    raise RuntimeError(
                        f"{error}\nIn this harness: set SOLVER.DDP_FIND_UNUSED_PARAMETERS True for a "
                        f"method ({self.cfg.DISTILLER.TYPE}) whose parameters are not all used in every step"
                    ) from error
                raise
        terms = {name: loss.mean() for name, loss in losses_dict.items()}
        loss = sum(terms.values())
        non_finite = not torch.isfinite(loss)
        if distributed.is_distributed():
            # All ranks must take the same branch: a rank that skips a batch, or stops, alone
            # would leave the others waiting in the gradient all-reduce.
            non_finite, self._stop_agreed = distributed.any_rank(non_finite, self._stop_signal is not None)
        if non_finite:
            self._handle_non_finite(epoch, step, terms)
            return None
        try:
            self._backward_and_step(terms, loss)
        except NonFiniteGradient as error:  # a finite loss whose gradient is not (KDSVD's SVD once)
            self._handle_non_finite(epoch, step, terms, what=f"gradient ({error})")
            return None
        self.meters["training_time"].update(time.time() - start)
        n = batch["image"].size(0)
        self.task.update_train_meters(self.meters, preds.detach(), batch["target"])
        self.meters["losses"].update(loss.item(), n)
        values = {name: term.item() for name, term in terms.items()}
        self.diagnostics.record()
        if self.is_main and self.cfg.LOG.TENSORBOARD_FREQ and self.global_step % self.cfg.LOG.TENSORBOARD_FREQ == 0:
            for name, value in values.items():
                self.tf_writer.add_scalar(f"train/{name}", value, self.global_step)
            self.diagnostics.write_step(self.tf_writer, self.global_step)
        return values

    def _backward_and_step(self, terms: dict[str, torch.Tensor], loss: torch.Tensor) -> None:
        """One optimizer update from this batch's loss terms (their sum is ``loss``); a trainer
        with another update rule (``engine.dot``: one backward per loss) overrides only this."""
        self.scaler.scale(loss).backward()
        self._check_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _check_gradients(self, extra: Iterable[torch.Tensor] = ()) -> None:
        """Raise NonFiniteGradient, naming the parameters, if a gradient about to be applied is
        NaN or infinite (``extra``: gradients held outside ``.grad``, DOT's). Under AMP the
        GradScaler already skips such steps (and lowers its scale): not checked twice. Under DDP
        the gradients are averaged already, so every rank takes the same branch."""
        if self.scaler.is_enabled():
            return
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        grads += list(extra)
        if not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            return
        bad = {id(p) for group in self.optimizer.param_groups for p in group["params"]
               if p.grad is not None and not torch.isfinite(p.grad).all()}
        names = [name for name, p in unwrap(self.distiller).named_parameters() if id(p) in bad]
        names = names or ["gradients held by the optimizer"]
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise NonFiniteGradient(f"{len(names)} parameter{'s' if len(names) != 1 else ''}: {shown}")

    def _stop_requested(self) -> bool:
        """Stop after this step? Distributed: only what all ranks agreed on in `_run_step`."""
        if distributed.is_distributed():
            return self._stop_agreed
        return self._stop_signal is not None

    def _handle_non_finite(self, epoch: int, step: int, terms: dict[str, torch.Tensor], what: str = "loss") -> None:
        """Undo the forward's side effects, then skip the batch (NAN_POLICY skip, within
        NAN_MAX_SKIPS) or save the state before the step and stop. ``what`` went non-finite:
        the loss, or a gradient (the step was not applied)."""
        values = {name: float(term.detach()) for name, term in terms.items()}
        where = f"epoch {epoch}, step {step} (global step {self.global_step + 1}), loss terms {values}"
        self.optimizer.zero_grad(set_to_none=True)
        unrestored = self._step_state.restore()
        if unrestored and self.is_main:
            print(log_msg(f"the non-finite step changed buffers that cannot be put back: {', '.join(unrestored)}", "WARN"))
        limit = self.cfg.SOLVER.NAN_MAX_SKIPS
        if self.cfg.SOLVER.NAN_POLICY == "skip" and self.skipped_steps < limit:
            self.skipped_steps += 1
            print(log_msg(
                f"non-finite {what} at {where}: batch skipped (SOLVER.NAN_POLICY skip; "
                f"{self.skipped_steps} of at most SOLVER.NAN_MAX_SKIPS {limit})", "WARN"))
            return None
        path = os.path.join(self.log_path, "nan_state")
        if self.is_main:
            state = self._state(epoch, step)
            state["non_finite_terms"] = values
            self._save(state, "nan_state")
        self._release_lock()
        if getattr(self, "_pbar", None) is not None:
            self._pbar.close()
        if self.cfg.SOLVER.NAN_POLICY == "skip":
            advice = (
                f"{self.skipped_steps} steps were already skipped and SOLVER.NAN_MAX_SKIPS is {limit}: the run "
                "is diverging. Lower SOLVER.LR and train again with --start-over (or raise SOLVER.NAN_MAX_SKIPS "
                "and --resume)"
            )
        else:
            advice = "Lower SOLVER.LR, or set SOLVER.NAN_POLICY skip to drop such batches"
        raise NonFiniteLossError(
            f"non-finite {what} at {where}; the state before this step is saved in {path!r}. {advice}"
        )

    def _progress_message(self, epoch: int) -> str:
        m = self.meters
        return (
            f"Epoch:{epoch}| Time(data):{m['data_time'].avg:.3f}| Time(train):{m['training_time'].avg:.3f}| "
            f"Loss:{m['losses'].avg:.4f}| {self.task.progress(m)}"
        )

    def evaluates(self, epoch: int) -> bool:
        """Whether `epoch` ends with an evaluation: every LOG.EVAL_FREQ epochs and the last one."""
        return epoch % int(self.cfg.LOG.EVAL_FREQ) == 0 or epoch == self.cfg.SOLVER.EPOCHS

    def end_epoch(self, epoch: int, lr: float) -> None:
        """Evaluate (on LOG.EVAL_FREQ's epochs), log, checkpoint (rank 0 only), then run `after_epoch` hooks."""
        metrics = OrderedDict(train_acc=self.meters["top1"].avg, train_loss=self.meters["losses"].avg)
        improved = False
        extra: dict[str, Any] = {}  # per-class scores: history only, not tensorboard scalars
        if self.evaluates(epoch):
            scores, extra = self.task.evaluate(self.val_loader, self.distiller, self.device, "test")
            metrics.update(scores)
            if self.train_eval_loader is not None:
                fit_scores, _ = self.task.evaluate(self.train_eval_loader, self.distiller, self.device, "train_eval")
                metrics.update(fit_scores)
            score = metrics[self.task.primary]
            improved = score > self.best_acc  # best_acc: the best top-1, or mIoU for segmentation
            if improved:
                self.best_acc, self.best_epoch = score, epoch
        self.history.append({"epoch": epoch, "lr": lr, **metrics, **extra, **self.diagnostics.history_entry()})
        self._call_hooks("before_checkpoint", self.global_step)
        if self.is_main:
            self.diagnostics.write_epoch(self.tf_writer, epoch)  # before _log_epoch, which flushes
            self._log_epoch(epoch, lr, metrics)
            state = self._state(epoch, 0)
            student_state = {"model": unwrap(self.distiller).student.state_dict(), "epoch": epoch,
                             self.task.primary: metrics.get(self.task.primary)}
            self._save_latest(state)
            self._save(student_state, "student_latest")
            if self.cfg.LOG.SAVE_CHECKPOINT_FREQ and epoch % self.cfg.LOG.SAVE_CHECKPOINT_FREQ == 0:
                self._save(state, f"epoch_{epoch}")
                self._save(student_state, f"student_{epoch}")
            if improved:
                self._save(state, "best")
                self._save(student_state, "student_best")
            self.write_summary(complete=False)
        self._call_hooks("after_epoch", epoch, dict(metrics))

    def _log_epoch(self, epoch: int, lr: float, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.tf_writer.add_scalar(name, value, epoch)
        self.tf_writer.add_scalar("lr", lr, epoch)
        self.tf_writer.flush()
        lines = ["-" * 25, f"epoch: {epoch}", f"lr: {lr:.4f}"]
        lines += [f"{name}: {value:.2f}" for name, value in metrics.items()]
        lines.append("-" * 25)
        path = os.path.join(self.log_path, "worklog.txt")
        if not os.path.exists(path):  # the run's first record: its whole config first (it is not printed)
            lines.insert(0, f"config:\n{self.cfg.dump()}")
        append_text(path, "\n".join(lines) + "\n")
        print(log_msg(self._epoch_line(epoch, metrics), "EVAL" if self.task.primary in metrics else "TRAIN"))

    def _epoch_line(self, epoch: int, metrics: dict[str, float]) -> str:
        """What a person reads for each epoch: ``Epoch 3/6 (12 s): train loss 0.512, top-1 81.20 | test ...``."""
        seconds = getattr(self, "_epoch_seconds", 0.0)
        return (f"Epoch {epoch}/{self.cfg.SOLVER.EPOCHS} ({seconds:.0f} s): train loss {metrics['train_loss']:.4f}, "
                + self.task.epoch_text(metrics))

    def write_summary(self, complete: bool, persist: bool = True) -> dict[str, Any]:
        """The machine-readable record of the run that sweeps and leaderboards read (written
        to summary.json by rank 0 unless `persist` is False)."""
        cfg = self.cfg
        base = cfg.ICKD.BASE if cfg.DISTILLER.TYPE == "ICKD" and "ICKD" in cfg else None
        last_evaluated = next((entry for entry in reversed(self.history) if self.task.primary in entry), {})
        summary = {
            "complete": complete,
            "experiment": os.path.basename(self.log_path),
            "log_path": os.path.abspath(self.log_path),
            "dataset": cfg.DATASET.TYPE,
            "distiller": cfg.DISTILLER.TYPE,
            "method": method_name(cfg),
            "ickd_base": base,
            "teacher": cfg.DISTILLER.TEACHER,
            "student": cfg.DISTILLER.STUDENT,
            "seed": cfg.EXPERIMENT.SEED,
            "epochs": cfg.SOLVER.EPOCHS,
            "task": self.task.name,
            "metric": self.task.metric,  # what best_* and last_* measure: "top-1" or "mIoU" (percent)
            **self.task.summary_fields(last_evaluated, self.best_acc),
            "best_epoch": self.best_epoch,
            "wall_time_s": round(self.wall_time, 3),
            "skipped_steps": self.skipped_steps,
            "history": self.history,
            "config": cfg.dump(),
            **run_metadata(self.device),
        }
        if self.is_main and persist:
            atomic_write_bytes(os.path.join(self.log_path, "summary.json"), json.dumps(summary, indent=1).encode())
        return summary


# mdistiller needs a separate CRD trainer to pass contrastive indices; ours passes whatever
# the loader yields, so "crd" is the same class, kept so mdistiller's CRD configs load.
register_trainer("crd")(BaseTrainer)


# Trainers that change the update rule, not the losses: their runs are a column of their own.
TRAINER_METHOD_SUFFIX = {"dot": "+DOT", "crd_dot": "+DOT"}


def method_name(cfg) -> str:
    """The leaderboard column of a run: "KD", "DKD", "ICKD+DKD", "ICKD(online)+KD", "IC-KD-all+KD", "KD+DOT",
    "LS" (vanilla with SOLVER.LABEL_SMOOTHING), "KD+LS", ..."""
    name = _loss_method_name(cfg)
    if cfg.SOLVER.get("LABEL_SMOOTHING", 0.0) > 0:
        name = "LS" if name == "vanilla" else f"{name}+LS"
    return name + TRAINER_METHOD_SUFFIX.get(cfg.SOLVER.TRAINER, "")


def _loss_method_name(cfg) -> str:
    """`method_name` without the trainer's suffix: what the distiller's losses are."""
    if cfg.DISTILLER.TYPE != "ICKD" or "ICKD" not in cfg:
        return "vanilla" if cfg.DISTILLER.TYPE == "NONE" else cfg.DISTILLER.TYPE
    paradigm = cfg.ICKD.PARADIGM
    if cfg.ICKD.PICD_WEIGHT == 0 and cfg.ICKD.NICD_WEIGHT == 0:
        # ICKD's code path without its terms is the paradigm's own baseline.
        return {"online": "DML", "teacher_free": "vanilla"}.get(paradigm, cfg.ICKD.BASE)
    name = "IC-KD-all" if cfg.ICKD.ALL_SAME_CLASS else "ICKD"  # the paper's name for all same-class positives
    name = name if paradigm == "offline" else f"{name}({paradigm})"
    return name if cfg.ICKD.BASE == "NONE" else f"{name}+{cfg.ICKD.BASE}"
