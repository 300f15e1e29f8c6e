"""Mask IoU, VOC-style AP, ABO and breakdowns.

Entry points: :func:`evaluate_predictions` (in-memory COCO results + a dataset split),
:func:`evaluate_dataset` (checked predictions by image + a dataset split), :func:`evaluate`
(predictions and ground truth by image), :func:`count_error`, :func:`load_predictions`.
The metric definitions are in :mod:`wiseseg.evaluation.evaluator`.
"""

from wiseseg.evaluation.api import evaluate_dataset, evaluate_predictions
from wiseseg.evaluation.coco_compare import coco_metrics
from wiseseg.evaluation.evaluator import THRESHOLDS, count_error, evaluate
from wiseseg.evaluation.predictions import Prediction, load_predictions, parse_predictions

__all__ = [
    "THRESHOLDS", "Prediction", "coco_metrics", "count_error", "evaluate", "evaluate_dataset",
    "evaluate_predictions", "load_predictions", "parse_predictions",
]
