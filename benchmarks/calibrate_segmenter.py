"""How the Mask R-CNN trained on true masks responds to its schedule and capacity, on a
calibration part of the training split (never the split the tables report).

For every variant (``key=value`` overrides of the preset's ``segmenter`` section) it trains
the reference Mask R-CNN on ``<train>-fit`` with the ground-truth masks (`wiseseg
train-segmenter --masks gt`), predicts ``<train>-calib`` and scores it (`wiseseg evaluate`),
recording mAP25/50, the optimizer steps and the seconds of training and prediction. It
answers "what limits the Mask R-CNN on these photographs: steps, learning rate, capacity?",
the question the ``auto`` epoch rule (``wiseseg.autoconfig``) has to get right on real data.

usage: python benchmarks/calibrate_segmenter.py DATA [--preset cpu] [--seed 0]
           [--variants "" "segmenter.epochs=15" ...] [--name voc] [--out runs/calib-seg]
Writes benchmarks/results/calibrate_segmenter_<name>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from wiseseg.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def wiseseg(*args: str) -> str:
    cmd = [sys.executable, "-m", "wiseseg", *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return res.stdout + res.stderr


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=ROOT).stdout.strip()


def run_variant(data: str, preset: str, seed: int, variant: str, out: Path) -> dict:
    over = shlex.split(variant)
    common = ["--data", data, "--preset", preset, "-q"]
    t0 = time.time()
    log = wiseseg("train-segmenter", *common, "--seed", str(seed), "--masks", "gt",
                  "--split", "train-fit", "--out", str(out / "train"), "--no-resume", *over)
    t_train = time.time() - t0
    ckpt = out / "train" / "model.pt"
    t0 = time.time()
    wiseseg("predict", *common, "--split", "train-calib", "--checkpoint", str(ckpt),
            "--out", str(out / "calib.json"), *over)
    t_pred = time.time() - t0
    ev = json.loads(wiseseg("evaluate", "--data", data, "-q", "--split", "train-calib",
                            "--pred", str(out / "calib.json"), "--no-plots", "--json"))
    from wiseseg.segmenter.model_io import load_segmenter

    steps = int(load_segmenter(ckpt)[3].get("steps", 0))
    return {"variant": variant or "(base)", "seed": seed, "mAP25": ev["mAP25"],
            "mAP50": ev["mAP50"], "steps": steps, "train_seconds": round(t_train, 1),
            "predict_seconds": round(t_pred, 1),
            "auto": [ln for ln in log.splitlines() if ln.startswith("auto:")]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=[""])
    ap.add_argument("--name", default=None)
    ap.add_argument("--out", default="runs/calib-seg")
    args = ap.parse_args()
    name = args.name or Path(args.data).name
    dest = ROOT / "benchmarks" / "results" / f"calibrate_segmenter_{name}.json"
    prev = json.loads(dest.read_text()) if dest.is_file() else {}
    rows = [r for r in prev.get("rows", []) if r["variant"] not in
            {v or "(base)" for v in args.variants} or r["seed"] != args.seed]
    for i, variant in enumerate(args.variants):
        r = run_variant(args.data, args.preset, args.seed, variant,
                        Path(args.out) / name / f"seed{args.seed}" / f"v{i}")
        rows.append(r)
        print(f"{r['variant']}: mAP50 {100 * r['mAP50']:.1f} mAP25 {100 * r['mAP25']:.1f} "
              f"({r['steps']} steps, train {r['train_seconds']:.0f} s)", flush=True)
        atomic_write_json(dest, {"commit": commit(), "data": args.data, "preset": args.preset,
                                 "fit": "train-fit", "calib": "train-calib", "rows": rows})
    print("\n| variant | seed | mAP50 | mAP25 | steps | train s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['seed']} | {100 * r['mAP50']:.1f} | "
              f"{100 * r['mAP25']:.1f} | {r['steps']} | {r['train_seconds']:.0f} |")


if __name__ == "__main__":
    main()
