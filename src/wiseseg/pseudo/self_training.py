"""Self-training (beyond the paper): the segmenter's confident predictions on the training
images, filtered by the image-level labels, become the next round's pseudo masks — as BESTIE
(Kim et al., CVPR 2022) and CIM (Li et al., CVPR 2023) refine theirs.

For each training image, a prediction is kept when its class is in the image-level label and
its score is at least ``min_score``; it becomes an instance whose only candidate is the
predicted mask. A labelled class with no kept prediction keeps its previous pseudo instances,
so a class the segmenter missed is not lost from the labels. (Keeping also, within a
predicted class, the pseudo instances whose peak no kept prediction covers lowered the
labels' precision more than it raised their recall on every real set measured:
``benchmarks/results/self_training_labels_real_keep.md``, the code of commit 46437f0.)
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
    kept_previous: int = 0  # instances kept from the previous round (class not predicted)

    def as_dict(self) -> dict:
        return {"images": self.images, "from_predictions": self.from_predictions,
                "kept_previous": self.kept_previous}


def relabel(previous: dict[int, PseudoImage], predictions: Iterable[dict],
            records: Sequence[ImageRecord], category_ids: Sequence[int], min_score: float
            ) -> tuple[dict[int, PseudoImage], RelabelStats]:
    """The next round's pseudo images (see the module docstring).

    Args:
        previous: image id → this round's pseudo image.
        predictions: COCO results on the training images (``image_id``, ``category_id``,
            RLE ``segmentation``, ``score``).
        records: the training images (with their image-level labels).
        category_ids: COCO id of each class index.
        min_score: lowest score of a kept prediction.
    """
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
        predicted = set()
        for c, p in kept:
            seg = p["segmentation"]
            cy, cx = _centre(seg)
            s = float(p["score"])
            img.instances.append(PseudoInstance(c, (cy, cx, s), [Candidate(seg, s)]))
            predicted.add(c)
            stats.from_predictions += 1
        old = previous.get(rec.id)
        for inst in (old.instances if old is not None else []):
            if inst.category not in predicted:
                img.instances.append(inst)
                stats.kept_previous += 1
        out[rec.id] = img
    return out, stats


def _centre(seg: dict) -> tuple[int, int]:
    """The mask pixel nearest to the mask's centroid (a point inside the object)."""
    m = rle.decode(seg)
    ys, xs = np.nonzero(m)
    if len(ys) == 0:
        return 0, 0
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(ys[k]), int(xs[k])
