"""The dense (segmentation) memory bank: teacher decoder features of sampled pixels.

A per-pixel bank of a whole training set does not fit anywhere (Cityscapes: 2 975 images of
128 x 256 decoder cells at output stride 8 is 97M rows), so the bank keeps a fixed number of
pixels **per class per image** (`ICKD.DENSE.BANK_PIXELS_PER_CLASS`), drawn once, uniformly
among the image's pixels of that class at the decoder's resolution: rare classes are as
present as frequent ones, and the memory is bounded by
``images x classes per image x pixels per class`` rows, reported when the bank is built.
The draw of image ``i`` uses its own generator, seeded by ``(ICKD.DENSE.SEED, i)``, so the
bank does not depend on the batch size or the order of the pass.

Rows are ordered by (image, pixel), each with its image id (the dataset index) and pixel id
(``y * w + x`` at the decoder's resolution). Retrieval is `ickd_plugin.retrieval.retrieve`
unchanged, with the rows' image ids as exclusion groups: a query pixel never retrieves a
bank pixel of its own image (the query comes from an augmented view, so "itself" is any
pixel of the image it was cropped from). Everything else (centre, norms, tie groups, class
table) is `MemoryBank`'s.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ickd_plugin.memory_bank import MemoryBank, check_representable, class_row_table

IGNORE_INDEX = 255  # the segmentation convention for pixels without a label


class DenseMemoryBank(MemoryBank):
    """`MemoryBank` rows that are pixels: also each row's ``image_ids`` and ``pixel_ids``."""

    def __init__(self, dtype: torch.dtype = torch.float32, persistent: bool = False, centered: bool = False) -> None:
        super().__init__(dtype, persistent=persistent, centered=centered)
        self.register_buffer("image_ids", torch.empty(0, dtype=torch.long), persistent=persistent)
        self.register_buffer("pixel_ids", torch.empty(0, dtype=torch.long), persistent=persistent)

    def fill_pixels(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        image_ids: torch.Tensor,
        pixel_ids: torch.Tensor,
        num_classes: int,
        device: torch.device | str,
        key: str | None = None,
    ) -> None:
        """Set the bank from sampled pixels (any order); rows are sorted by (image, pixel)."""
        image_ids = image_ids.to(device=device, dtype=torch.long)
        pixel_ids = pixel_ids.to(device=device, dtype=torch.long)
        labels = labels.to(device=device, dtype=torch.long)
        if features.dtype != self.dtype:
            check_representable(features, self.dtype, "filling the dense bank")
        features = features.to(device=device, dtype=self.dtype)
        span = int(pixel_ids.max()) + 1 if pixel_ids.numel() else 1
        order = torch.argsort(image_ids * span + pixel_ids)
        image_ids, pixel_ids, labels, features = image_ids[order], pixel_ids[order], labels[order], features[order]
        if image_ids.numel() > 1 and bool(((image_ids[1:] == image_ids[:-1]) & (pixel_ids[1:] == pixel_ids[:-1])).any()):
            raise ValueError("the dense bank got the same (image, pixel) twice")
        num_classes = max(int(num_classes), int(labels.max()) + 1 if labels.numel() else 0)
        self.features = features
        self.labels = labels
        self.image_ids = image_ids
        self.pixel_ids = pixel_ids
        self.row_of_index = torch.empty(0, dtype=torch.long, device=device)  # rows are pixels, not samples
        self.class_rows = class_row_table(labels, num_classes)
        self.key = key
        self._derive()

    def check_capacity(self, k: int, n: int, all_same_class: bool) -> None:
        """Fail before training when a query pixel could lack K positives or N negatives.

        A query's positives exclude its own image's rows, so class ``c`` offers at least its
        size minus the most rows one image holds of it.
        """
        if self.num_rows == 0:
            raise ValueError("the dense memory bank is empty: no labelled pixel in the training set")
        num_classes = self.class_rows.shape[0]
        sizes = torch.bincount(self.labels, minlength=num_classes)
        per_image = torch.zeros(num_classes, dtype=torch.long, device=self.labels.device)
        pairs, counts = torch.unique(self.image_ids * num_classes + self.labels, return_counts=True)
        per_image.scatter_reduce_(0, pairs % num_classes, counts, reduce="amax")
        offered = sizes - per_image
        present = (sizes > 0).nonzero().squeeze(1).tolist()
        worst = min(present, key=lambda c: int(offered[c]))
        needed = 1 if all_same_class else k
        if int(offered[worst]) < needed:
            raise ValueError(
                f"ICKD.K = {k}: class {worst} has {int(sizes[worst])} bank pixels, at most {int(per_image[worst])} "
                f"of them in one image, so a query pixel of that image finds only {int(offered[worst])} positives "
                f"in other images; lower ICKD.K or raise ICKD.DENSE.BANK_PIXELS_PER_CLASS"
            )
        others = self.num_rows - int(sizes.max())
        if n > others:
            raise ValueError(f"ICKD.N = {n} is larger than the number of bank pixels of other classes than the "
                             f"largest one ({others}); lower ICKD.N to at most {others}")

    def per_class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.class_rows.shape[0]).tolist()


