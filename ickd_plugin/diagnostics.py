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
  i.e. whose hinge is active and gives a gradient;
* ``pos_sim_std``: the spread of a query's positive similarities (their standard deviation
  over the K positives, mean over queries): near 0, retrieval cannot tell its positives
  apart and the tau1 softmax weighs them alike;
* ``picd_max_weight``: the largest tau1 weight of a query's positives (mean over queries),
  1/K when the weights are uniform, 1 when one positive takes all.

Everything is computed from tensors the step already has (no extra network pass), without
a graph, and kept on the device as one ``[7]`` tensor: converting it to floats (one host
sync) happens only when a caller asks through `as_floats`.
"""
from __future__ import annotations

from typing import Iterable

import torch

from ickd_plugin.losses import kl_per_sample

NAMES = ("picd_to_base", "nicd_to_base", "pos_sim", "neg_sim", "nicd_inside_margin", "pos_sim_std", "picd_max_weight")


@torch.no_grad()
def context_statistics(
    pos_sim: torch.Tensor,
    pos_mask: torch.Tensor | None,
    neg_sim: torch.Tensor,
    logits_student: torch.Tensor,
    negative_logits: torch.Tensor,
    beta2: float,
    temperature: float,
    weights: torch.Tensor,
) -> torch.Tensor:
    """``[mean positive similarity, mean negative similarity, fraction of NICD pairs inside the
    margin, mean spread of the positive similarities, mean largest positive weight]``.

    pos_sim [B, K] (with `pos_mask` [B, M] marking real positives under IC-KD-all, else None);
    neg_sim [B, N]; logits_student [B, C]; negative_logits [B, N, C]; weights [B, K] the tau1
    weights of the positives. Float32, on pos_sim's device. The spread is the population
    standard deviation over each query's (real) positives.
    """
    pos_sim = pos_sim.float()
    mask = torch.ones_like(pos_sim, dtype=torch.bool) if pos_mask is None else pos_mask
    counts = mask.sum(dim=1).clamp(min=1)
    real = pos_sim.masked_fill(~mask, 0.0)
    pos_mean = real.sum() / counts.sum()
    row_mean = real.sum(dim=1) / counts
    spread = ((real - row_mean[:, None]).masked_fill(~mask, 0.0).square().sum(dim=1) / counts).sqrt().mean()
    divergence = kl_per_sample(negative_logits, logits_student.detach().unsqueeze(1), temperature)
    inside = (divergence < beta2).float().mean()
    device = pos_sim.device
    largest = weights.float().amax(dim=1).mean().to(device)
    return torch.stack([pos_mean, neg_sim.float().mean().to(device), inside.to(device), spread, largest])


@torch.no_grad()
def step_diagnostics(
    base_losses: Iterable[torch.Tensor],
    loss_picd: torch.Tensor,
    loss_nicd: torch.Tensor,
    context_stats: torch.Tensor,
) -> torch.Tensor:
    """The ``[7]`` float32 vector of `NAMES` for one step.

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

