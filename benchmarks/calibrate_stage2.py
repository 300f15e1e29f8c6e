"""Choose pseudo-mask and Mask R-CNN settings on a calibration part of the training split.

The whole pipeline (`wiseseg run`) trains on ``<train>-fit`` and is evaluated on
``<train>-calib`` (a seeded 15 % of the training images, never the split the tables report),
once per variant, in one run directory: the pipeline's cache reruns only the stages a
variant's settings reach (a pseudo-mask setting does not retrain the classifier or the
reference Mask R-CNN). For every variant it records Table 1 on the calibration images
(WISE, WISE+Refine and the reference's mAP50, WISE / reference), Table 3 on the fit images
(pseudo masks against WISE's own predictions: does Mask R-CNN clean its labels?) and the
seconds of the stages it ran; the WISE+Refine threshold sweep is scored on the calibration
images too.

usage: python benchmarks/calibrate_stage2.py [--data shapes] [--preset cpu] [--seeds 0]
           [--base "k=v ..."] [--variants "" "segmenter.mode=argmax" ...] [--name shapes]
Writes benchmarks/results/calibrate_stage2_<name>.json and prints a markdown table.
DATA/negatives, when it exists, is passed as data.negatives (as benchmarks/real.py does).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import time
from pathlib import Path

import numpy as np

from wiseseg import api
from wiseseg.evaluation import evaluate_predictions
from wiseseg.inference.refine import refine_all
from wiseseg.io import atomic_write_json, read_json
from wiseseg.proposals import ProposalStore

REFINE_THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def refine_sweep(run_dir: Path, ds, split: str) -> dict[str, float]:
    preds = read_json(run_dir / "predict_wise" / "wise.json")
    store = ProposalStore.open(run_dir / "proposals")
    return {str(t): evaluate_predictions(refine_all(preds, store, t), ds, split)["mAP50"]
            for t in REFINE_THRESHOLDS}


def row(variant: str, seed: int, metrics: dict, sweep: dict, wall: float) -> dict:
    res, pq = metrics["results"], metrics.get("pseudo_quality") or {}
    wise, gt = res["WISE"]["mAP50"], res["Mask R-CNN (GT)"]["mAP50"]
    return {"variant": variant or "(base)", "seed": seed, "wall_seconds": round(wall, 1),
            "ran": metrics["run"]["ran"],
            "PRM": res["PRM"]["mAP50"], "WISE": wise, "WISE+Refine": res["WISE+Refine"]["mAP50"],
            "GT": gt, "ratio": wise / gt if gt else float("nan"),
            "pseudo_fit_mAP50": pq.get("pseudo_mAP50"), "wise_fit_mAP50": pq.get("model_mAP50"),
            "refine_sweep": sweep}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="shapes")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--base", default="", help="overrides shared by every variant")
    ap.add_argument("--variants", nargs="+", default=[""])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default="runs/calibrate-stage2")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    ds = api.open_dataset(args.data, progress=False)
    name = args.name or ds.name
    neg = Path(args.data) / "negatives"  # as benchmarks/real.py: DATA/negatives joins stage 1
    negatives = [f"data.negatives={neg}"] if neg.is_dir() else []
    rows = []
    for seed in args.seeds:
        run_dir = Path(args.out) / name / f"seed{seed}"
        for variant in args.variants:
            cfg = api.load_config(args.preset, [
                *negatives, *shlex.split(args.base), *shlex.split(variant), f"seed={seed}",
                "data.train_split=train-fit", "data.val_split=train-calib"])
            t0 = time.time()
            res = api.run_pipeline(ds, cfg, run_dir, data_spec=args.data, progress=False)
            r = row(variant, seed, res.metrics, refine_sweep(run_dir, ds, "train-calib"),
                    time.time() - t0)
            rows.append(r)
            print(f"seed {seed} {r['variant']}: WISE {100 * r['WISE']:.1f} GT "
                  f"{100 * r['GT']:.1f} (ratio {r['ratio']:.2f}) refine "
                  f"{100 * r['WISE+Refine']:.1f} PRM {100 * r['PRM']:.1f}; fit: pseudo "
                  f"{100 * (r['pseudo_fit_mAP50'] or 0):.1f} → WISE "
                  f"{100 * (r['wise_fit_mAP50'] or 0):.1f}; ran {', '.join(r['ran'])} in "
                  f"{r['wall_seconds']:.0f} s", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    atomic_write_json(Path(f"benchmarks/results/calibrate_stage2_{name}.json"),
                      {"commit": commit, "data": args.data, "preset": args.preset,
                       "base": args.base, "rows": rows}, indent=1)
    print(f"\ncommit {commit}; {args.data}, fit → calib, base `{args.base}`\n")
    print("| variant | WISE | WISE+Refine | GT | WISE/GT | PRM | pseudo (fit) | WISE (fit) |"
          "\n|---|---|---|---|---|---|---|---|")
    for v in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == v]

        def m(k, rs=rs):
            return 100 * np.mean([r[k] or 0 for r in rs])
        print(f"| {v} | {m('WISE'):.1f} | {m('WISE+Refine'):.1f} | {m('GT'):.1f} | "
              f"{np.mean([r['ratio'] for r in rs]):.2f} | {m('PRM'):.1f} | "
              f"{m('pseudo_fit_mAP50'):.1f} | {m('wise_fit_mAP50'):.1f} |")
    print("\n| refine min IoU | " + " | ".join(map(str, REFINE_THRESHOLDS)) + " |\n|---|"
          + "---|" * len(REFINE_THRESHOLDS))
    for v in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == v]
        print(f"| {v} | " + " | ".join(
            f"{100 * np.mean([r['refine_sweep'][str(t)] for r in rs]):.1f}"
            for t in REFINE_THRESHOLDS) + " |")


if __name__ == "__main__":
    main()
