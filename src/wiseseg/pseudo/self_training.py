"""Self-training (beyond the paper): the segmenter's confident predictions on the training
images, filtered by the image-level labels, become the next round's pseudo masks — as BESTIE
(Kim et al., CVPR 2022) and CIM (Li et al., CVPR 2023) refine theirs.

For each training image, a prediction is kept when its class is in the image-level label and
its score is at least ``min_score``; it becomes an instance whose only candidate is the
predicted mask. What stays of the previous pseudo instances (``keep``):

- ``"class"``: those of a labelled class with no kept prediction, so a class the segmenter
  missed is not lost from the labels;
- ``"peak"``: also, within a predicted class, those whose peak lies in none of the class's
  kept predictions — an object the segmenter missed beside one it found.

Pure function; handles images and classes without any instance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from wiseseg import rle
from wiseseg.data.dataset import ImageRecord
from wiseseg.pseudo.sampling import Candidate, PseudoImage, PseudoInstance


def relabelled_records(records: Iterable[ImageRecord]) -> list[ImageRecord]:
    """The training images a self-training round predicts on and relabels: every image with
    an image-level label — those with true masks, those with image-level labels only and the
    partially labelled ones alike. Negatives (no class, none unknown) have nothing to label."""
    return [r for r in records if r.labels or r.unknown]


@dataclass
class RelabelStats:
    images: int = 0
    from_predictions: int = 0  # instances taken from predictions
    kept_previous: int = 0  # instances kept from the previous round (see ``keep``)

    def as_dict(self) -> dict:
        return {"images": self.images, "from_predictions": self.from_predictions,
                "kept_previous": self.kept_previous}


def relabel(previous: dict[int, PseudoImage], predictions: Iterable[dict],
            records: Sequence[ImageRecord], category_ids: Sequence[int], min_score: float,
            keep: str = "class") -> tuple[dict[int, PseudoImage], RelabelStats]:
    """The next round's pseudo images (see the module docstring).

    Args:
        previous: image id → this round's pseudo image.
        predictions: COCO results on the training images (``image_id``, ``category_id``,
            RLE ``segmentation``, ``score``).
        records: the training images (with their image-level labels).
        category_ids: COCO id of each class index.
        min_score: lowest score of a kept prediction.
        keep: which previous instances stay, ``"class"`` or ``"peak"`` (module docstring).
    """
    if keep not in ("class", "peak"):
        raise ValueError(f"keep must be 'class' or 'peak', got {keep!r}")
    index = {int(c): i for i, c in enumerate(category_ids)}
    by_image: dict[int, list[dict]] = {}
    for p in predictions:
        by_image.setdefault(int(p["image_id"]), []).append(p)
    stats = RelabelStats()
    out: dict[int, PseudoImage] = {}
    for rec in records:
        stats.images += 1
        img = PseudoImage(rec.id, rec.height, rec.width)
        kept = []
        for p in by_image.get(rec.id, []):
            c = index.get(int(p["category_id"]))
            if c is None or c not in rec.labels or float(p["score"]) < min_score:
                continue
            kept.append((c, p))
        kept.sort(key=lambda cp: -float(cp[1]["score"]))
        predicted: dict[int, list[np.ndarray]] = {}
        for c, p in kept:
            seg = p["segmentation"]
            m = rle.decode(seg)
            cy, cx = _centre(m)
            s = float(p["score"])
            img.instances.append(PseudoInstance(c, (cy, cx, s), [Candidate(seg, s)]))
            predicted.setdefault(c, []).append(m)
            stats.from_predictions += 1
        old = previous.get(rec.id)
        for inst in (old.instances if old is not None else []):
            if inst.category in predicted and (keep == "class" or _covered(
                    inst.peak, predicted[inst.category])):
                continue
            img.instances.append(inst)
            stats.kept_previous += 1
        out[rec.id] = img
    return out, stats


def _covered(peak: tuple, masks: list[np.ndarray]) -> bool:
    """Whether the peak's pixel ``(y, x)`` lies in one of ``masks`` (H×W, the image's)."""
    y, x = int(peak[0]), int(peak[1])
    return any(0 <= y < m.shape[0] and 0 <= x < m.shape[1] and bool(m[y, x]) for m in masks)


def _centre(m: np.ndarray) -> tuple[int, int]:
    """The mask pixel nearest to the mask's centroid (a point inside the object)."""
    ys, xs = np.nonzero(m)
    if len(ys) == 0:
        return 0, 0
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(ys[k]), int(xs[k])
