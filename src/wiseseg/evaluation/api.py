"""Evaluation entry points over a :class:`Dataset` split, for the CLI, ``run`` and analyses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wiseseg.data.dataset import Dataset
from wiseseg.evaluation.coco_compare import coco_metrics
from wiseseg.evaluation.evaluator import evaluate
from wiseseg.evaluation.predictions import Prediction, parse_predictions


def evaluate_dataset(preds_by_image: Mapping[int, Sequence[Prediction]], dataset: Dataset,
                     split: str, *, min_score: float = 0.0, coco: bool = False) -> dict:
    """:func:`evaluate` against the ground truth of ``dataset``'s ``split``.

    Args:
        preds_by_image: as :func:`load_predictions` / :func:`parse_predictions` return.
        min_score: leave out predictions scoring below this (all metrics, COCO's too).
        coco: also compute pycocotools COCOeval numbers, under the key ``"coco"``.

    Raises:
        WisesegError: the split has no ground-truth masks.
    """
    gts = dataset.ground_truth(split)
    out = evaluate(preds_by_image, gts, dataset.records(split), dataset.classes,
                   min_score=min_score)
    out["split"] = split
    if coco:
        out["coco"] = coco_metrics(preds_by_image, dataset, split, min_score=min_score)
    return out


def evaluate_predictions(preds: Any, dataset: Dataset, split: str, *, min_score: float = 0.0,
                         coco: bool = False, source: str | Path = "<predictions>") -> dict:
    """Evaluate in-memory COCO results entries (a list of dicts) on ``dataset``'s ``split``.

    Every entry is checked as :func:`load_predictions` checks a file; errors name ``source``
    and the entry index. See :func:`evaluate_dataset` for the options and
    :mod:`wiseseg.evaluation.evaluator` for the metric definitions.
    """
    by_image = parse_predictions(preds, dataset.records(split), dataset.category_ids,
                                 source=source, split=split)
    return evaluate_dataset(by_image, dataset, split, min_score=min_score, coco=coco)
