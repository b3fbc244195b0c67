"""ICKD for a segmentation student: pixel queries against a bank of the teacher's pixels.

Our design (docs/method.md, "Dense ICKD"): the classification method with a pixel in place
of an image. The bank (`ickd_plugin.dense_bank`) holds the teacher's decoder features of
class-balanced sampled pixels of every training image. Each step draws
`ICKD.DENSE.QUERY_PIXELS` query pixels per image of the batch, spread evenly over the
classes present in its (augmented) label map at the decoder's resolution; a query is the
teacher's decoder feature there. Retrieval is the classification code: Top-K same-class and
Top-N other-class bank pixels, never a pixel of the query's own image. The teacher's 1x1
classifier turns the retrieved features into logits; PICD and NICD compare them with the
student's logits at the query pixels (the student's logit map resized to the decoder's
resolution, bilinear). The base distiller (`ICKD.BASE`: pixel KD, CWD, NONE, ...) runs
unchanged on the full maps, fed the same teacher pass.

A segmentation model, for this module, is one with ``get_dense_classifier()`` (an
``nn.Conv2d(D, C, 1)``) whose forward returns ``(logits [B, C, H, W], feats)`` with the
decoder features ``[B, D, h, w]`` in ``feats[ICKD.DENSE.FEATURE]`` (docs/architecture.md).
"""
from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ickd_plugin.config import ICKDOptions, parse_dense_config
from ickd_plugin.dense_bank import IGNORE_INDEX, DenseMemoryBank, extract_pixel_features, labels_at, sample_pixels
from ickd_plugin.diagnostics import NAMES, step_diagnostics
from ickd_plugin.distiller import ICKD
from ickd_plugin.losses import warmup_factor
from ickd_plugin.memory_bank import describe_bank, report
from ickd_plugin.retrieval import Retrieval, retrieve
from ickd_plugin.teacher_pass import progress_bar
from ickd_plugin.training_view import no_augmentation_view, preserved_rng


def dense_classifier(model: nn.Module) -> nn.Conv2d:
    """The model's final 1x1 classifier, checked."""
    getter = getattr(model, "get_dense_classifier", None)
    classifier = getter() if callable(getter) else None
    if not isinstance(classifier, nn.Conv2d) or tuple(classifier.kernel_size) != (1, 1):
        raise TypeError(
            f"dense ICKD needs a segmentation model whose get_dense_classifier() returns its final 1x1 "
            f"nn.Conv2d; {type(model).__name__} gives {type(classifier).__name__}"
        )
    return classifier


