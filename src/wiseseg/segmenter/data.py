"""Training samples for Mask R-CNN: pseudo masks re-drawn on every use, or true masks.

A sample is ``(image float 3×H×W in [0, 1], target)`` with torchvision's target contract
(``boxes`` float N×4 xyxy, ``labels`` int64 N in 1..C, ``masks`` uint8 N×H×W). Images are
rescaled so that the shorter side is ``min_size`` (longer side ≤ ``max_size``) *before* the
targets are built, so masks are decoded at training resolution once per draw.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from wiseseg import rle
from wiseseg.data.dataset import GroundTruth, ImageRecord
from wiseseg.data.images import load_image
from wiseseg.data.transforms import color_jitter, resize_image, to_tensor
from wiseseg.pseudo.sampling import PseudoImage, draw_instances


def target_size(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(h', w') with the shorter side ``min_size`` unless the longer would exceed ``max_size``
    (torchvision's rule, applied here so masks need not be resized twice)."""
    scale = min(min_size / min(h, w), max_size / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def build_target(masks: np.ndarray, labels: Sequence[int]) -> dict[str, torch.Tensor]:
    """Target dict from ``N×H×W`` bool masks and 0-based class indices; empty masks dropped.

    Boxes are the tight xyxy boxes of the masks (+1 on the max side, pixel-edge convention).
    """
    keep = [i for i in range(len(masks)) if masks[i].any()]
    h, w = masks.shape[1:] if masks.ndim == 3 else (0, 0)
    if not keep:
        return {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros((0, h, w), dtype=torch.uint8)}
    m = masks[keep]
    rows, cols = m.any(axis=2), m.any(axis=1)
    y1 = rows.argmax(axis=1)
    y2 = h - rows[:, ::-1].argmax(axis=1)
    x1 = cols.argmax(axis=1)
    x2 = w - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
    return {"boxes": torch.from_numpy(boxes),
            "labels": torch.as_tensor([int(labels[i]) + 1 for i in keep], dtype=torch.int64),
            "masks": torch.from_numpy(m.astype(np.uint8))}


#: what Mask R-CNN makes of the classes an image's labels leave unchecked
#: (``ImageRecord.unknown``): ``background`` (every unlabelled object is background, as
#: before) or ``ignore`` (left out of its box classifier's loss on that image)
UNLABELLED_MODES = ("background", "ignore")


class SegmenterData:
    """Images with instance targets for the engine (see :mod:`wiseseg.engine.data`).

    Args:
        records: the training images.
        instances: per image, either a :class:`~wiseseg.pseudo.sampling.PseudoImage` (pseudo
            masks: candidates re-drawn with the sample's RNG each time the image is used, as
            in Algorithm 1) or a :class:`~wiseseg.data.dataset.GroundTruth` (the fully
            supervised reference). Images without any instance train as background.
        mode: ``sample`` | ``argmax`` | ``fixed`` for pseudo masks.
        unlabelled_classes: see :data:`UNLABELLED_MODES`.
    """

    def __init__(self, records: Sequence[ImageRecord], instances: dict[int, object],
                 min_size: int, max_size: int, hflip: bool = True, jitter: float = 0.0,
                 mode: str = "sample", dup_iou: float = 0.8, cache: bool = True,
                 unlabelled_classes: str = "background"):
        if unlabelled_classes not in UNLABELLED_MODES:
            raise ValueError(f"segmenter.unlabelled_classes must be one of "
                             f"{', '.join(UNLABELLED_MODES)}, got {unlabelled_classes!r}")
        self.records = list(records)
        self.unlabelled_classes = unlabelled_classes
        self.instances = instances
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.hflip, self.jitter = hflip, float(jitter)
        self.mode, self.dup_iou = mode, float(dup_iou)
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def _image(self, index: int) -> np.ndarray:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        r = self.records[index]
        img = resize_image(load_image(r.path), target_size(r.height, r.width, self.min_size,
                                                           self.max_size))
        if self._cache is not None:
            self._cache[index] = img
        return img

    def instances_for(self, index: int, rng: np.random.Generator
                      ) -> tuple[list[dict], list[int]]:
        """(RLEs at original size, 0-based classes) for one use of image ``index``."""
        rec = self.records[index]
        inst = self.instances.get(rec.id)
        if inst is None:
            return [], []
        if isinstance(inst, GroundTruth):
            return ([i.segmentation for i in inst.instances],
                    [i.category for i in inst.instances])
        assert isinstance(inst, PseudoImage)
        drawn = draw_instances(inst, rng, mode=self.mode, dup_iou=self.dup_iou)
        return [d.segmentation for d in drawn], [d.category for d in drawn]

    def target(self, index: int, masks: np.ndarray, labels: Sequence[int]
               ) -> dict[str, torch.Tensor]:
        """:func:`build_target`, plus ``ignore_classes`` (int64 labels in 1..C) when the
        image leaves classes unchecked and ``unlabelled_classes`` is ``ignore``
        (:mod:`wiseseg.models.partial_heads`)."""
        t = build_target(np.ascontiguousarray(masks), labels)
        unknown = self.records[index].unknown
        if self.unlabelled_classes == "ignore" and unknown:
            t["ignore_classes"] = torch.as_tensor(sorted(int(c) + 1 for c in unknown),
                                                  dtype=torch.int64)
        return t

    def load(self, index: int, rng: np.random.Generator):
        img = self._image(index)
        segs, labels = self.instances_for(index, rng)
        rec = self.records[index]
        masks = rle.decode_many(segs, (rec.height, rec.width))
        if masks.shape[1:] != img.shape[:2]:
            from wiseseg.data.transforms import resize_mask

            masks = np.stack([resize_mask(m, img.shape[:2]) for m in masks]) if len(masks) \
                else np.zeros((0, *img.shape[:2]), bool)
        if self.hflip and rng.random() < 0.5:
            img = img[:, ::-1]
            masks = masks[:, :, ::-1]
        img = color_jitter(img, self.jitter, rng)
        return to_tensor(img), self.target(index, masks, labels)

    def collate(self, samples):
        images, targets = zip(*samples)
        return list(images), list(targets)

    def size_of(self, index: int) -> tuple[int, int]:
        """``(h, w)`` of sample ``index`` at training resolution."""
        r = self.records[index]
        return target_size(r.height, r.width, self.min_size, self.max_size)

    def training_image(self, index: int, flip: bool = False) -> np.ndarray:
        """The image at training resolution, optionally flipped (no other augmentation)."""
        img = self._image(index)
        return img[:, ::-1] if flip else img


class CachedSegmenterData(SegmenterData):
    """The same samples as :class:`SegmenterData`, with the images replaced by their cached
    body features (:class:`~wiseseg.engine.feature_cache.FeatureCache`, plain and flipped).

    Targets are drawn exactly as before (the same RNG draws, so the same pseudo masks and
    flips per (seed, epoch, index)); colour jitter is not applied, since the features were
    computed once from the unjittered image. Samples are ``(features, (h, w), target)``.
    """

    def __init__(self, base: SegmenterData, cache):
        self.__dict__.update(base.__dict__)
        self.cache = cache
        self._cache = None  # the images are not needed any more

    def load(self, index: int, rng: np.random.Generator):
        segs, labels = self.instances_for(index, rng)
        rec = self.records[index]
        size = self.size_of(index)
        masks = rle.decode_many(segs, (rec.height, rec.width))
        if masks.shape[1:] != size:
            from wiseseg.data.transforms import resize_mask

            masks = np.stack([resize_mask(m, size) for m in masks]) if len(masks) \
                else np.zeros((0, *size), bool)
        flip = bool(self.hflip and rng.random() < 0.5)
        if flip:
            masks = masks[:, :, ::-1]
        return self.cache.get(index, flip), size, self.target(index, masks, labels)

    def collate(self, samples):
        feats, sizes, targets = zip(*samples)
        return list(feats), list(sizes), list(targets)
