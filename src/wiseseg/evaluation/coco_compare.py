"""COCO-style numbers through pycocotools' COCOeval (``iouType="segm"``), for comparison.

Papers that report pycocotools numbers (CIM, for instance) differ from :func:`evaluate` in:

- AP is the mean of precision at 101 recall points (0, 0.01, ..., 1), not all points;
  ``AP`` averages over IoU 0.50:0.05:0.95;
- at most 100 predictions per image (COCOeval's largest ``maxDets``), the top-scoring ones;
- no ignore regions: VOC void pixels of a prediction count in the union, and a prediction on a
  crowd region is a false positive, because :meth:`Dataset.to_coco` exports instances only (the
  readers keep crowd regions as one uncategorised ignore mask per image).

Classes without instances are left out of the means, as in :func:`evaluate`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence

from wiseseg.data.dataset import Dataset
from wiseseg.evaluation.predictions import Prediction


def coco_results(preds_by_image: Mapping[int, Sequence[Prediction]],
                 category_ids: Sequence[int], min_score: float = 0.0) -> list[dict]:
    """Predictions as a COCO results list (no ``bbox``, so ``loadRes`` computes mask areas)."""
    return [
        {"image_id": image_id, "category_id": category_ids[p.category],
         "segmentation": p.segmentation, "score": p.score}
        for image_id, preds in preds_by_image.items() for p in preds if p.score >= min_score
    ]


def coco_metrics(preds_by_image: Mapping[int, Sequence[Prediction]], dataset: Dataset,
                 split: str, *, min_score: float = 0.0) -> dict:
    """COCOeval segm ``AP`` (IoU .50:.95), ``AP50`` and ``AP75`` over ``split``.

    Returns:
        ``{"AP", "AP50", "AP75", "max_dets", "tool"}``; a value is None when the split has no
        instances, and 0.0 for every class with instances when there are no predictions
        (pycocotools cannot load an empty results list).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = coco_results(preds_by_image, dataset.category_ids, min_score)
    gt_dict = dataset.to_coco(split)
    out = {"max_dets": 100, "tool": "pycocotools COCOeval, iouType segm"}
    if not gt_dict["annotations"]:
        return {"AP": None, "AP50": None, "AP75": None, **out}
    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, **out}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ap, ap50, ap75 = (float(v) for v in ev.stats[:3])
    return {"AP": ap if ap >= 0 else None, "AP50": ap50 if ap50 >= 0 else None,
            "AP75": ap75 if ap75 >= 0 else None, **out}
