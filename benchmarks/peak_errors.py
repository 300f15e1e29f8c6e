"""Where a finished run's peaks go wrong: where each false peak lands, why each object is missed.

Reads RUN/peaks/peaks_<split>.json and the ground truth of DATA and sorts, with the matching of
``wiseseg.classifier.metrics.peak_quality`` (a peak is right when it lies in an object of its
class; an object is found when it holds one):

- each false peak: in an object of another class; in the ignore region (VOC's void border
  around objects, COCO crowds), which the matching counts as false; in the background within
  16 px of an object of its class; in the background farther away, or with no object of its
  class in the image;
- each missed object: its class has no peak in the image; the class's peaks found another
  object of the class (crowds, several small objects); or they all lie outside any object of
  the class;
- the object area (share of the image) of found and missed objects, the (image, labelled
  class) pairs that get no peak, and recall / precision by class.

A diagnosis of a finished run, not a choice: nothing is tuned on it.

usage: python benchmarks/peak_errors.py RUN DATA [--split val] [--name NAME]
Writes benchmarks/results/peak_errors_<name>.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np

from wiseseg import api, rle
from wiseseg.classifier.peaks import read_peaks
from wiseseg.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
NEAR_PX = 16  # a CAM cell at the preset's stride


def sort_image(peaks: list[dict], masks: np.ndarray, cats: np.ndarray,
               ignore: np.ndarray | None) -> tuple[Counter, Counter, np.ndarray]:
    """``(false peaks by place, missed objects by cause, found flag per object)`` of one image.

    ``masks`` bool ``N×H×W`` (may be ``0×H×W``), ``cats`` int ``N`` class indices, ``ignore``
    bool ``H×W`` or None; peaks: dicts with ``class``, ``y``, ``x`` (pixel row / column)."""
    false, missed = Counter(), Counter()
    found = np.zeros(len(cats), bool)
    for p in peaks:
        y, x, c = p["y"], p["x"], p["class"]
        inside = masks[:, y, x] if len(cats) else np.zeros(0, bool)
        same = inside & (cats == c)
        if same.any():
            found |= same
            continue
        if inside.any():
            false["another class's object"] += 1
        elif ignore is not None and ignore[y, x]:
            false["ignore region (void border)"] += 1
        elif (cats == c).any():
            yy, xx = np.nonzero(masks[cats == c].any(0))
            near = np.sqrt(((yy - y) ** 2 + (xx - x) ** 2).min()) < NEAR_PX
            false[f"background, < {NEAR_PX} px from an object of its class" if near
                  else "background, farther from objects of its class"] += 1
        else:
            false["background, no object of its class in the image"] += 1
    classes_with_peaks = {p["class"] for p in peaks}
    for j in np.nonzero(~found)[0]:
        c = cats[j]
        if c not in classes_with_peaks:
            missed["its class has no peak in the image"] += 1
        elif found[cats == c].any():
            missed["its class's peaks found another object of the class"] += 1
        else:
            missed["its class's peaks are all off the class's objects"] += 1
    return false, missed, found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("data")
    ap.add_argument("--split", default="val")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    ds = api.open_dataset(args.data, progress=False)
    gts = ds.ground_truth(args.split)
    peaks_file = read_peaks(Path(args.run) / "peaks" / f"peaks_{args.split}.json")
    by_id, classes = peaks_file["by_id"], peaks_file["classes"]
    false, missed = Counter(), Counter()
    area = {"found": [], "missed": []}
    per_class = {c: Counter() for c in range(len(classes))}
    pairs = unpeaked = 0  # (image, labelled class) pairs, and those without a peak
    for r in ds.records(args.split):
        gt, peaks = gts[r.id], list(by_id.get(r.id, []))
        shape = (r.height, r.width)
        masks = rle.decode_many([i.segmentation for i in gt.instances], shape).astype(bool) \
            if gt.instances else np.zeros((0, *shape), bool)
        cats = np.array([i.category for i in gt.instances], dtype=int)
        ignore = rle.decode(gt.ignore).astype(bool) if gt.ignore is not None else None
        f, m, found = sort_image(peaks, masks, cats, ignore)
        pairs += len(r.labels)
        unpeaked += len(set(r.labels) - {p["class"] for p in peaks})
        false += f
        missed += m
        for j, c in enumerate(cats):
            area["found" if found[j] else "missed"].append(float(masks[j].mean()))
            per_class[c]["objects"] += 1
            per_class[c]["found"] += int(found[j])
        for p in peaks:
            per_class[p["class"]]["peaks"] += 1
            inside = masks[:, p["y"], p["x"]] & (cats == p["class"]) if len(cats) else []
            per_class[p["class"]]["right peaks"] += int(np.any(inside))
    n_peaks = sum(v["peaks"] for v in per_class.values())
    n_obj = sum(v["objects"] for v in per_class.values())
    quart = {k: [round(float(q), 4) for q in np.percentile(v, [25, 50, 75])] if v else []
             for k, v in area.items()}
    result = {
        "run": args.run, "data": args.data, "split": args.split,
        "peaks": n_peaks, "objects": n_obj,
        "recall": sum(v["found"] for v in per_class.values()) / max(n_obj, 1),
        "precision": sum(v["right peaks"] for v in per_class.values()) / max(n_peaks, 1),
        "false_peaks": dict(false.most_common()), "missed_objects": dict(missed.most_common()),
        "object_area_quartiles": quart,
        "labelled_pairs": pairs, "labelled_pairs_without_peak": unpeaked,
        "by_class": {classes[c]: dict(v) for c, v in per_class.items()},
    }
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    name = args.name or f"{Path(args.data).name}_{args.split}"
    atomic_write_json(ROOT / "benchmarks" / "results" / f"peak_errors_{name}.json",
                      {"commit": commit, **result}, indent=1)
    print(f"{args.data} {args.split} (run {args.run}): {n_peaks} peaks, {n_obj} objects; "
          f"recall {100 * result['recall']:.1f} %, precision {100 * result['precision']:.1f} %\n")
    print("| false peak lands | peaks | share of false peaks |\n|---|---|---|")
    for k, v in false.most_common():
        print(f"| {k} | {v} | {100 * v / max(sum(false.values()), 1):.0f} % |")
    print("\n| missed object | objects | share of missed |\n|---|---|---|")
    for k, v in missed.most_common():
        print(f"| {k} | {v} | {100 * v / max(sum(missed.values()), 1):.0f} % |")
    print(f"\nobject area / image area, quartiles: found {quart['found']}, "
          f"missed {quart['missed']}")
    print(f"(image, labelled class) pairs without a peak: {unpeaked} of {pairs}\n")
    print("| class | objects | recall | peaks | precision |\n|---|---|---|---|---|")
    for c, v in per_class.items():
        if v["objects"] or v["peaks"]:
            print(f"| {classes[c]} | {v['objects']} | "
                  f"{100 * v['found'] / max(v['objects'], 1):.1f} | {v['peaks']} | "
                  f"{100 * v['right peaks'] / max(v['peaks'], 1):.1f} |")


if __name__ == "__main__":
    main()
