"""Mask mAP at IoU 0.25 / 0.5 / 0.75, ABO, per-class AP and the Figure 5 breakdowns.

Definitions (the protocol of ``wiseseg evaluate``; also in docs/metrics.md):

- **IoU**: mask IoU with the image's ignore region (VOC void pixels 255, COCO crowd regions)
  removed from both masks (:mod:`wiseseg.evaluation.overlaps`).
- **AP_t** of a class: all its predictions over the split, ranked by score (ties: earlier input
  first), are matched greedily to the unmatched ground-truth instance of the class in their
  image with the highest IoU ≥ t (true positive) or else count as false positives; a prediction
  that matches nothing and lies at least half in the ignore region is ignored
  (:mod:`wiseseg.evaluation.matching`). AP is the area under the monotone precision envelope
  over all recall points (PASCAL VOC 2010+ devkit; chainercv ``eval_instance_segmentation_voc``
  with ``use_07_metric=False``). Duplicates are false positives. A class with instances but no
  predictions has AP 0.
- **mAP_t**: mean of AP_t over the classes with at least one instance in the split; classes
  without instances are reported as null and left out.
- **ABO** (average best overlap): per class, the mean over its instances of the best IoU with
  any prediction of that class in the same image (0 if there is none), then the mean over
  classes with instances. **Class-agnostic ABO**: the mean over all instances of the best IoU
  with any prediction of any class. ABO rewards recall only: it grows with the number of
  predictions, so read it together with ``min_score``.
- **AP50 by object size**: COCO area-range style, per bin of :data:`SIZE_BINS` (instance area
  as a fraction of the image area): instances outside the bin are ignored (a prediction matched
  to one is neither TP nor FP; instances in the bin are preferred), and so are predictions that
  match nothing and whose own area fraction is outside the bin.
- **AP50 by objects per image**: AP50 on the images whose number of instances falls in a bin
  of :data:`COUNT_BINS` (1, 2, 3–4, > 4); images without instances are in no bin.
- ``min_score``: predictions scoring below it are left out of every metric (default 0: all).
  Their number is reported under ``counts``. The official WISE code used 0.5 for its AP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from wiseseg.data.dataset import GroundTruth, ImageRecord
from wiseseg.data.stats import COUNT_BINS, SIZE_BINS, count_bin, size_bin
from wiseseg.errors import WisesegError
from wiseseg.evaluation.matching import (
    IGNORE_SHARE,
    IGNORED,
    TP,
    average_precision,
    match_image,
)
from wiseseg.evaluation.overlaps import ImageOverlaps, image_overlaps, rank_order
from wiseseg.evaluation.predictions import Prediction

#: IoU thresholds of the reported mAPs.
THRESHOLDS = (0.25, 0.5, 0.75)


def ap_key(threshold: float) -> str:
    """``0.5`` → ``"AP50"``."""
    return f"AP{round(threshold * 100)}"


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _check_inputs(preds_by_image: Mapping[int, Sequence[Prediction]],
                  gts: Mapping[int, GroundTruth], records: Sequence[ImageRecord],
                  n_classes: int) -> None:
    ids = {r.id for r in records}
    stray = sorted(set(preds_by_image) - ids)
    if stray:
        raise WisesegError(f"predictions for image id {stray[0]}, which is not among the "
                           f"{len(ids)} evaluated images")
    for r in records:
        if r.id not in gts:
            raise WisesegError(f"no ground truth for image id {r.id} ({r.name})")
        for p in preds_by_image.get(r.id, ()):
            if list(p.segmentation["size"]) != [r.height, r.width]:
                raise WisesegError(f"prediction {p.index} for image {r.name}: mask size "
                                   f"{p.segmentation['size']} differs from the image's "
                                   f"[{r.height}, {r.width}]")
            if not 0 <= p.category < n_classes:
                raise WisesegError(f"prediction {p.index} for image {r.name}: class index "
                                   f"{p.category} outside 0..{n_classes - 1}")


class _Split:
    """All images' overlaps, with per-prediction and per-instance arrays across the split."""

    def __init__(self, images: list[ImageOverlaps]):
        self.images = images
        self.pred_class = np.concatenate([o.pred_class for o in images] or [np.zeros(0, int)])
        self.pred_image = np.repeat(np.arange(len(images)), [len(o.score) for o in images])
        self.gt_class = np.concatenate([o.gt_class for o in images] or [np.zeros(0, int)])
        self.gt_image = np.repeat(np.arange(len(images)), [len(o.gt_class) for o in images])
        score = np.concatenate([o.score for o in images] or [np.zeros(0)])
        index = np.concatenate([o.index for o in images] or [np.zeros(0, int)])
        self.order = rank_order(score, index)

    def match(self, threshold: float, gt_ignored: list[np.ndarray] | None = None,
              pred_out: list[np.ndarray] | None = None) -> np.ndarray:
        parts = [match_image(o, threshold,
                             None if gt_ignored is None else gt_ignored[k],
                             None if pred_out is None else pred_out[k])
                 for k, o in enumerate(self.images)]
        return np.concatenate(parts or [np.zeros(0, np.int8)])

    def class_aps(self, status: np.ndarray, n_classes: int, gt_counted: np.ndarray,
                  image_subset: np.ndarray | None = None) -> list[float | None]:
        """AP per class from per-prediction statuses; ``gt_counted`` marks counted instances."""
        keep = status != IGNORED
        gt_keep = gt_counted
        if image_subset is not None:
            keep = keep & image_subset[self.pred_image]
            gt_keep = gt_keep & image_subset[self.gt_image]
        n_gt = np.bincount(self.gt_class[gt_keep], minlength=n_classes)
        ranked = self.order[keep[self.order]]
        ranked_class = self.pred_class[ranked]
        ranked_tp = status[ranked] == TP
        return [average_precision(ranked_tp[ranked_class == c], int(n_gt[c]))
                for c in range(n_classes)]


