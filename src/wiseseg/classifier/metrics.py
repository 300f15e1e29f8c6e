"""Stage-1 quality: image-level classification mAP and peak recall / precision / count error."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from wiseseg import rle
from wiseseg.data.dataset import GroundTruth, ImageRecord


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Ranking AP of binary ``labels`` by ``scores`` (area under the monotone precision
    envelope, all points, as VOC 2010+)."""
    order = np.argsort(-scores, kind="stable")
    y = labels[order] > 0
    if not y.any():
        return 0.0
    tp = np.cumsum(y)
    precision = tp / np.arange(1, len(y) + 1)
    recall = tp / y.sum()
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def peak_quality(peaks_by_image: Mapping[int, Iterable[dict]], gts: Mapping[int, GroundTruth],
                 records: Iterable[ImageRecord]) -> dict[str, float]:
    """How well peaks locate instances (peaks: dicts with ``class``, ``y``, ``x``).

    - recall: share of GT instances containing ≥ 1 peak of their class;
    - precision: share of peaks inside a GT instance of their class;
    - count MAE: mean over (image, class in the image-level label) of |#peaks − #instances|
      (the paper's Table 3 count error);
    - counts of peaks and instances.
    """
    hit_instances = n_instances = good_peaks = n_peaks = 0
    count_errors = []
    for rec in records:
        gt = gts[rec.id]
        peaks = list(peaks_by_image.get(rec.id, []))
        # which instance holds which peak, on the RLEs: decoding every mask of a photograph
        # for a few pixels made this most of a peak-settings grid's time
        held = rle.contains([i.segmentation for i in gt.instances],
                            [(int(p["y"]), int(p["x"])) for p in peaks], (rec.height, rec.width))
        cats = np.array([i.category for i in gt.instances], dtype=int)
        n_instances += len(cats)
        hit = np.zeros(len(cats), bool)
        for j, p in enumerate(peaks):
            n_peaks += 1
            inside = held[:, j] & (cats == p["class"])
            if np.any(inside):
                good_peaks += 1
                hit |= inside
        hit_instances += int(hit.sum())
        for c in rec.labels:
            n_p = sum(1 for p in peaks if p["class"] == c)
            count_errors.append(abs(n_p - int((cats == c).sum())))
    return {
        "peak_recall": hit_instances / n_instances if n_instances else 0.0,
        "peak_precision": good_peaks / n_peaks if n_peaks else 0.0,
        "count_mae": float(np.mean(count_errors)) if count_errors else 0.0,
        "peaks": n_peaks,
        "instances": n_instances,
    }
