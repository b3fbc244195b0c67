"""CRD: Tian et al., "Contrastive Representation Distillation" (ICLR 2020), as in mdistiller.

Student and teacher pooled features are projected by linear embeddings to a common
``CRD.FEAT.DIM`` and L2-normalised. Two memory banks hold one momentum-averaged embedding
per training sample: ``memory_v1`` for the student, ``memory_v2`` for the teacher. Each
sample's student embedding is contrasted with teacher-memory rows (its own row is the
positive, ``CRD.NCE.K`` other rows the negatives) and vice versa; the critic is
``exp(<v, m> / T) / Z`` and the loss is NCE with a uniform noise distribution
``P_n = 1 / num_data``. ``Z`` (the partition-function estimate) is measured once, on the
first batch, and then frozen, as in the paper's code.

What the checkpoint must carry for an exact resume (both memories and the two Z values)
are registered buffers, in mdistiller's layout: ``contrast.params = [K, T, Z_v1, Z_v2,
momentum]`` (Z < 0 means "not yet estimated"), ``contrast.memory_v1``, ``contrast.memory_v2``,
so a state dict saved by mdistiller's CRD loads here and vice versa.

Negatives are always supplied by the data layer as ``contrastive_index`` (``[B, K + 1]``,
column 0 the positive); mdistiller's in-module alias sampler is therefore not needed.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdharness.distillers._base import FeatureDistiller
from kdharness.engine.distributed import all_gather_batch, mean_over_ranks
from kdharness.registry import register_distiller

# Input shape of one sample per DATASET.TYPE, used for the feature-width probe below.
# fashion_mnist goes through the CIFAR model family, whose transform yields 3x32x32.
DATASET_INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "cifar100": (3, 32, 32),
    "fashion_mnist": (3, 32, 32),
    "imagenet": (3, 224, 224),
}

_NCE_EPS = 1e-7  # mdistiller's guard in the NCE denominators


# --------------------------------------------------------------------------- pure pieces


def nce_critic(memory_rows: torch.Tensor, embedding: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """Unnormalised critic ``exp(<m_k, v> / T)`` for rows ``[B, K+1, D]`` and embeddings ``[B, D]`` -> ``[B, K+1]``."""
    return torch.exp(torch.bmm(memory_rows, embedding.unsqueeze(2)).squeeze(2) / temperature)


def nce_loss(scores: torch.Tensor, num_data: int) -> torch.Tensor:
    """NCE loss of normalised critic scores ``[B, K+1]`` (column 0 the positive).

    With ``m = K`` noise samples from ``P_n = 1/num_data``, the posterior that a pair came
    from the data is ``h(x) = P(x) / (P(x) + m P_n)``; the loss is
    ``-(sum_b log h(pos_b) + sum_{b,k} log(1 - h(neg_bk))) / B``.
    """
    batch_size = scores.shape[0]
    m = scores.shape[1] - 1
    noise = m / float(num_data)
    positive = scores[:, 0]
    negative = scores[:, 1:]
    log_d1 = torch.log(positive / (positive + noise + _NCE_EPS))
    log_d0 = torch.log(noise / (negative + noise + _NCE_EPS))
    return -(log_d1.sum() + log_d0.sum()) / batch_size


def momentum_update(rows: torch.Tensor, embedding: torch.Tensor, momentum: torch.Tensor | float) -> torch.Tensor:
    """New memory rows ``normalize(momentum * old + (1 - momentum) * new)`` (unit length again)."""
    mixed = rows * momentum + embedding * (1 - momentum)
    return mixed / mixed.pow(2).sum(dim=1, keepdim=True).sqrt()


# --------------------------------------------------------------------------- modules


class Embed(nn.Module):
    """Linear projection to the contrast space, then L2 normalisation (mdistiller's ``Embed``)."""

    def __init__(self, dim_in: int, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x.reshape(x.shape[0], -1))
        # float32: the critic divides by T = 0.07, so half-precision embeddings lose too much.
        return F.normalize(x.float(), p=2, dim=1)


class ContrastLoss(nn.Module):
    """``nce_loss`` as a module, one per view (mdistiller's ``criterion_s`` / ``criterion_t``)."""

    def __init__(self, num_data: int) -> None:
        super().__init__()
        self.num_data = num_data

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return nce_loss(scores, self.num_data)


class ContrastMemory(nn.Module):
    """Two momentum memories of per-sample embeddings, and the normalised NCE critic scores.

    ``forward(v1, v2, index, contrast_index)`` returns ``(out_v1, out_v2)``: ``out_v1`` scores
    the student embeddings ``v1`` against teacher memory rows, ``out_v2`` the teacher
    embeddings ``v2`` against student memory rows; then both memories take the batch in.
    """

    params: torch.Tensor
    memory_v1: torch.Tensor
    memory_v2: torch.Tensor

    def __init__(self, feat_dim: int, num_data: int, k: int, temperature: float = 0.07, momentum: float = 0.5) -> None:
        super().__init__()
        self.num_data = int(num_data)
        self.k = int(k)
        self.register_buffer("params", torch.tensor([k, temperature, -1.0, -1.0, momentum], dtype=torch.float32))
        # Uniform in [-stdv, stdv] with stdv = 1/sqrt(D/3): each row then has E|m|^2 = 1,
        # i.e. starts near the unit sphere the embeddings live on.
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_v1", torch.rand(num_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_v2", torch.rand(num_data, feat_dim).mul_(2 * stdv).add_(-stdv))

    @property
    def z(self) -> torch.Tensor:
        """``[Z_v1, Z_v2]``; negative until the first training batch has been seen."""
        return self.params[2:4]

    def forward(
        self, v1: torch.Tensor, v2: torch.Tensor, index: torch.Tensor, contrast_index: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if contrast_index is None:
            raise ValueError(
                "CRD needs contrastive_index [B, CRD.NCE.K + 1] from the data layer (IndexedDataset "
                "with crd_k = CRD.NCE.K); this port does not sample negatives itself"
            )
        device = self.memory_v1.device
        index = index.reshape(-1).to(device=device, dtype=torch.long)
        contrast_index = contrast_index.to(device=device, dtype=torch.long)
        batch_size, dim = v1.shape[0], self.memory_v1.shape[1]
        if contrast_index.shape != (batch_size, self.k + 1):
            raise ValueError(
                f"contrastive_index has shape {tuple(contrast_index.shape)}, expected ({batch_size}, "
                f"{self.k + 1}) = (batch, CRD.NCE.K + 1) with CRD.NCE.K = {self.k}; the data layer's "
                "crd_k must equal CRD.NCE.K"
            )
        # Scores in float32 with autocast off: exp(1 / 0.07) ~ 1.6e6 overflows float16.
        with torch.autocast(device_type=device.type, enabled=False):
            v1, v2 = v1.float(), v2.float()
            # Snapshots, not views: params is written in place below and must not be part of the graph.
            temperature = self.params[1].clone()
            momentum = self.params[4].clone()
            rows_v1 = self.memory_v1.index_select(0, contrast_index.reshape(-1)).view(batch_size, -1, dim)
            rows_v2 = self.memory_v2.index_select(0, contrast_index.reshape(-1)).view(batch_size, -1, dim)
            out_v2 = nce_critic(rows_v1, v2, temperature)
            out_v1 = nce_critic(rows_v2, v1, temperature)

            with torch.no_grad():
                # Z ~ num_data * E[exp(<m, v>/T)]: set once from the first batch, then kept;
                # distributed, from the mean over the ranks (the global first batch), so all agree.
                estimate = mean_over_ranks(torch.stack([out_v1.mean(), out_v2.mean()]) * self.num_data)
                self.params[2:4] = torch.where(self.params[2:4] < 0, estimate, self.params[2:4])
                z = self.params[2:4].clone()
            out_v1 = out_v1 / z[0]
            out_v2 = out_v2 / z[1]

            with torch.no_grad():
                # Distributed, every rank takes in the whole global batch: the memories stay
                # identical across ranks and equal to a single process's.
                index = all_gather_batch(index)
                v1, v2 = all_gather_batch(v1.detach()), all_gather_batch(v2.detach())
                new_v1 = momentum_update(self.memory_v1.index_select(0, index), v1, momentum)
                new_v2 = momentum_update(self.memory_v2.index_select(0, index), v2, momentum)
                self.memory_v1.index_copy_(0, index, new_v1)
                self.memory_v2.index_copy_(0, index, new_v2)
        return out_v1.contiguous(), out_v2.contiguous()


# --------------------------------------------------------------------------- feature widths


@torch.no_grad()
def infer_pooled_dim(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Width of ``feats["pooled_feat"]`` from one all-zero sample in eval mode.

    Eval mode keeps BatchNorm statistics untouched, zeros consume no random numbers (the
    run's seeded stream is unchanged), and the model's previous mode is restored.
    """
    reference = next(iter(model.parameters()), None)
    if reference is None:
        reference = next(iter(model.buffers()), torch.empty(0))
    was_training = model.training
    model.eval()
    try:
        _, feats = model(torch.zeros(1, *input_shape, device=reference.device, dtype=reference.dtype))
    finally:
        model.train(was_training)
    return int(feats["pooled_feat"].reshape(1, -1).shape[1])


def resolve_feat_dims(
    student: nn.Module, teacher: nn.Module, cfg: Any, input_shape: Sequence[int] | None = None
) -> tuple[int, int]:
    """``(student_dim, teacher_dim)`` of the pooled features.

    Measured by a one-sample forward, so any student/teacher pair works without setting
    ``CRD.FEAT.STUDENT_DIM`` / ``TEACHER_DIM`` by hand; the sample shape comes from
    ``input_shape`` or ``DATASET.TYPE``. Only for a dataset type we do not know the shape
    of do the two config keys decide.
    """
    if input_shape is None:
        input_shape = DATASET_INPUT_SHAPES.get(str(cfg.DATASET.TYPE))
    if input_shape is None:
        return int(cfg.CRD.FEAT.STUDENT_DIM), int(cfg.CRD.FEAT.TEACHER_DIM)
    dims = []
    for role, model in (("student", student), ("teacher", teacher)):
        try:
            dims.append(infer_pooled_dim(model, input_shape))
        except Exception as error:
            raise RuntimeError(
                f"CRD could not measure the {role}'s pooled_feat width with a 1x{tuple(input_shape)} "
                f"input (DATASET.TYPE = {cfg.DATASET.TYPE!r}); pass input_shape= to CRD: {error}"
            ) from error
    return dims[0], dims[1]


# --------------------------------------------------------------------------- distiller


@register_distiller("CRD")
class CRD(FeatureDistiller):
    """Cross-entropy plus ``CRD.LOSS.FEAT_WEIGHT * (NCE_student + NCE_teacher)``."""

    extra_modules = ("embed_s", "embed_t")

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        cfg: Any,
        num_data: int,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(student, teacher, cfg, "CRD")
        if int(num_data) <= 0:
            raise ValueError(f"CRD needs the training-set size for its memories; got num_data = {num_data}")
        student_dim, teacher_dim = resolve_feat_dims(student, teacher, cfg, input_shape)
        self.init_crd_modules(
            student_dim,
            teacher_dim,
            int(cfg.CRD.FEAT.DIM),
            num_data,
            int(cfg.CRD.NCE.K),
            float(cfg.CRD.NCE.MOMENTUM),
            float(cfg.CRD.NCE.TEMPERATURE),
        )

    def init_crd_modules(
        self,
        feat_s_channel: int,
        feat_t_channel: int,
        feat_dim: int,
        num_data: int,
        k: int = 16384,
        momentum: float = 0.5,
        temperature: float = 0.07,
    ) -> None:
        """Build the CRD heads (kept as a method, as in mdistiller, so subclasses can reuse it)."""
        self.embed_s = Embed(feat_s_channel, feat_dim)
        self.embed_t = Embed(feat_t_channel, feat_dim)
        self.contrast = ContrastMemory(feat_dim, num_data, k, temperature, momentum)
        self.criterion_s = ContrastLoss(num_data)
        self.criterion_t = ContrastLoss(num_data)

    def get_extra_parameters(self) -> int:
        """Embedding weights plus the memory buffers, the number mdistiller reports."""
        tensors = [*self.embed_s.parameters(), *self.embed_t.parameters(), *self.contrast.buffers()]
        return sum(t.numel() for t in tensors)

    def crd_loss(
        self, f_s: torch.Tensor, f_t: torch.Tensor, index: torch.Tensor, contrastive_index: torch.Tensor | None
    ) -> torch.Tensor:
        """Unweighted ``NCE(student view) + NCE(teacher view)``; updates the memories."""
        out_s, out_t = self.contrast(self.embed_s(f_s), self.embed_t(f_t), index, contrastive_index)
        return self.criterion_s(out_s) + self.criterion_t(out_t)

    def forward_train(
        self,
        image: torch.Tensor,
        target: torch.Tensor,
        index: torch.Tensor | None = None,
        contrastive_index: torch.Tensor | None = None,
        **kwargs: Any,
    ):
        if index is None or contrastive_index is None:
            raise ValueError(
                "CRD needs index and contrastive_index in every training batch: build the train "
                "loader with with_index=True and crd_k = CRD.NCE.K (mode CRD.MODE)"
            )
        return super().forward_train(image, target, index=index, contrastive_index=contrastive_index, **kwargs)

    def feature_loss(
        self,
        feats_student: dict[str, Any],
        feats_teacher: dict[str, Any],
        index: torch.Tensor,
        contrastive_index: torch.Tensor,
        **kwargs: Any,
    ) -> torch.Tensor:
        return self.crd_loss(feats_student["pooled_feat"], feats_teacher["pooled_feat"], index, contrastive_index)
