"""What the segmentation distillers share: the dense logits they distil.

CIRKD computes its logit distillation (pixel-wise KD, CWD) on the classifier's output at
the decoder's resolution (output stride 8), before upsampling; every segmentation model
returns that map as ``feats["dense_logits"]`` (docs/architecture.md). Where a teacher's map
is larger or smaller than the student's (two output strides), ours is resized to the
student's, bilinearly: our choice, CIRKD's pairs share one output stride.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F



def dense_logits(feats_student: dict[str, Any], feats_teacher: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(student, teacher)`` dense logits ``[B, C, h, w]`` of one size (the student's)."""
    try:
        student, teacher = feats_student["dense_logits"], feats_teacher["dense_logits"]
    except KeyError:
        raise ValueError(
            "a segmentation distiller needs feats['dense_logits'] from both models; choose segmentation models "
            "(DISTILLER.STUDENT / TEACHER from kdharness/models/segmentation/)"
        ) from None
    if teacher.shape[-2:] != student.shape[-2:]:
        teacher = F.interpolate(teacher, size=student.shape[-2:], mode="bilinear", align_corners=False)
    return student, teacher

