"""Choose stage 1's measured settings on a calibration part of the training split, never on
the split the tables report.

For each classifier variant (preset overrides, e.g. another input size or sub-pixel factor)
the classifier is trained on ``<train>-fit`` and its peaks are scored on ``<train>-calib``
(:func:`wiseseg.data.dataset.calibration_split`: a seeded 15 % of the training images) for a
grid of peak settings: the CAM geometry convention, test-time flip averaging of the CAM, the
relative and absolute peak thresholds and the peak window. The criterion is the smaller of
peak recall and peak precision (both must reach 85 % for the target); the table lists every
combination, best first, with the training time, so a variant's gain can be weighed against
its cost. ``--folds 0 1 2`` pools disjoint calibration folds (``train-calib``,
``train-calib1``, ``train-calib2``; one classifier per fold, trained on the rest) where one
fold holds too few objects to tell variants apart.

usage: python benchmarks/calibrate_peaks.py [--data shapes] [--preset cpu]
           [--variants "classifier.input_size=128" "classifier.input_size=256" ...]
           [--negatives DIR] [--folds 0 1 2]
           [--out runs/calibrate-peaks] [--name shapes]
Writes benchmarks/results/calibrate_peaks_<name>.json and prints a markdown table.

       python benchmarks/calibrate_peaks.py --summary RESULT.json [RESULT.json ...]
prints, per classifier variant of the kept result files, recall / precision of each CAM
geometry convention at the chosen peak settings (CHOSEN) and the variant's best combination.

       python benchmarks/calibrate_peaks.py --choose RESULT.json:VARIANT [...]
ranks the peak settings by their mean min(recall, precision) over several calibration sets
(each a kept result file and one of its classifier variants).
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from wiseseg import api
from wiseseg.autoconfig import resolve_auto
from wiseseg.classifier.metrics import peak_quality
from wiseseg.classifier.model_io import load_classifier
from wiseseg.classifier.peaks import image_cams
from wiseseg.classifier.train import train_classifier
from wiseseg.data.images import load_image
from wiseseg.io import atomic_write_json
from wiseseg.models.cam_geometry import CONVENTIONS
from wiseseg.models.peak_ops import extract_peaks

RELATIVE = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
ABSOLUTE = (None, 0.0, 1.0)
WINDOWS = (3, 5)
SCALES = ((1.0,), (0.75, 1.0, 1.5))  # peaks.scales: PRM's single scale, or multi-scale CAMs
EXCLUSIVE = (False, True)
MIN_PER_CLASS = (0, 1)  # peaks.min_per_class


def calib_cams(model, records, size: int, flip: bool, scales=(1.0,)) -> torch.Tensor:
    """CAMs of the calibration images (flip: averaged with the flipped image's CAM; scales:
    averaged over these input scales, as ``peaks.scales``)."""
    out = []
    for i in range(0, len(records), 32):
        imgs = [load_image(r.path) for r in records[i:i + 32]]
        out.append(image_cams(model, imgs, size, "cpu", flip=flip, scales=scales))
    return torch.cat(out)


def score_grid(parts: list[tuple], gts: dict, size: int, max_per_class: int) -> list[dict]:
    """The peak-settings grid scored on the pooled calibration images of ``parts``, each a
    ``(model, records)`` pair: a classifier and the calibration fold it did not train on."""
    rows = []
    for flip, scales in itertools.product((False, True), SCALES):
        t0 = time.time()
        cams = [calib_cams(model, records, size, flip, scales) for model, records in parts]
        n = sum(len(records) for _, records in parts)
        cam_seconds = (time.time() - t0) / n
        for conv in CONVENTIONS:
            geos = [model.geometry((size, size), tuple(c.shape[-2:]), conv)
                    for (model, _), c in zip(parts, cams)]
            for rel, ab, win, ex, least in itertools.product(RELATIVE, ABSOLUTE, WINDOWS,
                                                             EXCLUSIVE, MIN_PER_CLASS):
                by_id = {}
                for (model, records), part_cams, geo in zip(parts, cams, geos):
                    for r, cam in zip(records, part_cams):
                        peaks = extract_peaks(cam, sorted(r.labels), (r.height, r.width), geo,
                                              window=win, median_filter=model.median_filter,
                                              min_score=float("-inf") if ab is None else ab,
                                              relative=rel, max_per_class=max_per_class,
                                              exclusive=ex, min_per_class=least)
                        by_id[r.id] = [{"class": p.category, "y": p.y, "x": p.x} for p in peaks]
                q = peak_quality(by_id, gts, [r for _, records in parts for r in records])
                rows.append({"flip": flip, "scales": list(scales), "geometry": conv,
                             "relative": rel, "min_score": ab, "window": win, "exclusive": ex,
                             "min_per_class": least, "recall": q["peak_recall"],
                             "precision": q["peak_precision"],
                             "count_mae": q["count_mae"], "cam_seconds": cam_seconds})
    return rows


#: the value of a peak setting in result files written before the grid had it
DEFAULTS = {"scales": [1.0], "min_per_class": 0}

#: the peak settings of the ``cpu`` preset (chosen from this script's table)
CHOSEN = {"flip": True, "relative": 0.3, "min_score": 1.0, "window": 3, "exclusive": True,
          "scales": [1.0], "min_per_class": 0}


def summary(paths: list[str]) -> None:
    """Geometry conventions side by side per variant, from kept result files."""
    import json

    rows = [r for p in paths for r in json.loads(Path(p).read_text())["rows"]]
    print("| classifier variant | uniform | receptive | corners | best combination |\n"
          "|---|---|---|---|---|")
    for v in sorted({r["variant"] for r in rows}):
        mine = [r for r in rows if r["variant"] == v]
        cells = []
        for g in ("uniform", "receptive", "corners"):
            m = [r for r in mine if r["geometry"] == g
                 and all(r.get(k, DEFAULTS.get(k)) == x for k, x in CHOSEN.items())]
            cells.append(f"{100 * m[0]['recall']:.1f} / {100 * m[0]['precision']:.1f}"
                         if m else "—")
        b = max(mine, key=lambda r: min(r["recall"], r["precision"]))
        best = (f"{100 * b['recall']:.1f} / {100 * b['precision']:.1f} ({b['geometry']}, "
                f"flip {b['flip']}, relative {b['relative']}, min {b['min_score']}, window "
                f"{b['window']}, exclusive {b['exclusive']})")
        print(f"| {v or '(preset)'} | " + " | ".join(cells) + f" | {best} |")


PEAK_KEYS = ("flip", "scales", "geometry", "relative", "min_score", "window", "exclusive",
             "min_per_class")


def choose(specs: list[str]) -> None:
    """The peak settings best on several calibration sets at once: for each kept result file
    and classifier variant (``FILE.json:VARIANT``), min(recall, precision) of every peak
    setting; the settings ranked by their mean over the sets (ties: the smaller worst set)."""
    import json

    per_set = []
    for spec in specs:
        path, _, variant = spec.partition(":")
        rows = [r for r in json.loads(Path(path).read_text())["rows"]
                if r["variant"] == (variant or "(preset)")]
        if not rows:
            raise SystemExit(f"{path}: no rows of variant {variant or '(preset)'!r}")
        per_set.append({tuple(json.dumps(r.get(k, DEFAULTS.get(k))) for k in PEAK_KEYS): r
                        for r in rows})
    common = set.intersection(*(set(d) for d in per_set))
    ranked = sorted(common, key=lambda k: (
        -np.mean([min(d[k]["recall"], d[k]["precision"]) for d in per_set]),
        -min(min(d[k]["recall"], d[k]["precision"]) for d in per_set)))
    print("| " + " | ".join(PEAK_KEYS) + " | " + " | ".join(
        f"set {i + 1} R / P" for i in range(len(per_set))) + " | mean min(R, P) |")
    print("|" + "---|" * (len(PEAK_KEYS) + len(per_set) + 1))
    for k in ranked[:20]:
        cells = [f"{100 * d[k]['recall']:.1f} / {100 * d[k]['precision']:.1f}" for d in per_set]
        mean = np.mean([min(d[k]["recall"], d[k]["precision"]) for d in per_set])
        print("| " + " | ".join(str(json.loads(v)) for v in k) + " | " + " | ".join(cells)
              + f" | {100 * mean:.1f} |")
    for i, spec in enumerate(specs):
        print(f"set {i + 1}: {spec}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="shapes")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--variants", nargs="+", default=[""],
                    help="each a space-separated list of overrides ('' = the preset)")
    ap.add_argument("--out", default="runs/calibrate-peaks")
    ap.add_argument("--name", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", action="store_true",
                    help="score the classifiers an earlier run of this script left in --out "
                         "instead of training them again (train s: null)")
    ap.add_argument("--folds", type=int, nargs="+", default=[0],
                    help="calibration folds to pool (0: train-calib; k: train-calibK, the next "
                         "disjoint 15 %%); one classifier is trained per fold on the rest")
    ap.add_argument("--summary", nargs="+", default=None, metavar="RESULT.json")
    ap.add_argument("--choose", nargs="+", default=None, metavar="RESULT.json:VARIANT",
                    help="rank peak settings by their mean min(recall, precision) over sets")
    ap.add_argument("--negatives", default=None,
                    help="a folder of images with none of the classes (as `wiseseg run "
                         "--negatives`); default DATA/negatives when that folder exists")
    args = ap.parse_args()
    if args.summary:
        summary(args.summary)
        return
    if args.choose:
        choose(args.choose)
        return
    ds = api.open_dataset(args.data, progress=False)
    name = args.name or ds.name
    folds = [("train-fit", "train-calib") if k == 0 else (f"train-fit{k}", f"train-calib{k}")
             for k in args.folds]
    fit, calib = folds[0]
    negatives = args.negatives or (Path(args.data) / "negatives"
                                   if (Path(args.data) / "negatives").is_dir() else None)
    if negatives:  # before carving: the fit part trains on them, as a run's train split
        from wiseseg.data.negatives import add_negatives

        add_negatives(ds, negatives, "train")
    for f, _ in folds:
        ds.has_split(f)
    calib_records = [r for _, c in folds for r in ds.records(c)]
    gts = {k: v for _, c in folds for k, v in ds.ground_truth(c).items()}
    results = []
    for variant in args.variants:
        overrides = shlex.split(variant)
        parts, train_s, size = [], 0.0, None
        for f, c in folds:
            cfg = api.load_config(args.preset, [*overrides, f"seed={args.seed}"])
            cfg, notes = resolve_auto(cfg, ds, f)  # `auto` sizes follow the fit part, as a run
            print(*(f"  auto ({f}): {n}" for n in notes if "classifier" in n), sep="\n",
                  flush=True)
            name_v = variant.replace(" ", "_").replace("=", "-") or "preset"
            out = Path(args.out) / (name_v if f == "train-fit" else f"{name_v}_{f}")
            t0 = time.time()
            if args.reuse and (out / "model.pt").is_file():
                path, train_s = out / "model.pt", None
            else:
                path = train_classifier(ds.weak(f), cfg["classifier"], out, seed=args.seed,
                                        resume=False, progress=False,
                                        feature_cache_dir=out / "cache")
                train_s = None if train_s is None else train_s + time.time() - t0
            model, ccfg, _ = load_classifier(path)
            if size not in (None, int(ccfg["input_size"])):
                raise SystemExit(f"{variant!r}: auto input size differs between folds "
                                 f"({size} and {ccfg['input_size']}); fix it by an override")
            size = int(ccfg["input_size"])
            parts.append((model, ds.records(c)))
        rows = score_grid(parts, gts, size, cfg["peaks"].get("max_per_class"))
        per_fold = None if train_s is None else round(train_s / len(folds), 1)
        for r in rows:
            r.update(variant=variant or "(preset)", train_seconds=per_fold)
        results += rows
        best = max(rows, key=lambda r: min(r["recall"], r["precision"]))
        print(f"{variant or '(preset)'}: trained in {per_fold} s a fold; best "
              f"recall {100 * best['recall']:.1f} precision {100 * best['precision']:.1f}",
              flush=True)
    results.sort(key=lambda r: -min(r["recall"], r["precision"]))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    atomic_write_json(Path(f"benchmarks/results/calibrate_peaks_{name}.json"),
                      {"commit": commit, "data": args.data, "preset": args.preset,
                       "fit": fit, "calib": calib, "folds": args.folds,
                       "calib_images": len(calib_records), "rows": results}, indent=1)
    print(f"\ncommit {commit}; {args.data}: folds {args.folds}, each trained on its "
          f"{fit}-style part ({len(ds.records(fit))} images in fold 0), scored on the pooled "
          f"calibration images ({len(calib_records)}, instances "
          f"{sum(len(g.instances) for g in gts.values())})\n")
    print("| variant | flip | scales | geometry | relative | min score | window | exclusive | "
          "min per class | recall | precision | count MAE | train s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results[:25]:
        print(f"| {r['variant']} | {r['flip']} | {r['scales']} | {r['geometry']} | "
              f"{r['relative']} | {r['min_score']} | {r['window']} | {r['exclusive']} | "
              f"{r['min_per_class']} | {100 * r['recall']:.1f} | "
              f"{100 * r['precision']:.1f} | {r['count_mae']:.2f} | {r['train_seconds']} |")


if __name__ == "__main__":
    main()
