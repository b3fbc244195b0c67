"""Float32 for feature-distillation losses, whatever the training precision.

Feature losses build Gram matrices, kernel means and normalisations over thousands of
products; in float16 these overflow (a Gram entry of a 256x8x8 feature is a sum of
16384 products) or lose the small differences the loss is made of. The losses therefore
run with autocast off and float32 inputs, as `kd_loss` and CRD's contrast already do;
the networks themselves still run in whatever precision the trainer chose.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import torch

FuncT = TypeVar("FuncT", bound=Callable[..., Any])


def _to_float32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        # Only lower precisions are raised; float64 (tests, analysis) stays float64.
        return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(item) for item in value)
    return value


def _first_tensor(values: Any) -> torch.Tensor | None:
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, (list, tuple)):
            found = _first_tensor(value)
            if found is not None:
                return found
    return None


def float32_loss(fn: FuncT) -> FuncT:
    """Decorator: call ``fn`` with autocast off and every float16/bfloat16 tensor argument (also
    inside lists/tuples of per-stage features) cast to float32."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        reference = _first_tensor(list(args) + list(kwargs.values()))
        device_type = reference.device.type if reference is not None else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*_to_float32(args), **{k: _to_float32(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]
