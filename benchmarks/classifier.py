"""Stage-1 quality on shapes val: image-level classification mAP, peak recall / precision,
count MAE (paper Table 3's second metric), and the training time.

usage: python benchmarks/classifier.py [--data shapes] [--preset cpu] [--out DIR] [key=value ...]
Prints a markdown table and writes benchmarks/results/classifier.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from wiseseg import api
from wiseseg.autoconfig import resolve_auto
from wiseseg.classifier.metrics import peak_quality
from wiseseg.classifier.model_io import load_classifier
from wiseseg.classifier.peaks import compute_peaks
from wiseseg.classifier.train import ClassifierData, classification_map, train_classifier
from wiseseg.io import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="shapes")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--out", default="runs/bench-classifier")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    ds = api.open_dataset(args.data)
    cfg = api.load_config(args.preset, args.overrides)
    cfg, _ = resolve_auto(cfg, ds, "train")  # `auto` settings follow the data, as a run
    out = Path(args.out)
    t0 = time.time()
    path = train_classifier(ds.weak("train"), cfg["classifier"], out, seed=cfg["seed"],
                            resume=False)
    train_s = time.time() - t0
    model, ccfg, _ = load_classifier(path)
    cls_map = classification_map(model, ClassifierData(ds.weak("val"), ccfg["input_size"]),
                                 "cpu")
    t0 = time.time()
    peaks = compute_peaks(model, ds.weak("val"), ccfg["input_size"], cfg["peaks"],
                          category_ids=ds.category_ids)
    peak_s = time.time() - t0
    by_id = {im["image_id"]: im["peaks"] for im in peaks["images"]}
    q = peak_quality(by_id, ds.ground_truth("val"), ds.records("val"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    res = {"commit": commit, "data": args.data, "preset": args.preset,
           "overrides": args.overrides, "train_seconds": round(train_s, 1),
           "peaks_seconds": round(peak_s, 1), "val_classification_mAP": cls_map, **q}
    atomic_write_json(Path("benchmarks/results/classifier.json"), res, indent=2)
    print("| metric | value |\n|---|---|")
    for k in ("val_classification_mAP", "peak_recall", "peak_precision", "count_mae",
              "train_seconds"):
        v = res[k]
        print(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