def _best_overlaps(images: list[ImageOverlaps]) -> tuple[np.ndarray, np.ndarray]:
    """Per instance: best IoU with a prediction of its class, and with any prediction."""
    same, any_ = [], []
    for o in images:
        n_pred, n_gt = o.iou.shape
        if n_pred == 0:
            same.append(np.zeros(n_gt))
            any_.append(np.zeros(n_gt))
            continue
        same_class = o.pred_class[:, None] == o.gt_class[None, :]
        same.append(np.where(same_class, o.iou, 0.0).max(axis=0))
        any_.append(o.iou.max(axis=0))
    empty = [np.zeros(0)]
    return np.concatenate(same or empty), np.concatenate(any_ or empty)


def evaluate(preds_by_image: Mapping[int, Sequence[Prediction]],
             gts: Mapping[int, GroundTruth], records: Sequence[ImageRecord],
             classes: Sequence[str], *, min_score: float = 0.0) -> dict:
    """Evaluate predictions against ground truth (definitions in the module docstring).

    Args:
        preds_by_image: image id → predictions, as :func:`load_predictions` returns them (their
            masks are trusted to be well-formed RLE); images may be missing (no predictions).
        gts: image id → ground truth, for every record.
        records: the evaluated images.
        classes: class names, by class index.
        min_score: leave out predictions scoring below this.

    Returns:
        A JSON-serialisable dict: ``mAP25``, ``mAP50``, ``mAP75``, ``ABO``, ``ABO_agnostic``
        (each None when the split has no instances), ``per_class`` (name → ``AP25``, ``AP50``,
        ``AP75``, ``ABO``, ``n_gt``, ``n_pred``; None where the class has no instances),
        ``by_size``, ``by_count``, ``counts`` and ``protocol`` (the settings used).
    """
    n_classes = len(classes)
    _check_inputs(preds_by_image, gts, records, n_classes)
    n_input = sum(len(preds_by_image.get(r.id, ())) for r in records)
    images = [
        image_overlaps([p for p in preds_by_image.get(r.id, ()) if p.score >= min_score],
                       gts[r.id], r.height, r.width)
        for r in records
    ]
    split = _Split(images)
    all_gt = np.ones(split.gt_class.size, dtype=bool)
    n_gt = np.bincount(split.gt_class, minlength=n_classes)
    n_pred = np.bincount(split.pred_class, minlength=n_classes)

    aps: dict[str, list[float | None]] = {}
    ignored: dict[str, int] = {}
    status50 = None
    for t in THRESHOLDS:
        status = split.match(t)
        aps[ap_key(t)] = split.class_aps(status, n_classes, all_gt)
        ignored[ap_key(t)] = int(np.sum(status == IGNORED))
        if t == 0.5:
            status50 = status
    assert status50 is not None

    best_same, best_any = _best_overlaps(images)
    abo = [float(best_same[split.gt_class == c].mean()) if n_gt[c] else None
           for c in range(n_classes)]

    out: dict = {f"m{k}": _mean(v) for k, v in aps.items()}
    out["ABO"] = _mean(abo)
    out["ABO_agnostic"] = float(best_any.mean()) if best_any.size else None
    out["per_class"] = {
        name: {**{k: v[c] for k, v in aps.items()}, "ABO": abo[c], "n_gt": int(n_gt[c]),
               "n_pred": int(n_pred[c])}
        for c, name in enumerate(classes)
    }
    out["by_size"] = _by_size(split, classes)
    out["by_count"] = _by_count(split, classes, status50)
    out["counts"] = {
        "images": len(records),
        "images_without_gt": sum(1 for o in images if o.gt_class.size == 0),
        "gt_instances": int(split.gt_class.size),
        "predictions": n_input,
        "below_min_score": n_input - int(split.pred_class.size),
        "evaluated_predictions": int(split.pred_class.size),
        "ignored_predictions": ignored,
    }
    out["protocol"] = {
        "iou": "mask IoU with the ignore region (VOC void, COCO crowd) removed from both masks",
        "matching": "greedy by score (ties: input order); highest IoU >= t among the class's "
                    "unmatched instances of the image",
        "ap": "area under the monotone precision envelope, all points (VOC 2010+)",
        "mean_over": "classes with ground truth in the split",
        "ignore_share": IGNORE_SHARE,
        "min_score": min_score,
        "size_bins": {name: [lo, min(hi, 1.0)] for name, lo, hi in SIZE_BINS},
        "count_bins": {name: [lo, hi if hi < 10**9 else None] for name, lo, hi in COUNT_BINS},
    }
    return out


