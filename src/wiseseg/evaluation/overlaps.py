"""Per-image mask overlaps with the ignore region taken out, through pycocotools' C code.

The ignore region (VOC void pixels, COCO crowd regions: :attr:`GroundTruth.ignore`) is removed
from both masks before IoU. Predictions are never decoded: with ``A = |P|``, ``B = |G'|``
(``G' = G`` minus the ignore region), ``I = |P ∩ G'|`` and ``V = |P ∩ ignore|``,

    IoU'(P, G) = I / ((A − V) + B − I)

where ``I`` and ``V`` come from pycocotools' "crowd" IoU (intersection over the area of the
first mask) times ``A``. Only ground-truth masks that overlap the ignore region are decoded to
subtract it (VOC instance masks never do: void is a label of its own there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wiseseg import rle
from wiseseg.data.dataset import GroundTruth
from wiseseg.evaluation.predictions import Prediction


@dataclass(frozen=True)
class ImageOverlaps:
    """What matching needs to know about one image; predictions in rank order.

    Rank order is score descending, ties broken by the input position (``Prediction.index``).

    Attributes:
        image_id: the image.
        pred_class, score, index: (P,) class index, score and input position of each prediction.
        pred_fraction: (P,) prediction area / image area.
        ignore_share: (P,) share of each prediction's pixels inside the ignore region (0 for an
            empty prediction or no ignore region).
        gt_class: (G,) class index of each ground-truth instance.
        gt_fraction: (G,) instance area / image area (the full mask, as ``data-stats`` counts).
        iou: (P, G) mask IoU with the ignore region removed from both masks.
    """

    image_id: int
    pred_class: np.ndarray
    score: np.ndarray
    index: np.ndarray
    pred_fraction: np.ndarray
    ignore_share: np.ndarray
    gt_class: np.ndarray
    gt_fraction: np.ndarray
    iou: np.ndarray


def rank_order(scores: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Indices sorting by score descending, then by input position ascending."""
    return np.lexsort((index, -scores))


def _without_ignore(masks: list[rle.RLE], ignore: rle.RLE) -> list[rle.RLE]:
    touching = np.flatnonzero(rle.intersection_over_first(masks, [ignore])[:, 0] > 0)
    if touching.size == 0:
        return masks
    keep = ~rle.decode(ignore)
    cleaned = rle.encode_many(rle.decode_many([masks[k] for k in touching]) & keep)
    out = list(masks)
    for k, m in zip(touching.tolist(), cleaned):
        out[k] = m
    return out


def image_overlaps(preds: Sequence[Prediction], gt: GroundTruth, height: int,
                   width: int) -> ImageOverlaps:
    """Overlaps of one image's predictions with its ground truth (either may be empty).

    Args:
        preds: the image's predictions, any order; masks must be ``height × width``.
        gt: the image's ground truth.
        height, width: the image size.
    """
    scores = np.array([p.score for p in preds], dtype=np.float64)
    index = np.array([p.index for p in preds], dtype=np.int64)
    order = rank_order(scores, index)
    pred_masks = [preds[k].segmentation for k in order.tolist()]
    gt_masks = [i.segmentation for i in gt.instances]
    pixels = float(height * width)

    a = rle.area(pred_masks)
    gt_area = rle.area(gt_masks)
    cleaned = gt_masks
    if gt.ignore is not None and gt_masks:
        cleaned = _without_ignore(gt_masks, gt.ignore)
    b = rle.area(cleaned) if cleaned is not gt_masks else gt_area
    # One C call for P × G' and P × ignore. pycocotools returns I / A; times A (an exact
    # integer) and rounded, that is I exactly.
    others = cleaned + ([gt.ignore] if gt.ignore is not None else [])
    inter = np.rint(rle.intersection_over_first(pred_masks, others) * a[:, None])
    in_ignore = inter[:, len(cleaned)] if gt.ignore is not None else np.zeros(len(pred_masks))
    inter = inter[:, :len(cleaned)]
    union = (a - in_ignore)[:, None] + b[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    share = np.divide(in_ignore, a, out=np.zeros_like(a), where=a > 0)
    return ImageOverlaps(
        image_id=gt.image_id,
        pred_class=np.array([preds[k].category for k in order.tolist()], dtype=np.int64),
        score=scores[order],
        index=index[order],
        pred_fraction=a / pixels,
        ignore_share=share,
        gt_class=np.array([i.category for i in gt.instances], dtype=np.int64),
        gt_fraction=gt_area / pixels,
        iou=iou,
    )
