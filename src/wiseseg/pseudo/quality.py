"""Pseudo-mask analysis (paper Table 3): pseudo masks against the training split's ground
truth, and the Mask R-CNN trained on them scored on the same images."""

from __future__ import annotations

from pathlib import Path

from wiseseg.data.dataset import Dataset
from wiseseg.evaluation import count_error, evaluate_dataset, parse_predictions
from wiseseg.io import read_json

#: Predictions below this score are not counted as objects in the count error.
COUNT_MIN_SCORE = 0.5


def pseudo_as_results(coco: dict) -> list[dict]:
    """The arg-max pseudo masks as COCO results (duplicates under the duplicate rule left
    out), scored by their peak's CAM value."""
    return [{"image_id": a["image_id"], "category_id": a["category_id"],
             "segmentation": a["segmentation"], "score": float(a.get("score", 1.0))}
            for a in coco["annotations"] if not a.get("ignore", 0)]


def score_results(results: list[dict], ds: Dataset, split: str, source: str,
                  min_count_score: float = 0.0) -> dict[str, float]:
    by_image = parse_predictions(results, ds.records(split), ds.category_ids, source=source,
                                 split=split)
    metrics = evaluate_dataset(by_image, ds, split)
    err = count_error(by_image, ds.ground_truth(split), ds.records(split),
                      min_score=min_count_score)
    return {"mAP25": metrics["mAP25"], "mAP50": metrics["mAP50"], "mAP75": metrics["mAP75"],
            "ABO": metrics["ABO"], "count_error": err if err is not None else float("nan"),
            "instances": float(sum(len(v) for v in by_image.values())),
            "per_class_AP50": {k: v["AP50"] for k, v in metrics["per_class"].items()}}


def pseudo_quality(ds: Dataset, split: str, pseudo: str | Path | dict,
                   checkpoint: str | Path | None = None, device: str = "auto",
                   progress: bool = True, predictions: list[dict] | None = None) -> dict:
    """Table 3: ``pseudo_*`` (the pseudo masks) and, given a trained segmenter (or its
    ``predictions`` on the split), ``model_*`` (its predictions on the same images)."""
    coco = read_json(pseudo, "pseudo-label COCO JSON") if not isinstance(pseudo, dict) \
        else pseudo
    out: dict = {}
    # partially labelled images (pseudo.partial_labels) have pseudo masks but no true ones
    ids = {r.id for r in ds.records(split)}
    res = score_results([a for a in pseudo_as_results(coco) if a["image_id"] in ids], ds, split,
                        str(pseudo))
    out.update({f"pseudo_{k}": v for k, v in res.items()})
    if predictions is None and checkpoint is not None:
        from wiseseg.classifier.model_io import check_classes
        from wiseseg.engine.reproducibility import resolve_device
        from wiseseg.inference.predict import predict, records_as_items
        from wiseseg.segmenter.model_io import load_segmenter

        dev = resolve_device(device)
        model, _, classes, _ = load_segmenter(checkpoint, dev)
        check_classes(checkpoint, classes, ds.classes)
        recs = ds.records(split)
        predictions = predict(model, records_as_items(recs), ds.category_ids, device=dev,
                              total=len(recs), progress=progress, min_score=0.05)
    if predictions is not None:
        res = score_results(predictions, ds, split, "model predictions",
                            min_count_score=COUNT_MIN_SCORE)
        out.update({f"model_{k}": v for k, v in res.items()})
    return out
