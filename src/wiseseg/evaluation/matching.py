"""Greedy matching of ranked predictions to ground truth, and VOC average precision.

Matching (per image and class, which is the same as per class over the dataset because an
instance can only be matched within its image): predictions are taken in rank order (score
descending, ties by input position); each is matched to the still unmatched ground-truth
instance of its class with the highest IoU ≥ t (true positive; equal IoUs: the instance listed
first); otherwise it is a false positive. This is the COCO rule. PASCAL VOC's devkit and chainercv's
``eval_instance_segmentation_voc`` instead take the instance of highest IoU among *all* of the
class's instances and count the prediction as a false positive if that one is taken; the two
rules agree whenever no prediction reaches IoU ≥ t with two instances of its class, which is
always the case for t ≥ 0.5 and non-overlapping ground truth (VOC), up to exact ties.

A prediction is *ignored* (neither TP nor FP) when it matches no instance and at least
:data:`IGNORE_SHARE` of its pixels lie in the ignore region (VOC void, COCO crowd), the way
COCO ignores detections on crowd regions. Breakdowns may also mark instances as ignored
(a prediction matched to one is ignored; unignored instances are preferred) and predictions
as out of range (ignored when unmatched), as COCO's area ranges do.
"""

from __future__ import annotations

import numpy as np

from wiseseg.evaluation.overlaps import ImageOverlaps

TP, FP, IGNORED = 1, 0, -1
#: An unmatched prediction with at least this share of its pixels in the ignore region is
#: ignored rather than a false positive.
IGNORE_SHARE = 0.5


def match_image(ov: ImageOverlaps, threshold: float, gt_ignored: np.ndarray | None = None,
                pred_out_of_range: np.ndarray | None = None) -> np.ndarray:
    """Status (``TP``, ``FP`` or ``IGNORED``) of each prediction of one image, in rank order.

    Args:
        ov: the image's overlaps.
        threshold: minimum IoU of a match.
        gt_ignored: (G,) bool, instances whose matches are ignored (not counted as GT).
        pred_out_of_range: (P,) bool, predictions ignored when they match nothing.
    """
    n_pred, n_gt = ov.iou.shape
    status = np.where(ov.ignore_share >= IGNORE_SHARE, IGNORED, FP).astype(np.int8)
    if pred_out_of_range is not None:
        status[pred_out_of_range] = IGNORED
    if n_pred == 0 or n_gt == 0:
        return status
    candidate = (ov.iou >= threshold) & (ov.pred_class[:, None] == ov.gt_class[None, :])
    rows = np.flatnonzero(candidate.any(axis=1))
    if rows.size == 0:
        return status
    # Per row, candidate instances by IoU descending (ties: lower index first); the loop below
    # then runs on short Python lists, which beats numpy calls on arrays of a few elements.
    ranked = np.argsort(-np.where(candidate[rows], ov.iou[rows], -1.0), axis=1, kind="stable")
    n_cand = candidate[rows].sum(axis=1)
    ignored = [False] * n_gt if gt_ignored is None else gt_ignored.tolist()
    taken = [False] * n_gt
    for p, order, k in zip(rows.tolist(), ranked.tolist(), n_cand.tolist()):
        chosen = fallback = -1
        for j in order[:k]:
            if taken[j]:
                continue
            if not ignored[j]:
                chosen = j
                break
            if fallback < 0:
                fallback = j
        if chosen < 0:
            chosen = fallback
        if chosen >= 0:
            taken[chosen] = True
            status[p] = IGNORED if ignored[chosen] else TP
    return status


def average_precision(tp: np.ndarray, n_gt: int) -> float | None:
    """VOC 2010+ average precision: area under the monotone precision envelope, all points.

    Args:
        tp: bool per counted prediction of one class, in rank order (True = true positive).
        n_gt: number of ground-truth instances of the class.

    Returns:
        AP in [0, 1]; 0.0 when there are instances but no predictions; None when ``n_gt`` is 0
        (the class does not take part in the mean). Same as chainercv's
        ``calc_detection_voc_ap(..., use_07_metric=False)``.
    """
    if n_gt == 0:
        return None
    if tp.size == 0:
        return 0.0
    hits = np.cumsum(tp)
    recall = hits / n_gt
    precision = hits / np.arange(1, tp.size + 1)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))