def labels_at(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[B, h, w]`` labels of ``mask [B, H, W]`` at a feature map's resolution (nearest pixel)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask.long()
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0].long()


def sample_pixels(
    labels: torch.Tensor, per_class: int, generator: torch.Generator | None = None, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixel ids, labels)`` of up to `per_class` pixels of every class present in ``labels [h, w]``,
    drawn uniformly without replacement (``generator`` None: the global RNG); ``ignore_index`` skipped.
    Classes in ascending order, each class's pixels in ascending pixel order."""
    flat = labels.reshape(-1)
    chosen, classes = [], []
    for c in torch.unique(flat).tolist():
        if c == ignore_index or c < 0:
            continue
        where = (flat == c).nonzero().squeeze(1)
        if where.numel() > per_class:
            pick = torch.randperm(where.numel(), generator=generator, device="cpu")[:per_class].to(where.device)
            where = where[pick].sort().values
        chosen.append(where)
        classes.append(torch.full_like(where, c))
    if not chosen:
        empty = torch.empty(0, dtype=torch.long, device=labels.device)
        return empty, empty
    return torch.cat(chosen), torch.cat(classes)


def image_generator(seed: int, image_id: int) -> torch.Generator:
    """The bank's own generator for image ``image_id``: the same draw whatever the pass's order."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(image_id))


@torch.no_grad()
def extract_pixel_features(
    model: Any,
    feature_of: Any,
    dataset: Any,
    per_class: int,
    seed: int,
    batch_size: int,
    num_workers: int,
    dtype: torch.dtype,
    device: torch.device | str,
    progress: Iterable | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features [R, D], labels [R], image ids [R], pixel ids [R]) of the bank's pixels.

    One no-grad pass of ``model`` (eval mode) over ``dataset`` (items ``(image, mask, index)``,
    seen without augmentation); ``feature_of(output)`` picks the decoder features ``[B, D, h, w]``
    from what the model returns.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval()
    parts: list[tuple[torch.Tensor, ...]] = []
    try:
        for image, mask, index in (progress(loader) if progress is not None else loader):
            decoder = feature_of(model(image.to(device)))
            labels = labels_at(mask.to(decoder.device), tuple(decoder.shape[-2:]))
            flat = decoder.flatten(2)  # [B, D, h * w]
            for i, image_id in enumerate(index.tolist()):
                pixels, classes = sample_pixels(labels[i], per_class, image_generator(seed, image_id))
                rows = flat[i][:, pixels].t().float()
                parts.append((rows, classes, torch.full_like(pixels, image_id), pixels))
    finally:
        model.train(was_training)
    if not parts:
        raise ValueError("the dense bank pass found no labelled pixel in the training set")
    features, labels, image_ids, pixel_ids = (torch.cat([p[j] for p in parts]) for j in range(4))
    check_representable(features, dtype, "filling the dense bank")
    return features.to(dtype), labels, image_ids, pixel_ids
