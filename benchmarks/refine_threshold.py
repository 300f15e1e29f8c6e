"""When should WISE+Refine replace a predicted mask by a proposal? (``predict.refine_min_iou``)

For each finished run — a calibration run, whose val split is ``train-calib`` carved from the
training split, never a reported val split — WISE's own predictions on that split
(``RUN/predict_wise/wise.json``) are refined with the run's proposals at every threshold given
(a mask is replaced by the proposal of highest IoU with it when that IoU is ≥ the threshold;
0 refines every mask, as the paper) and scored by wiseseg's evaluator. Nothing is trained or
predicted again, so the rows differ only by the threshold.

usage: python benchmarks/refine_threshold.py RUN [RUN ...] [--thresholds 0 0.3 0.5 0.7 0.8]
           [--name NAME]
→ benchmarks/results/refine_threshold[_NAME].json and .md: per run, WISE and WISE+Refine at
each threshold (mAP50, mAP25, share of masks replaced), and the mean over runs of
WISE+Refine − WISE.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import yaml
from gitinfo import commit  # benchmarks/, the script's folder

from wiseseg import api
from wiseseg.evaluation import evaluate_predictions
from wiseseg.inference.refine import refine_all, refine_summary
from wiseseg.io import atomic_write_json, read_json
from wiseseg.proposals import ProposalStore

ROOT = Path(__file__).resolve().parents[1]


def run_rows(run: Path, thresholds: list[float]) -> dict:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    ds = api.open_dataset(cfg["data"].get("spec") or cfg["data"]["root"], progress=False)
    split = cfg["data"]["val_split"]
    preds = read_json(run / "predict_wise" / "wise.json", "WISE predictions")
    store = ProposalStore.open(run / "proposals")
    base = evaluate_predictions(preds, ds, split)
    out = {"run": str(run), "data": str(cfg["data"].get("spec") or cfg["data"]["root"]),
           "seed": cfg.get("seed"), "val_split": split, "images": len(ds.records(split)),
           "WISE": {"mAP50": round(100 * base["mAP50"], 2),
                    "mAP25": round(100 * base["mAP25"], 2)}, "refine": {}}
    for t in thresholds:
        refined = refine_all(preds, store, t)
        m = evaluate_predictions(refined, ds, split)
        s = refine_summary(refined)
        out["refine"][f"{t:g}"] = {"mAP50": round(100 * m["mAP50"], 2),
                                   "mAP25": round(100 * m["mAP25"], 2),
                                   "replaced": round(s["refined"] / max(1, s["predictions"]), 3)}
    print(f"{run}: WISE {out['WISE']['mAP50']}, " + ", ".join(
        f"refine ≥ {t} {v['mAP50']}" for t, v in out["refine"].items()), flush=True)
    return out


def markdown(res: dict) -> str:
    ts = res["thresholds"]
    lines = [f"# refine_threshold {res['name']} (commit {res['commit']})", "",
             f"`{res['command']}`", "",
             "mAP50 on each run's val split (a calibration part of its training split); in "
             "brackets the share of masks replaced.", "",
             "| run | val images | WISE | " + " | ".join(f"Refine ≥ {t:g}" for t in ts) + " |",
             "|---|---|---|" + "---|" * len(ts)]
    for r in res["runs"]:
        cells = [f"{r['refine'][f'{t:g}']['mAP50']} ({r['refine'][f'{t:g}']['replaced']:.0%})"
                 for t in ts]
        lines.append(f"| {r['data']} seed {r['seed']} | {r['images']} | {r['WISE']['mAP50']} | "
                     + " | ".join(cells) + " |")
    lines.append("| **mean of Refine − WISE** | | | " + " | ".join(
        f"{res['mean_gain'][f'{t:g}']:+.2f}" for t in ts) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7, 0.8])
    ap.add_argument("--name", default="")
    args = ap.parse_args()
    runs = [run_rows(r, args.thresholds) for r in args.runs]
    gain = {f"{t:g}": round(statistics.mean(r["refine"][f"{t:g}"]["mAP50"] - r["WISE"]["mAP50"]
                                            for r in runs), 2) for t in args.thresholds}
    name = f"refine_threshold_{args.name}" if args.name else "refine_threshold"
    res = {"name": name, "commit": commit(), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
           "command": "python benchmarks/refine_threshold.py " + " ".join(sys.argv[1:]),
           "thresholds": args.thresholds, "runs": runs, "mean_gain": gain}
    out = ROOT / "benchmarks" / "results" / name
    atomic_write_json(out.with_suffix(".json"), res, indent=1)
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
