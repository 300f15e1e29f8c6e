"""How good is a finished run's strongest peak of each labelled class, against all its peaks?

Reads RUN/peaks/peaks_<split>.json (the peaks the pseudo masks were made from, on the training
images, or the val peaks) and scores, with the ground truth of DATA, all peaks and only the
highest-scoring peak of each labelled class of an image (``wiseseg.classifier.metrics.
peak_quality``: recall = objects holding a peak of their class, precision = peaks inside an
object of their class). A low precision of the strongest peak says the CAM itself is off the
objects, not the peak thresholds.

usage: python benchmarks/peaks_top.py RUN DATA [--split train] [--name NAME]
Writes benchmarks/results/peaks_top_<name>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from wiseseg import api
from wiseseg.classifier.metrics import peak_quality
from wiseseg.classifier.peaks import read_peaks
from wiseseg.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def strongest(peaks: list[dict]) -> list[dict]:
    """The highest-scoring peak of each class among ``peaks``."""
    best: dict[int, dict] = {}
    for p in peaks:
        if p["class"] not in best or p["score"] > best[p["class"]]["score"]:
            best[p["class"]] = p
    return list(best.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("data")
    ap.add_argument("--split", default="train")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    ds = api.open_dataset(args.data, progress=False)
    recs = [r for r in ds.records(args.split)]
    gts = ds.ground_truth(args.split)
    recs = [r for r in recs if gts[r.id].instances]  # images with masks only
    by_id = read_peaks(Path(args.run) / "peaks" / f"peaks_{args.split}.json")["by_id"]
    rows = {"all peaks": peak_quality(by_id, gts, recs),
            "strongest peak of each labelled class":
                peak_quality({k: strongest(v) for k, v in by_id.items()}, gts, recs)}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    name = args.name or f"{Path(args.data).name}_{args.split}"
    atomic_write_json(ROOT / "benchmarks" / "results" / f"peaks_top_{name}.json",
                      {"commit": commit, "run": args.run, "data": args.data,
                       "split": args.split, "images": len(recs), "rows": rows}, indent=1)
    print(f"{args.data} {args.split}, {len(recs)} images with masks\n\n"
          "| peaks | recall | precision | peaks | objects |\n|---|---|---|---|---|")
    for k, q in rows.items():
        print(f"| {k} | {100 * q['peak_recall']:.1f} | {100 * q['peak_precision']:.1f} | "
              f"{q['peaks']} | {q['instances']} |")


if __name__ == "__main__":
    main()
