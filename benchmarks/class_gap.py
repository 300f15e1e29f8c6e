"""Where WISE loses to the Mask R-CNN on true masks, class by class, from kept results.

Reads ``benchmarks/real.py`` result files (one or more seeds of one data set), and for every
class prints the mean AP50 of WISE, WISE+Refine and the reference over the seeds, the
pseudo masks' AP50 on the training images (Table 3), the class's share of the val objects,
and how much of the mean-AP gap (GT − WISE, in mAP points) the class accounts for. With
``--unlabelled DATA`` the classes that some training images leave unchecked (COCO image
entries' ``unlabelled_classes``, as ``benchmarks/data/voc_samples.py`` writes them for the VOC
sample's image-level images) are marked and summed apart. Nothing is recomputed.

usage: python benchmarks/class_gap.py RESULT.json [RESULT.json ...] [--unlabelled DATA]
           [--name NAME]
Writes benchmarks/results/class_gap_<NAME>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from unchecked_scores import unchecked_by_image

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("WISE", "WISE+Refine", "Mask R-CNN (GT)")


def unlabelled_classes(data: Path) -> set[str]:
    """Class names left unchecked in some training image (``instances_train.json``)."""
    return set().union(*unchecked_by_image(data).values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, nargs="+")
    ap.add_argument("--unlabelled", type=Path, default=None, metavar="DATA")
    ap.add_argument("--name", default="voc")
    args = ap.parse_args()
    runs = []
    for f in args.results:
        d = json.loads(f.read_text())
        for r in d["runs"]:
            runs.append({"file": f.name, "commit": d.get("commit"), "seed": r["seed"],
                         "metrics": r["metrics"]})
    classes = list(runs[0]["metrics"]["per_class_AP50"]["WISE"])
    marked = unlabelled_classes(args.unlabelled) if args.unlabelled else set()

    def mean(key, c):
        vals = [100 * float(r["metrics"]["per_class_AP50"][key][c] or 0.0) for r in runs]
        return statistics.mean(vals)

    def pseudo(c):
        vals = [100 * float(r["metrics"]["pseudo_quality"]["pseudo_per_class_AP50"].get(c) or 0)
                for r in runs]
        return statistics.mean(vals)

    rows = []
    for c in classes:
        w, ref, g = mean("WISE", c), mean("WISE+Refine", c), mean("Mask R-CNN (GT)", c)
        rows.append({"class": c, "unlabelled_somewhere": c in marked, "WISE": round(w, 1),
                     "WISE+Refine": round(ref, 1), "Mask R-CNN (GT)": round(g, 1),
                     "pseudo_train": round(pseudo(c), 1),
                     "gap_mAP_points": round((g - w) / len(classes), 2)})
    total_gap = sum(r["gap_mAP_points"] for r in rows)
    groups = {}
    for name, sel in (("unlabelled in some training images", True), ("the others", False)):
        part = [r for r in rows if r["unlabelled_somewhere"] == sel]
        if part:
            groups[name] = {"classes": len(part),
                            "WISE": round(statistics.mean(r["WISE"] for r in part), 1),
                            "Mask R-CNN (GT)": round(statistics.mean(r["Mask R-CNN (GT)"]
                                                                     for r in part), 1),
                            "gap_mAP_points": round(sum(r["gap_mAP_points"] for r in part), 2)}
    out = {"files": [str(f) for f in args.results],
           "runs": [{k: r[k] for k in ("file", "commit", "seed")} for r in runs],
           "classes": rows, "gap_mAP_points": round(total_gap, 2), "groups": groups}
    base = ROOT / "benchmarks" / "results" / f"class_gap_{args.name}"
    base.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    which = ", ".join(f"{r['file']} seed {r['seed']}" for r in runs)
    lines = [f"AP50 per class, mean over {len(runs)} runs ({which}); "
             f"gap = (GT − WISE) / {len(classes)} classes, in mAP points; * = unlabelled in "
             f"some training images", "",
             "| class | WISE | WISE+Refine | GT | pseudo masks (train) | gap |",
             "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["gap_mAP_points"]):
        lines.append(f"| {r['class']}{' *' if r['unlabelled_somewhere'] else ''} | {r['WISE']} | "
                     f"{r['WISE+Refine']} | {r['Mask R-CNN (GT)']} | {r['pseudo_train']} | "
                     f"{r['gap_mAP_points']:+.2f} |")
    lines += ["", f"total gap {total_gap:.2f} mAP points"]
    for name, g in groups.items():
        lines.append(f"- {name} ({g['classes']} classes): WISE {g['WISE']}, GT "
                     f"{g['Mask R-CNN (GT)']}, {g['gap_mAP_points']:.2f} of the gap")
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
