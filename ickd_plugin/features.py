"""Forward hooks that read a network's pooled feature at its classifier.

IC-KD needs the penultimate (pooled) feature of every sample, and the linear classifier that
maps it to logits. Every classification network has that classifier, while the name of its
pooled feature in the returned dict varies across model zoos, so we read the classifier's
input with a forward hook: no model code changes, and one forward pass gives both the feature
(hook) and the logits (the model's output).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

CLASSIFIER_ATTRIBUTES = ("fc", "classifier", "linear")


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside DataParallel / DistributedDataParallel wrappers (any depth)."""
    while hasattr(module, "module") and isinstance(module.module, nn.Module):
        module = module.module
    return module


def find_classifier(model: nn.Module) -> nn.Linear:
    """The final linear layer: timm's `get_classifier()` if it is linear, else fc / classifier / linear."""
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        classifier = getter()
        if isinstance(classifier, nn.Linear):
            return classifier
    for name in CLASSIFIER_ATTRIBUTES:
        classifier = getattr(model, name, None)
        if isinstance(classifier, nn.Linear):
            return classifier
    raise ValueError(
        f"ICKD reads pooled features at the classifier, but {type(model).__name__} has no linear "
        f"classifier: expected get_classifier() returning nn.Linear or an nn.Linear attribute "
        f"named one of {', '.join(CLASSIFIER_ATTRIBUTES)}"
    )


class ClassifierTap:
    """Context manager: while active, records the input (pooled feature) and output of a classifier.

    The hook is removed on exit, so a model outside an ICKD step carries no hook at all.
    If the classifier runs several times inside the context, the last call wins.
    """

    def __init__(self, classifier: nn.Module) -> None:
        self.classifier = classifier
        self._handle: Any = None
        self._features: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        features = inputs[0]
        self._features = features.flatten(1) if features.dim() > 2 else features
        self._logits = output

    def __enter__(self) -> "ClassifierTap":
        self._features = self._logits = None
        self._handle = self.classifier.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()
        self._handle = None

    @property
    def features(self) -> torch.Tensor:
        if self._features is None:
            raise RuntimeError(
                f"the network never called its classifier ({type(self.classifier).__name__}); "
                "ICKD needs the pooled feature that enters it"
            )
        return self._features

    @property
    def logits(self) -> torch.Tensor:
        if self._logits is None:
            raise RuntimeError("the network never called its classifier")
        return self._logits
