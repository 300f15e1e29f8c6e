"""Test-time flip (``predict.flip``) on finished runs: the same trained Mask R-CNNs, their
validation split predicted on the image alone and on the image and its mirror, merged
(``wiseseg.models.flip_tta``).

For each run directory: WISE's and the reference's ``model.pt`` predict the run's val split
(a calibration run's ``train-calib``) with the run's ``predict`` settings, ``flip`` off and
on; WISE+Refine refines WISE's with the run's proposals; each is scored by wiseseg's
evaluator. Nothing is trained, so the rows differ only by the flip. The seconds of each
prediction are recorded (the flip runs the network twice per image).

usage: python benchmarks/predict_flip.py RUN [RUN ...] [--name NAME]
Writes benchmarks/results/predict_flip[_NAME].json and prints a markdown table with the
mean change of every row over the runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml
from gitinfo import commit  # noqa: E402  (benchmarks/, the script's folder)

from wiseseg import api
from wiseseg.evaluation import evaluate_predictions
from wiseseg.inference.predict import predict, records_as_items
from wiseseg.inference.refine import refine_all
from wiseseg.io import atomic_write_json
from wiseseg.proposals import ProposalStore
from wiseseg.segmenter.model_io import load_segmenter

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("mAP25", "mAP50", "mAP75", "ABO")
ROWS = ("WISE", "WISE+Refine", "Mask R-CNN (GT)")


def run_rows(run: Path) -> dict:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    ds = api.open_dataset(cfg["data"].get("spec") or cfg["data"]["root"], progress=False)
    split = cfg["data"]["val_split"]
    pc = cfg["predict"]
    store = ProposalStore.open(run / "proposals")
    out: dict = {"run": str(run), "val_split": split, "images": len(ds.records(split))}
    for flip in (False, True):
        rows, seconds = {}, {}
        for row, stage in (("WISE", "wise"), ("Mask R-CNN (GT)", "reference")):
            model, _, _, _ = load_segmenter(run / stage / "model.pt", "cpu")
            t0 = time.perf_counter()
            preds = predict(model, records_as_items(ds.records(split)), ds.category_ids,
                            batch_size=int(pc["batch_size"]),
                            mask_threshold=float(pc["mask_threshold"]),
                            min_score=float(pc["min_score"]), progress=False, flip=flip)
            seconds[row] = round(time.perf_counter() - t0, 1)
            rows[row] = evaluate_predictions(preds, ds, split)
            if row == "WISE":
                rows["WISE+Refine"] = evaluate_predictions(
                    refine_all(preds, store, float(pc["refine_min_iou"])), ds, split)
        out["flip" if flip else "plain"] = {
            "rows": {r: {m: round(100 * rows[r][m], 2) for m in METRICS} for r in ROWS},
            "predict_seconds": seconds}
        print(f"{run} flip={flip}: " + ", ".join(
            f"{r} {100 * rows[r]['mAP50']:.1f}" for r in ROWS), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--name", default="")
    args = ap.parse_args()
    torch.manual_seed(0)
    runs = [run_rows(r) for r in args.runs]
    deltas = {r: {m: [x["flip"]["rows"][r][m] - x["plain"]["rows"][r][m] for x in runs]
                  for m in METRICS} for r in ROWS}
    summary = {r: {m: {"mean_change": round(statistics.mean(v), 2),
                       "changes": [round(d, 2) for d in v]}
                   for m, v in ms.items()} for r, ms in deltas.items()}
    name = f"predict_flip_{args.name}" if args.name else "predict_flip"
    path = ROOT / "benchmarks" / "results" / f"{name}.json"
    atomic_write_json(path, {"commit": commit(), "threads": torch.get_num_threads(),
                             "time": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": runs,
                             "change_flip_minus_plain": summary})
    print("\n| run | row | mAP50 plain | mAP50 flip | mAP25 plain → flip | ABO plain → flip |")
    print("|---|---|---|---|---|---|")
    for x in runs:
        for r in ROWS:
            p, f = x["plain"]["rows"][r], x["flip"]["rows"][r]
            print(f"| {Path(x['run']).parent.name}/{Path(x['run']).name} ({x['val_split']}) "
                  f"| {r} | {p['mAP50']:.1f} | {f['mAP50']:.1f} | {p['mAP25']:.1f} → "
                  f"{f['mAP25']:.1f} | {p['ABO']:.1f} → {f['ABO']:.1f} |")
    print("\nmean change (flip − plain), mAP50: " + ", ".join(
        f"{r} {summary[r]['mAP50']['mean_change']:+.2f}" for r in ROWS))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
