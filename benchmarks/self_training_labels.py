"""How good are the labels a self-training round trains on? (``segmenter.rounds``,
``segmenter.self_training_score``)

Self-training relabels WISE's *own training images*: round 2 trains on round 1's predictions
on them with score ≥ ``self_training_score`` (a class without such a prediction keeps its
pseudo masks, :func:`wiseseg.pseudo.self_training.relabel`). So the quantity to calibrate
is the quality of those labels on the training images — never val. For finished runs this
script predicts once with the run's round-1 Mask R-CNN (``RUN/wise/round1/model.pt``) on the
training images that have true masks (Table 3's images: the only ones scored, and each
image's labels depend on its own predictions only), builds round 2's labels for each
threshold, and scores them against those true masks, as the
Mask R-CNN sees them: each image's labels drawn as in training (Eq. 1 draw, duplicate rule,
``--draws`` draws per image), each drawn mask matched one-to-one at IoU ≥ 0.5 by the
evaluator's rule (:func:`wiseseg.evaluation.matching.match_image`; masks mostly on VOC's
void border are ignored). The round-1 pseudo masks are the first row.

usage: python benchmarks/self_training_labels.py RUN [RUN …] --thresholds 0.5 0.3 0.1
           [--draws 5] --name NAME
→ benchmarks/results/self_training_labels_NAME.json and .md (predictions are kept in
``RUN/wise/round1/train_predictions_all.json`` so that a rerun only rescores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from gitinfo import commit  # benchmarks/, the script's folder

from wiseseg import api
from wiseseg.config import load_config
from wiseseg.evaluation.matching import FP, TP, match_image
from wiseseg.evaluation.overlaps import image_overlaps
from wiseseg.evaluation.predictions import Prediction
from wiseseg.io import atomic_write_json, atomic_write_text, read_json
from wiseseg.pseudo.labels import pseudo_view, read_pseudo
from wiseseg.pseudo.quality import score_results
from wiseseg.pseudo.sampling import draw_instances
from wiseseg.pseudo.self_training import relabel

#: predictions below this score are not kept (the lowest threshold measured must be ≥ it)
MIN_SCORE = 0.05


def round1_predictions(run: Path, ds, cfg: dict, records) -> list[dict]:
    """Round 1's predictions (score ≥ :data:`MIN_SCORE`) on ``records``, computed once."""
    path = run / "wise" / "round1" / "train_predictions_all.json"
    if path.is_file():
        return read_json(path, "predictions")
    from wiseseg.engine.reproducibility import resolve_device
    from wiseseg.inference.predict import predict, records_as_items
    from wiseseg.models.freezing import fold_batchnorm
    from wiseseg.segmenter.model_io import load_segmenter

    dev = resolve_device(cfg.get("device", "auto"))
    model, _, _, _ = load_segmenter(run / "wise" / "round1" / "model.pt", dev)
    model.backbone.body = fold_batchnorm(model.backbone.body)  # as the run predicts
    preds = predict(model, records_as_items(records), ds.category_ids, device=dev,
                    batch_size=int(cfg["predict"]["batch_size"]), mask_threshold=0.5,
                    min_score=MIN_SCORE, total=len(records), progress=True)
    atomic_write_json(path, preds)
    return preds


def label_quality(labels: dict, ds, split: str, draws: int, dup_iou: float,
                  seed: int = 0) -> dict:
    """Precision, recall and F1 (IoU ≥ 0.5) of the labels as drawn in training, on the
    images of ``split`` with true masks; means over ``draws`` draws per image."""
    gt = ds.ground_truth(split)
    tp = fp = n_gt = 0
    n_labels = 0
    for rec in ds.records(split):
        img = labels.get(rec.id)
        g = gt[rec.id]
        n_gt += len(g.instances) * draws
        for d in range(draws):
            rng = np.random.default_rng([seed, rec.id, d])
            drawn = draw_instances(img, rng, "sample", dup_iou) if img is not None else []
            n_labels += len(drawn)
            preds = [Prediction(x.category, x.segmentation, 1.0, k)
                     for k, x in enumerate(drawn)]
            status = match_image(image_overlaps(preds, g, rec.height, rec.width), 0.5)
            tp += int((status == TP).sum())
            fp += int((status == FP).sum())
    p = tp / max(1, tp + fp)
    r = tp / max(1, n_gt)
    return {"precision": round(100 * p, 1), "recall": round(100 * r, 1),
            "f1": round(100 * (2 * p * r / (p + r) if p + r > 0 else 0.0), 1),
            "labels_per_image": round(n_labels / max(1, draws * len(ds.records(split))), 2)}


