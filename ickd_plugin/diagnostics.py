"""Per-step diagnostics of ICKD: does the method do anything in this run?

A run in which PICD and NICD are negligible next to the base loss, or in which every
negative is already beyond the NICD margin, trains like its base and looks like it in the
accuracy; these numbers tell such a run from one where the in-context terms act:

* ``picd_to_base``, ``nicd_to_base``: ``|loss_picd| / |L_base|`` and ``|loss_nicd| / |L_base|``,
  the terms as they enter the total (weight and warm-up included) against the sum of the base
  distiller's losses;
* ``pos_sim``, ``neg_sim``: mean cosine similarity of the query to its retrieved positives
  (only real ones under IC-KD-all) and to its retrieved negatives;
* ``nicd_inside_margin``: the fraction of (sample, negative) pairs with ``d_ij < beta_2``,
  i.e. whose hinge is active and gives a gradient.

Everything is computed from tensors the step already has (no extra network pass), without
a graph, and kept on the device as one ``[5]`` tensor: converting it to floats (one host
sync) happens only when a caller asks through `as_floats`.
"""
from __future__ import annotations

from typing import Iterable

import torch

from ickd_plugin.losses import kl_per_sample

NAMES = ("picd_to_base", "nicd_to_base", "pos_sim", "neg_sim", "nicd_inside_margin")


@torch.no_grad()
def context_statistics(
    pos_sim: torch.Tensor,
    pos_mask: torch.Tensor | None,
    neg_sim: torch.Tensor,
    logits_student: torch.Tensor,
    negative_logits: torch.Tensor,
    beta2: float,
    temperature: float,
) -> torch.Tensor:
    """``[mean positive similarity, mean negative similarity, fraction of NICD pairs inside the margin]``.

    pos_sim [B, K] (with `pos_mask` [B, M] marking real positives under IC-KD-all, else None);
    neg_sim [B, N]; logits_student [B, C]; negative_logits [B, N, C]. Float32, on pos_sim's device.
    """
    pos_sim = pos_sim.float()
    if pos_mask is None:
        pos_mean = pos_sim.mean()
    else:
        pos_mean = pos_sim.masked_fill(~pos_mask, 0.0).sum() / pos_mask.sum().clamp(min=1)
    divergence = kl_per_sample(negative_logits, logits_student.detach().unsqueeze(1), temperature)
    inside = (divergence < beta2).float().mean()
    device = pos_sim.device
    return torch.stack([pos_mean, neg_sim.float().mean().to(device), inside.to(device)])


@torch.no_grad()
def step_diagnostics(
    base_losses: Iterable[torch.Tensor],
    loss_picd: torch.Tensor,
    loss_nicd: torch.Tensor,
    context_stats: torch.Tensor,
) -> torch.Tensor:
    """The ``[5]`` float32 vector of `NAMES` for one step.

    base_losses: the base distiller's loss terms (each averaged, then summed, as the trainer
    does); loss_picd / loss_nicd: ICKD's terms as they enter the total. A base that sums to
    zero gives inf ratios (a cross-entropy base never does).
    """
    device = context_stats.device
    base = sum((term.detach().float().mean().to(device) for term in base_losses), torch.zeros((), device=device))
    base = base.abs()
    ratios = torch.stack([loss_picd.detach().float().mean().to(device), loss_nicd.detach().float().mean().to(device)])
    return torch.cat([ratios.abs() / base, context_stats.float()])


def as_floats(values: torch.Tensor | None) -> dict[str, float]:
    """`NAMES` -> float for a `step_diagnostics` vector (one host sync); {} for None."""
    if values is None:
        return {}
    return dict(zip(NAMES, values.tolist()))

