"""Tolerances for float32 results, derived from float32 rounding instead of measured on one CPU.

A float32 result differs from the exact value by rounding errors whose size depends on the
summation order, and the order changes with the thread count and with the kernels the CPU
gets (MKL's AVX-512 / AVX2 / SSE paths, oneDNN's, ATen's vectorised reductions). A tolerance
measured on one machine ("passes with 1e-5 here") fails on the next; a tolerance derived from
a bound holds for every order. The bounds used (u = 2^-24, float32's unit roundoff,
``EPS32 = 2u``; Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.):

- a sum of n terms, in any order: ``|error| <= (n - 1) u sum|x_i|`` (eq. 4.4), so
  ``n * EPS32 * sum|x_i|`` covers it twice over;
- one elementwise operation (exp, log, a division): a few u relative (the libm and SLEEF
  kernels torch uses are accurate to 1-4 ulp).

The reference a result is compared with is computed in float64 from the *same float32 inputs*
the code under test saw, so the only difference left is the rounding bounded here.
"""
from __future__ import annotations

import math

import torch

EPS32 = torch.finfo(torch.float32).eps  # 2^-23 = 1.19e-7


def sum_atol(abs_sum: float, n_terms: int) -> float:
    """Absolute error bound of a float32 sum of ``n_terms`` whose absolute values add up to ``abs_sum``.

    Twice Higham's worst case over every summation order, plus a 4-ulp allowance for the
    elementwise operations that produced the terms.
    """
    return (n_terms + 4) * EPS32 * abs_sum


def log_softmax_kl_atol(max_abs_scaled_logit: float, num_classes: int, batch: int = 1, scale: float = 1.0) -> float:
    """Absolute error bound of ``scale * mean_b sum_c p_c (log p_c - log q_c)`` in float32,
    p and q softmaxes of logits divided by the temperature, ``|logit / T| <= max_abs_scaled_logit``.

    Why this size: every ``|log p_c|`` is at most ``L = 2 * max|z/T| + log C`` (the largest gap
    between logits plus the log of the class count). A log-softmax entry is ``z - max -
    log(sum_c exp(z_c - max))``: a few roundings of size u L plus a C-term sum, so at most
    ``(C + 4) u (L + 1)``; a difference of two such entries twice that. The p-weighted sum over C
    classes (weights summing to 1) keeps that bound and adds ``C u`` times its terms' magnitude
    ``2 (L + 1)``; the mean over the batch adds ``B u`` times the same. In all
    ``u (L + 1) (2(C + 4) + 2C + 2B) = EPS32 (L + 1) (2C + B + 4)``, times ``scale``
    (the loss weight and the T^2 factor).
    """
    log_range = 2.0 * max_abs_scaled_logit + math.log(num_classes) + 1.0
    return EPS32 * log_range * (2 * num_classes + batch + 4) * abs(scale)


def max_abs(*tensors: torch.Tensor) -> float:
    """The largest absolute finite value over ``tensors`` (as a Python float)."""
    values = [t.detach().double()[torch.isfinite(t.detach())].abs().max().item() for t in tensors if t.numel()]
    return max(values, default=0.0)