class DenseICKD(ICKD):
    """ICKD on per-pixel logits; built by ``distiller_dict["ICKD"]`` for a segmentation student."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: Any, num_data: int | None = None) -> None:
        dense = parse_dense_config(cfg.ICKD)
        super().__init__(student, teacher, cfg, num_data)
        self.dense_opts = dense

    def _make_bank(self, opts: ICKDOptions) -> nn.Module:
        return DenseMemoryBank(opts.bank_dtype, persistent=False, centered=opts.similarity == "centered")

    def _check_networks(self) -> None:
        dense_classifier(self.student)
        dense_classifier(self.teacher)

    # ------------------------------------------------------------------ the bank

    def build_bank(self, trainer: Any) -> None:
        """Sample the training set's pixels once through the frozen teacher (idempotent)."""
        if self.bank.is_built:
            self.bank.check_capacity(self.opts.k, self.opts.n, self.opts.all_same_class)
            return
        classifier = dense_classifier(self.teacher)
        view = no_augmentation_view(trainer.train_loader.dataset, trainer.val_loader.dataset)
        device = self._bank_device()
        feature = self.dense_opts.feature
        started = time.perf_counter()
        with preserved_rng():  # the pass must not consume the run's random state
            features, labels, image_ids, pixel_ids = extract_pixel_features(
                self.teacher, lambda output: _decoder_features(output, feature), view,
                self.dense_opts.bank_pixels_per_class, self.dense_opts.seed, self.opts.bank_batch_size,
                int(getattr(trainer.train_loader, "num_workers", 0)), self.bank.dtype, device,
                progress=lambda loader: progress_bar(loader, True),
            )
        self.bank.fill_pixels(features, labels, image_ids, pixel_ids, classifier.out_channels, device)
        self.bank.check_capacity(self.opts.k, self.opts.n, self.opts.all_same_class)
        counts = ", ".join(str(c) for c in self.bank.per_class_counts())
        report(f"dense memory bank: {self.dense_opts.bank_pixels_per_class} pixels per class per image of "
               f"{len(view)} training images, by the teacher in {time.perf_counter() - started:.1f} s: "
               f"{describe_bank(self.bank.features)}; pixels per class: {counts}")

    def refresh_bank(self) -> None:
        """Offline only: the bank never changes."""

    # ------------------------------------------------------------------ the step

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, **kwargs: Any):
        if not self.bank.is_built:
            raise RuntimeError("the dense ICKD memory bank is empty: the trainer must call "
                               "distiller.trainer_hooks().before_train(trainer) before training")
        index = self._take_index(kwargs)
        scale = warmup_factor(self._take_epoch(kwargs), self.opts.warmup)
        kwargs["index"] = index
        with torch.no_grad():
            logits_teacher, feats_teacher = self.teacher(image)
        decoder = _decoder_features((logits_teacher, feats_teacher), self.dense_opts.feature).detach()
        with self._replay_teacher(logits_teacher, feats_teacher):
            logits_student, losses = self.base.forward_train(image=image, target=target, **kwargs)
        losses = dict(losses)
        base_losses = list(losses.values())
        query, labels, groups, student_at = self.query_pixels(decoder, target, index, logits_student)
        classifier = dense_classifier(self.teacher)
        linear = SimpleNamespace(weight=classifier.weight.flatten(1), bias=classifier.bias)
        if query.shape[0] == 0:  # no labelled pixel in the whole batch: nothing to distil in context
            zero = logits_student.sum() * 0.0
            loss_picd = loss_nicd = zero
            # context_statistics' entries (NAMES after the two loss ratios), undefined this step
            self._context_stats = torch.full((len(NAMES) - 2,), float("nan"), device=logits_student.device)
        else:
            own_logits = F.linear(query, linear.weight, linear.bias)
            loss_picd, loss_nicd = self.in_context_losses(query, labels, groups, student_at, own_logits, linear)
        losses["loss_picd"] = scale * self.opts.picd_weight * loss_picd
        losses["loss_nicd"] = scale * self.opts.nicd_weight * loss_nicd
        self._last_diagnostics = step_diagnostics(base_losses, losses["loss_picd"], losses["loss_nicd"], self._context_stats)
        return logits_student, losses

    def query_pixels(
        self, decoder: torch.Tensor, target: torch.Tensor, index: torch.Tensor, logits_student: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """This step's query pixels: (teacher features [M, D], labels [M], image ids [M],
        student logits there [M, C], with their graph).

        Per image, ``QUERY_PIXELS // classes present`` (at least 1) pixels of each class present
        in the label map at the decoder's resolution and in the bank, drawn with the global RNG
        (so a resumed run draws the same ones).
        """
        size = tuple(decoder.shape[-2:])
        small = labels_at(target.to(decoder.device), size)
        student = F.interpolate(logits_student, size=size, mode="bilinear", align_corners=False).flatten(2)
        flat_decoder = decoder.flatten(2)
        bank_has = self.bank.class_rows[:, 0] >= 0
        num_classes = bank_has.shape[0]

        def in_bank(classes: torch.Tensor) -> torch.Tensor:
            # a class the bank never sampled (visible only in this augmented view) has no context
            real = (classes >= 0) & (classes != IGNORE_INDEX) & (classes < num_classes)
            return real & bank_has[classes.clamp(0, num_classes - 1)]

        feats, labels, groups, logits = [], [], [], []
        for b in range(decoder.shape[0]):
            present = torch.unique(small[b])
            usable = int(in_bank(present).sum())
            if usable == 0:
                continue
            # every class present is drawn (the RNG stream does not depend on the bank), usable ones kept
            pixels, classes = sample_pixels(small[b], max(1, self.dense_opts.query_pixels // usable))
            keep = in_bank(classes)
            pixels, classes = pixels[keep], classes[keep]
            feats.append(flat_decoder[b][:, pixels].t())
            logits.append(student[b][:, pixels].t())
            labels.append(classes)
            groups.append(torch.full_like(pixels, int(index[b])))
        if not feats:
            empty = torch.empty(0, dtype=torch.long, device=decoder.device)
            return decoder.new_empty((0, decoder.shape[1])), empty, empty, student.new_empty((0, student.shape[1]))
        return torch.cat(feats).float(), torch.cat(labels), torch.cat(groups), torch.cat(logits)

    def retrieve_context(
        self, query: torch.Tensor, target: torch.Tensor, index: torch.Tensor
    ) -> tuple[Retrieval, torch.Tensor, torch.Tensor]:
        """Retrieval for query pixels; `index` holds each query's image id, whose bank pixels are excluded."""
        opts, bank = self.opts, self.bank
        device = bank.features.device
        found = retrieve(
            query.to(device), target.to(device).long(), index.to(device).long(), bank.features, bank.inv_norms,
            bank.class_rows, opts.k, opts.n, all_same_class=opts.all_same_class, chunk_size=opts.bank_chunk_size,
            center=bank.similarity_center, ties=bank.ties, row_groups=bank.image_ids,
        )
        return found, bank.features[found.pos_rows], bank.features[found.neg_rows]


def _decoder_features(output: Any, name: str) -> torch.Tensor:
    """``feats[name]`` of a model's ``(logits, feats)`` output, checked."""
    feats = output[1] if isinstance(output, (tuple, list)) and len(output) == 2 else None
    found = feats.get(name) if isinstance(feats, dict) else None
    if not torch.is_tensor(found) or found.dim() != 4:
        raise TypeError(
            f"dense ICKD reads the decoder features from the model's feats[{name!r}] (ICKD.DENSE.FEATURE), "
            f"a [B, D, h, w] tensor; the model returned {type(found).__name__ if found is not None else 'no such entry'}"
        )
    return found
