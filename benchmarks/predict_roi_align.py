"""Prediction time of a trained Mask R-CNN with torchvision's RoIAlign forward and with
wiseseg's separable form (``wiseseg.models.roi_align``, used without autograd on small maps):
the same detections, seconds per image.

usage: python benchmarks/predict_roi_align.py RUN [--split train] [--images 200]
                                              [--rounds 3] [--threads 2] [--out FILE]

Predicts from the run's cached-body path (``predict_from_body``: the heads only, as WISE's
self-training and Table 3 do on the shapes) with ``RUN/wise/model.pt``; the two forms
alternate over ``--rounds`` rounds (medians). Writes benchmarks/results/predict_roi_align.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch

import wiseseg.models.roi_align as ra
from wiseseg import api
from wiseseg.config import load_config
from wiseseg.inference.predict import body_cache, predict_from_body
from wiseseg.io import atomic_write_json
from wiseseg.segmenter.model_io import load_segmenter

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--split", default="train")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/predict_roi_align.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    ds = api.open_dataset(load_config(run / "config.yaml")["data"]["spec"])
    recs = list(ds.records(args.split))[: args.images]
    model, _, _, _ = load_segmenter(run / "wise" / "model.pt", "cpu")
    cache = body_cache(model, recs, "cpu", None, progress=False)
    separable_max = ra.SEPARABLE_MAX_CELLS
    forms = {"torchvision": 0, "separable": separable_max}
    seconds: dict[str, list[float]] = {k: [] for k in forms}
    results = {}
    for _ in range(args.rounds):
        for name, cells in forms.items():
            ra.SEPARABLE_MAX_CELLS = cells  # 0: every map takes torchvision's forward
            t0 = time.perf_counter()
            results[name] = predict_from_body(model, recs, cache, ds.category_ids,
                                              batch_size=8, min_score=0.05, progress=False)
            seconds[name].append(time.perf_counter() - t0)
    ra.SEPARABLE_MAX_CELLS = separable_max
    a, b = results["torchvision"], results["separable"]
    same = len(a) == len(b) and all(x["segmentation"] == y["segmentation"]
                                    and x["category_id"] == y["category_id"]
                                    for x, y in zip(a, b))
    score_diff = max((abs(x["score"] - y["score"]) for x, y in zip(a, b)), default=0.0)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    out = {"commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip(),
           "run": str(run), "split": args.split, "images": len(recs),
           "threads": args.threads, "rounds": args.rounds,
           "load_before": [round(v, 2) for v in os.getloadavg()],
           "seconds_per_image": {k: round(v / len(recs), 4) for k, v in med.items()},
           "seconds_all": {k: [round(t, 2) for t in v] for k, v in seconds.items()},
           "speedup": round(med["torchvision"] / med["separable"], 2),
           "detections": len(b), "same_masks_and_classes": same,
           "max_score_difference": score_diff}
    atomic_write_json(args.out, out)
    print(f"{len(recs)} {args.split} images: torchvision "
          f"{1000 * med['torchvision'] / len(recs):.1f} ms / image, separable "
          f"{1000 * med['separable'] / len(recs):.1f} ms / image "
          f"({out['speedup']:.2f}×); same masks and classes: {same}, "
          f"largest score difference {score_diff:.1e}")


if __name__ == "__main__":
    main()