def _by_size(split: _Split, classes: Sequence[str]) -> dict:
    gt_bins = [np.array([size_bin(f) for f in o.gt_fraction.tolist()], dtype=object)
               for o in split.images]
    pred_bins = [np.array([size_bin(f) for f in o.pred_fraction.tolist()], dtype=object)
                 for o in split.images]
    out = {}
    for name, lo, hi in SIZE_BINS:
        outside_gt = [b != name for b in gt_bins]
        status = split.match(0.5, outside_gt, [b != name for b in pred_bins])
        inside = ~np.concatenate(outside_gt or [np.zeros(0, bool)])
        per_class = split.class_aps(status, len(classes), inside)
        out[name] = {"area_fraction": [lo, min(hi, 1.0)], "n_gt": int(inside.sum()),
                     "mAP50": _mean(per_class), "per_class": dict(zip(classes, per_class))}
    return out


def _by_count(split: _Split, classes: Sequence[str], status50: np.ndarray) -> dict:
    n_instances = np.array([o.gt_class.size for o in split.images], dtype=np.int64)
    bins = np.array([count_bin(int(n)) for n in n_instances], dtype=object)
    all_gt = np.ones(split.gt_class.size, dtype=bool)
    out = {}
    for name, lo, hi in COUNT_BINS:
        subset = bins == name
        per_class = split.class_aps(status50, len(classes), all_gt, image_subset=subset)
        out[name] = {"instances_per_image": [lo, hi if hi < 10**9 else None],
                     "images": int(subset.sum()), "n_gt": int(n_instances[subset].sum()),
                     "mAP50": _mean(per_class), "per_class": dict(zip(classes, per_class))}
    return out


def count_error(preds_by_image: Mapping[int, Sequence[Prediction]],
                gts: Mapping[int, GroundTruth], records: Sequence[ImageRecord], *,
                min_score: float = 0.0) -> float | None:
    """Mean |#predictions − #instances| over the (image, class) pairs of the image-level labels.

    The pseudo-mask count error of the paper's Table 3. Pairs are the classes in each record's
    ``labels``; predictions of classes outside an image's labels are not counted, and crowd
    regions are not instances. Predictions scoring below ``min_score`` are left out.

    Returns:
        The mean, or None when no image has a label.
    """
    errors = []
    for r in records:
        if not r.labels:
            continue
        if r.id not in gts:
            raise WisesegError(f"no ground truth for image id {r.id} ({r.name})")
        n_gt = np.bincount([i.category for i in gts[r.id].instances],
                           minlength=max(r.labels) + 1)
        preds = [p.category for p in preds_by_image.get(r.id, ()) if p.score >= min_score]
        n_pred = np.bincount(np.asarray(preds, dtype=np.int64), minlength=max(r.labels) + 1)
        errors.extend(abs(int(n_pred[c]) - int(n_gt[c])) for c in r.labels)
    return float(np.mean(errors)) if errors else None
