"""The field's segmentation transforms, applied to an (image, mask) pair together.

Training (as CIRKD and mmsegmentation train DeepLabV3): a random scale of the whole image,
drawn uniformly in ``DATASET.SCALE_RANGE`` (the field's [0.5, 2.0]); padding on the right
and bottom up to ``DATASET.CROP_SIZE`` where the scaled image is smaller (image with 0,
mask with the ignore index, so padding is never learnt or scored); a random crop of
``CROP_SIZE`` (height, width); a horizontal flip with probability 0.5; then ``ToTensor``
and the dataset's normalisation. The image is resized bilinearly, the mask by nearest
neighbour (labels are not averaged). Validation: the whole image, only normalised.

Every random draw comes from torch's global generator, which `IndexedDataset` seeds per
``(seed, epoch, index)``: the crop of a sample is the same in any worker and after resume.
Both transforms carry ``joint = True``: `IndexedDataset` passes them the pair.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import functional as TF

from kdharness.config import IGNORE_INDEX


def mask_to_tensor(mask: Image.Image) -> torch.Tensor:
    """A mask image of class indices (mode L or P) as an int64 ``[H, W]`` tensor."""
    return torch.from_numpy(np.array(mask, dtype=np.int64))


class SegmentationEval:
    """The whole image, normalised; the mask as int64 class indices."""

    joint = True

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        if image.size != mask.size:
            raise ValueError(f"image of size {image.size} with a mask of size {mask.size}; expected the same (width, height)")
        return TF.normalize(TF.to_tensor(image), self.mean, self.std), mask_to_tensor(mask)

    def __repr__(self) -> str:
        return f"SegmentationEval(mean={self.mean}, std={self.std})"


class SegmentationTrain(SegmentationEval):
    """Random scale in ``scale_range``, pad (mask: ``ignore_index``), random crop of
    ``crop_size`` (height, width), horizontal flip, normalise."""

    def __init__(
        self,
        crop_size: Sequence[int],
        scale_range: Sequence[float],
        mean: Sequence[float],
        std: Sequence[float],
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(mean, std)
        self.crop_h, self.crop_w = (int(v) for v in crop_size)
        self.low, self.high = (float(v) for v in scale_range)
        self.ignore_index = int(ignore_index)

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        if image.size != mask.size:
            raise ValueError(f"image of size {image.size} with a mask of size {mask.size}; expected the same (width, height)")
        scale = self.low + (self.high - self.low) * float(torch.rand(()))
        width, height = image.size
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if size != image.size:
            image = image.resize(size, Image.BILINEAR)
            mask = mask.resize(size, Image.NEAREST)
        tensor, target = TF.to_tensor(image), mask_to_tensor(mask)
        pad_h, pad_w = max(0, self.crop_h - tensor.shape[1]), max(0, self.crop_w - tensor.shape[2])
        if pad_h or pad_w:
            tensor = F.pad(tensor, (0, pad_w, 0, pad_h), value=0.0)
            target = F.pad(target, (0, pad_w, 0, pad_h), value=self.ignore_index)
        top = int(torch.randint(0, tensor.shape[1] - self.crop_h + 1, ()))
        left = int(torch.randint(0, tensor.shape[2] - self.crop_w + 1, ()))
        tensor = tensor[:, top : top + self.crop_h, left : left + self.crop_w]
        target = target[top : top + self.crop_h, left : left + self.crop_w]
        if float(torch.rand(())) < 0.5:
            tensor, target = tensor.flip(-1), target.flip(-1)
        return TF.normalize(tensor.contiguous(), self.mean, self.std), target.contiguous()

    def __repr__(self) -> str:
        return (f"SegmentationTrain(crop=({self.crop_h}, {self.crop_w}), scale=[{self.low}, {self.high}], "
                f"mean={self.mean}, std={self.std}, ignore_index={self.ignore_index})")
