"""How a run's predicted masks miss: for each method's val predictions (PRM, WISE,
WISE+Refine, the reference), every prediction of score ≥ ``--min-score`` is paired with the
ground-truth object of its class in its image that it overlaps most; reported are the share of
predictions by best IoU (< 0.25, 0.25–0.5, ≥ 0.5) and the median ratio of the predicted to
the paired object's area, so "located but too large" can be told from "missed".

usage: python benchmarks/mask_sizes.py RUN_DIR [RUN_DIR ...] [--data shapes] [--min-score 0]
Writes benchmarks/results/mask_sizes.json and prints a markdown table (pooled over the runs).
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import numpy as np

from wiseseg import api, rle
from wiseseg.evaluation import load_predictions
from wiseseg.io import atomic_write_json

FILES = {"PRM": "prm/prm.json", "WISE": "predict_wise/wise.json",
         "WISE+Refine": "predict_wise/wise_refine.json",
         "Mask R-CNN (GT)": "predict_reference/reference.json"}


def pair_stats(preds_by_image, gts) -> tuple[np.ndarray, np.ndarray]:
    """Best IoU with a same-class object and predicted / object area, per prediction (NaN area
    ratio when the image holds no object of that class)."""
    ious, ratios = [], []
    for gt in (gts.values() if isinstance(gts, dict) else gts):
        for p in preds_by_image.get(gt.image_id, []):
            same = [i.segmentation for i in gt.instances if i.category == p.category]
            if not same:
                ious.append(0.0)
                ratios.append(np.nan)
                continue
            o = rle.iou([p.segmentation], same)[0]
            j = int(np.argmax(o))
            ious.append(float(o[j]))
            ratios.append(float(rle.area([p.segmentation])[0] / max(rle.area([same[j]])[0], 1)))
    return np.asarray(ious), np.asarray(ratios)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data", default="shapes")
    ap.add_argument("--split", default="val")
    ap.add_argument("--min-score", type=float, default=0.0)
    args = ap.parse_args()
    ds = api.open_dataset(args.data, progress=False)
    gts = ds.ground_truth(args.split)
    rows = {}
    for name, rel in FILES.items():
        ious, ratios = [], []
        for run in args.runs:
            path = Path(run) / rel
            if not path.is_file():
                continue
            preds = load_predictions(path, ds, args.split)
            preds = {k: [p for p in v if p.score >= args.min_score] for k, v in preds.items()}
            i, r = pair_stats(preds, gts)
            ious.append(i)
            ratios.append(r)
        if not ious:
            continue
        i, r = np.concatenate(ious), np.concatenate(ratios)
        located = (i >= 0.25) & (i < 0.5)
        rows[name] = {
            "predictions": int(i.size),
            "iou_below_0.25": float(np.mean(i < 0.25)) if i.size else None,
            "iou_0.25_to_0.5": float(np.mean(located)) if i.size else None,
            "iou_at_least_0.5": float(np.mean(i >= 0.5)) if i.size else None,
            "median_area_ratio": float(np.nanmedian(r)) if np.isfinite(r).any() else None,
            "median_area_ratio_0.25_to_0.5": (float(np.nanmedian(r[located]))
                                              if located.any() else None),
        }
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    atomic_write_json(Path("benchmarks/results/mask_sizes.json"),
                      {"commit": commit, "data": args.data, "split": args.split,
                       "runs": args.runs, "min_score": args.min_score, "rows": rows}, indent=1)
    print(f"commit {commit}; {args.data} {args.split}, {len(args.runs)} run(s), score ≥ "
          f"{args.min_score}\n")
    print("| method | predictions | IoU < 0.25 | 0.25–0.5 | ≥ 0.5 | median area / object | "
          "same, 0.25–0.5 |\n|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        def pct(k, r=r):
            return "—" if r[k] is None else f"{100 * r[k]:.1f}"

        def num(k, r=r):
            return "—" if r[k] is None else f"{r[k]:.2f}"
        print(f"| {name} | {r['predictions']} | {pct('iou_below_0.25')} | "
              f"{pct('iou_0.25_to_0.5')} | {pct('iou_at_least_0.5')} | "
              f"{num('median_area_ratio')} | {num('median_area_ratio_0.25_to_0.5')} |")


if __name__ == "__main__":
    main()
