"""Quality benchmark: the whole pipeline (``wiseseg run``) for several seeds; mean ± std per
row of the paper's Table 1, the pseudo-mask analysis (Table 3), peak quality, the effect of
the refinement threshold, wall time and peak memory.

usage: python benchmarks/quality.py [--data shapes] [--preset cpu] [--seeds 0 1 2]
                                    [--out runs/bench-quality] [--name NAME] [key=value ...]
Prints markdown tables and writes benchmarks/results/quality.json (quality_NAME.json with
--name, e.g. for a variant of the data).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import time
from pathlib import Path

import numpy as np

from wiseseg import api
from wiseseg.evaluation import evaluate_predictions
from wiseseg.inference.refine import refine_all
from wiseseg.io import atomic_write_json, read_json
from wiseseg.proposals import ProposalStore

ROWS = ("PRM", "WISE", "WISE+Refine", "Mask R-CNN (GT)")
METRICS = ("mAP25", "mAP50", "mAP75", "ABO")
REFINE_THRESHOLDS = (0.0, 0.3, 0.5, 0.7)


def _fmt(values: list[float]) -> str:
    """Percent, mean ± sample standard deviation (ddof = 1) over the seeds."""
    a = 100 * np.asarray(values, dtype=float)
    return f"{a.mean():.1f} ± {a.std(ddof=1):.1f}" if len(a) > 1 else f"{a.mean():.1f}"


def refine_sweep(run_dir: Path, ds, split: str) -> dict[str, float]:
    """WISE+Refine mAP50 for several ``min_iou`` thresholds on one run's predictions."""
    preds = read_json(run_dir / "predict_wise" / "wise.json")
    store = ProposalStore.open(run_dir / "proposals")
    return {str(t): evaluate_predictions(refine_all(preds, store, t), ds, split)["mAP50"]
            for t in REFINE_THRESHOLDS}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="shapes")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/bench-quality")
    ap.add_argument("--name", default=None, help="results file quality_NAME.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    ds = api.open_dataset(args.data)
    per_seed = []
    for seed in args.seeds:
        cfg = api.load_config(args.preset, [*args.overrides, f"seed={seed}"])
        t0 = time.time()
        res = api.run_pipeline(ds, cfg, Path(args.out) / f"seed{seed}", data_spec=args.data)
        wall = time.time() - t0
        m = res.metrics
        per_seed.append({
            "seed": seed, "wall_seconds": round(wall, 1), "results": m["results"],
            "pseudo_quality": m["pseudo_quality"], "peaks": m["peaks"],
            "stage_seconds": {k: v["seconds"] for k, v in m["stages"].items()},
            "refine_sweep": refine_sweep(res.run_dir, ds, cfg["data"]["val_split"]),
        })
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    out = {"commit": commit, "data": args.data, "preset": args.preset,
           "overrides": args.overrides, "seeds": per_seed,
           "peak_rss_mb": round(rss, 1), "peak_rss_children_mb": round(rss_children, 1)}
    name = f"quality_{args.name}.json" if args.name else "quality.json"
    atomic_write_json(Path("benchmarks/results") / name, out, indent=2)

    print(f"commit {commit}, {args.data}, preset {args.preset}, seeds {args.seeds}\n")
    print("| Method | " + " | ".join(METRICS) + " |\n|---|" + "---|" * len(METRICS))
    for row in ROWS:
        if all(row in s["results"] for s in per_seed):
            print(f"| {row} | " + " | ".join(_fmt([s["results"][row][k] for s in per_seed])
                                              for k in METRICS) + " |")
    mean = {row: np.mean([s["results"][row]["mAP50"] for s in per_seed])
            for row in ROWS if all(row in s["results"] for s in per_seed)}
    if {"WISE", "Mask R-CNN (GT)", "PRM", "WISE+Refine"} <= set(mean):
        print(f"\nWISE / GT mAP50 = {mean['WISE'] / max(mean['Mask R-CNN (GT)'], 1e-9):.2f} "
              f"(target ≥ 0.8); WISE / PRM = {mean['WISE'] / max(mean['PRM'], 1e-9):.2f} "
              f"(target ≥ 1.5); WISE+Refine − WISE = "
              f"{100 * (mean['WISE+Refine'] - mean['WISE']):+.1f} (target ≥ 0)")
    pq = [s["pseudo_quality"] for s in per_seed if s["pseudo_quality"]]
    if pq:
        print("\n| Table 3 (train split) | mAP50 | count error |\n|---|---|---|")
        print(f"| pseudo masks | {_fmt([q['pseudo_mAP50'] for q in pq])} | "
              f"{np.mean([q['pseudo_count_error'] for q in pq]):.2f} |")
        print(f"| WISE predictions | {_fmt([q['model_mAP50'] for q in pq])} | "
              f"{np.mean([q['model_count_error'] for q in pq]):.2f} |")
    pk = [s["peaks"].get("val") for s in per_seed if s["peaks"] and s["peaks"].get("val")]
    if pk:
        print(f"\npeaks (val): recall {_fmt([p['peak_recall'] for p in pk])}, precision "
              f"{_fmt([p['peak_precision'] for p in pk])}, count MAE "
              f"{np.mean([p['count_mae'] for p in pk]):.2f}")
    print("\n| refine min IoU | " + " | ".join(map(str, REFINE_THRESHOLDS)) + " |\n|---|"
          + "---|" * len(REFINE_THRESHOLDS))
    print("| WISE+Refine mAP50 | " + " | ".join(
        _fmt([s["refine_sweep"][str(t)] for s in per_seed]) for t in REFINE_THRESHOLDS) + " |")
    walls = [s["wall_seconds"] for s in per_seed]
    print(f"\nwall time per run: {np.mean(walls):.0f} s (min {min(walls):.0f}, max "
          f"{max(walls):.0f}); peak RSS {rss:.0f} MB (workers {rss_children:.0f} MB)")
    print(json.dumps({"stage_seconds_seed0": per_seed[0]["stage_seconds"]}))


if __name__ == "__main__":
    main()