def measure_run(run: Path, thresholds: list[float], draws: int) -> dict:
    cfg = load_config(run / "config.yaml")
    ds = api.open_dataset(cfg["data"]["spec"], progress=False)
    api._add_negatives(ds, cfg)
    split_name = cfg["data"]["train_split"]
    pseudo_path = run / "pseudo" / "pseudo.json"
    split = pseudo_view(pseudo_path, ds, split_name)
    labels = read_pseudo(pseudo_path, split, ds.category_ids)
    t0 = time.perf_counter()
    preds = round1_predictions(run, ds, cfg, ds.records(split_name))
    dup = float(cfg["segmenter"].get("dup_iou", 0.8))
    rows = [{"labels": "round 1: pseudo masks", **label_quality(labels, ds, split_name,
                                                                draws, dup)}]
    for t in thresholds:
        if t < MIN_SCORE:
            raise SystemExit(f"threshold {t} below the predictions' floor {MIN_SCORE}")
        new, st = relabel(labels, preds, split.records, ds.category_ids, t)
        rows.append({"labels": f"round 2, self_training_score {t}", "threshold": t,
                     **st.as_dict(), **label_quality(new, ds, split_name, draws, dup)})
    m = read_json(run / "metrics.json", "metrics") if (run / "metrics.json").is_file() else {}
    # round 1's own predictions scored as Table 3 scores the final model's (mAP50, %)
    round1 = score_results(preds, ds, split_name, "round-1 predictions")["mAP50"]
    return {"run": str(run), "data": cfg["data"]["spec"], "seed": cfg.get("seed"),
            "run_self_training_score": cfg["segmenter"].get("self_training_score"),
            "train_images_with_masks": len(ds.records(split_name)),
            "predictions": len(preds), "seconds": round(time.perf_counter() - t0, 1),
            "table3": {"round1_model_mAP50": round(100 * round1, 1),
                       **{k: m.get("pseudo_quality", {}).get(k)
                          for k in ("pseudo_mAP50", "model_mAP50")}},
            "rows": rows}


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def markdown(out: dict) -> str:
    lines = [f"# Self-training labels on the training images ({out['name']}, commit "
             f"{out['commit']})", "", f"`{out['command']}`", "",
             "Labels as drawn in training (Eq. 1, duplicate rule; "
             f"{out['draws']} draws per image), matched one-to-one at IoU ≥ 0.5 against the "
             "true masks of the training images that have them. P / R / F1 in %.", ""]
    for r in out["runs"]:
        t3 = r["table3"]
        lines += [f"## {r['data']} seed {r['seed']} (`{r['run']}`)", "",
                  f"Table 3 on the same images, mAP50: the run's pseudo masks "
                  f"{_pct(t3['pseudo_mAP50'])}, round 1's predictions "
                  f"{t3['round1_model_mAP50']}, the final (last round's) model's "
                  f"{_pct(t3['model_mAP50'])}.", "",
                  "| labels | precision | recall | F1 | labels / image | from predictions | "
                  "kept previous |", "|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            lines.append(f"| {row['labels']} | {row['precision']} | {row['recall']} | "
                         f"{row['f1']} | {row['labels_per_image']} | "
                         f"{row.get('from_predictions', '')} | {row.get('kept_previous', '')} |")
        lines.append("")
    return "\n".join(lines)


def write_results(stem: str, out: dict, text: str) -> None:
    """``benchmarks/results/STEM.json`` (``out``) and ``STEM.md`` (``text``, also printed)."""
    res = Path(__file__).parent / "results"
    atomic_write_json(res / f"{stem}.json", out, indent=1)
    atomic_write_text(res / f"{stem}.md", text + "\n")
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.4, 0.3, 0.2, 0.1])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--name", required=True)
    args = ap.parse_args()
    out = {"name": args.name, "commit": commit(),
           "command": "python benchmarks/self_training_labels.py " + " ".join(sys.argv[1:]),
           "draws": args.draws, "thresholds": args.thresholds,
           "runs": [measure_run(r, args.thresholds, args.draws) for r in args.runs]}
    write_results(f"self_training_labels_{args.name}", out, markdown(out))


if __name__ == "__main__":
    main()
