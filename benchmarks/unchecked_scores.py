"""How confidently stage 1 says an unchecked class is present, from a finished run.

For every class that some training images leave unchecked (COCO image entries'
``unlabelled_classes``, as ``benchmarks/data/voc_samples.py`` writes them for the VOC
sample's image-level images), counts the images where it is unchecked and how many of them
stage 1 scores at or above each threshold (``class_scores`` of the run's
``peaks/peaks_<train split>.json``). This is what labelling those classes from stage 1
"where it is confident" would have to work with. Nothing is recomputed.

usage: python benchmarks/unchecked_scores.py RUN_DIR [RUN_DIR ...] --data DATA [--name NAME]
Writes benchmarks/results/unchecked_scores_<NAME>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.5, 0.7, 0.9)


def unchecked_by_image(data: Path) -> dict[int, set[str]]:
    """Image id → the class names its training entry leaves unchecked."""
    coco = json.loads((data / "annotations" / "instances_train.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    return {im["id"]: {names.get(c, c) if isinstance(c, int) else str(c)
                       for c in im["unlabelled_classes"]}
            for im in coco["images"] if im.get("unlabelled_classes")}


def count(run: Path, unchecked: dict[int, set[str]]) -> dict:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    split = cfg["data"]["train_split"]
    peaks = json.loads((run / "peaks" / f"peaks_{split}.json").read_text())
    classes = peaks["classes"]
    out: dict[str, dict] = {}
    for im in peaks["images"]:
        for name in unchecked.get(im["image_id"], ()):
            s = float(im["class_scores"][classes.index(name)])
            row = out.setdefault(name, {"images": 0, **{f">={t}": 0 for t in THRESHOLDS}})
            row["images"] += 1
            for t in THRESHOLDS:
                row[f">={t}"] += int(s >= t)
    return {"run": str(run), "split": split, "classifier_unlabelled_classes":
            cfg["classifier"].get("unlabelled_classes", "ignore"),
            "classes": dict(sorted(out.items()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--name", default="voc")
    args = ap.parse_args()
    unchecked = unchecked_by_image(args.data)
    result = [count(r, unchecked) for r in args.runs]
    out = ROOT / "benchmarks" / "results" / f"unchecked_scores_{args.name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    head = " | ".join(f"≥ {t}" for t in THRESHOLDS)
    print(f"| run | stage 1 on unchecked | class | images | {head} |")
    print("|---|---|---|---|" + "---|" * len(THRESHOLDS))
    for r in result:
        for name, row in r["classes"].items():
            cells = " | ".join(str(row[f">={t}"]) for t in THRESHOLDS)
            print(f"| {Path(r['run']).name} | {r['classifier_unlabelled_classes']} | {name} | "
                  f"{row['images']} | {cells} |")
    print(f"\nwritten {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
