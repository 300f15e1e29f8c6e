"""How good are the pseudo masks a stage-1 classifier leads to, on the images it trained on?

The pipeline draws pseudo masks on stage 1's own training images, where a classifier that
fits them behaves unlike on held-out images: scoring peaks on a calibration part alone
(``calibrate_peaks.py``) misses that. For each classifier (a ``model.pt`` trained on
``<train>-fit``, e.g. by ``calibrate_peaks.py``) this script takes the peaks on the fit
images that have masks and on the held-out ``<train>-calib`` images (the preset's ``peaks``
settings), builds the pseudo masks of the fit images from a run's proposals with the preset's
``pseudo`` settings, and scores them against the true masks (Table 3's pseudo-mask row:
mAP25 / mAP50 / ABO). Only training images are read: the split the tables report is never
touched.

usage: python benchmarks/calibrate_pseudo.py DATA [key=value ...] --proposals RUN/proposals
           --classifiers NAME=PATH/model.pt [NAME=PATH ...] [--preset cpu] [--name voc]
           [--variants "" "peaks.relative=0.5" ...] [--folds 0 1 2]
``--variants``: further ``peaks`` / ``pseudo`` overrides, each scored with every classifier.
``--folds 0 1 2``: the same for the calibration folds of ``calibrate_peaks.py --folds``
(fold k > 0: ``train-fitK`` / ``train-calibK``), each with its own classifier — NAME=P0,P1,P2
names them, or NAME=P0 alone finds fold k's where ``calibrate_peaks.py`` leaves it (P0's
folder with ``_train-fitK`` appended). The peaks are pooled over the folds; the pseudo masks'
scores are the mean over folds (the fit parts overlap, so their images are not pooled), with
each fold's beside it: a stage-1 change measured on one fold moved the pseudo masks and WISE
inconsistently, by 1–5 points on one seed.
Writes benchmarks/results/calibrate_pseudo_<name>.json and prints a markdown table.
The run's proposals must cover the training images with masks (any finished run on DATA).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import time
from pathlib import Path

from wiseseg import api
from wiseseg.classifier.metrics import peak_quality
from wiseseg.classifier.model_io import load_classifier
from wiseseg.classifier.peaks import cam_function, compute_peaks
from wiseseg.data.dataset import WeakSplit
from wiseseg.io import atomic_write_json
from wiseseg.proposals import ProposalStore
from wiseseg.pseudo.labels import build_pseudo_images, to_coco
from wiseseg.pseudo.quality import pseudo_quality

ROOT = Path(__file__).resolve().parents[1]


def score(name: str, path: Path, ds, cfg: dict, store, fit: str = "train-fit",
          calib: str = "train-calib") -> dict:
    """Peak quality on fit and calib, pseudo-mask quality on fit, for one classifier (keys
    name the fold-0 splits, ``train-fit`` / ``train-calib``, whatever the fold)."""
    model, ccfg, _ = load_classifier(path)
    size = int(ccfg["input_size"])
    row: dict = {"classifier": name, "path": str(path), "fit": fit, "calib": calib}
    t0 = time.time()
    for split, key in ((fit, "train-fit"), (calib, "train-calib")):
        gts = ds.ground_truth(split)
        recs = [r for r in ds.records(split) if gts[r.id].instances]
        weak = WeakSplit(split=split, classes=ds.classes, records=tuple(recs))
        peaks = compute_peaks(model, weak, size, cfg["peaks"], progress=False,
                              category_ids=ds.category_ids)
        by_id = {im["image_id"]: im["peaks"] for im in peaks["images"]}
        q = peak_quality(by_id, gts, recs)
        row[f"peaks_{key}"] = {k: round(float(v), 4) for k, v in q.items()}
        if key != "train-fit":
            continue
        cam_fn = cam_function(model, size, cfg["peaks"], "cpu") \
            if float(cfg["pseudo"].get("cam_overlap", 0) or 0) > 0 else None
        images, stats = build_pseudo_images(weak, by_id, store, cfg["pseudo"],
                                            progress=False, cam_fn=cam_fn)
        coco = to_coco(images, weak, ds.category_ids, stats, dict(cfg["pseudo"]))
        pq = pseudo_quality(ds, split, coco, progress=False)
        row["pseudo_train-fit"] = {k: round(float(v), 4) for k, v in pq.items()
                                   if not isinstance(v, dict)}
    row["seconds"] = round(time.time() - t0, 1)
    return row


def fold_paths(spec_path: str, folds: list[int]) -> list[Path]:
    """One classifier per fold: ``P0,P1,…`` as given, or ``P0`` and the folders
    ``calibrate_peaks.py --folds`` writes beside it (``<P0's folder>_train-fitK``)."""
    paths = [Path(p) for p in spec_path.split(",")]
    if len(paths) == len(folds):
        return paths
    if len(paths) != 1:
        raise SystemExit(f"{spec_path!r}: {len(paths)} classifiers for {len(folds)} folds")
    p0 = paths[0]
    return [p0 if k == 0 else p0.parent.with_name(f"{p0.parent.name}_train-fit{k}") / p0.name
            for k in folds]


def pooled(rows: list[dict]) -> dict:
    """The folds' rows of one classifier and variant combined: peaks pooled over the folds'
    images (recall over instances, precision over peaks), pseudo-mask scores averaged."""
    out = {k: rows[0][k] for k in ("variant", "classifier")}
    out["folds"] = [r["fit"] for r in rows]
    for key in ("peaks_train-fit", "peaks_train-calib"):
        inst = sum(r[key]["instances"] for r in rows)
        peaks = sum(r[key]["peaks"] for r in rows)
        out[key] = {
            "peak_recall": round(sum(r[key]["peak_recall"] * r[key]["instances"]
                                     for r in rows) / max(inst, 1), 4),
            "peak_precision": round(sum(r[key]["peak_precision"] * r[key]["peaks"]
                                        for r in rows) / max(peaks, 1), 4),
            "peaks": peaks, "instances": inst}
    metrics = rows[0]["pseudo_train-fit"].keys()
    out["pseudo_train-fit"] = {m: round(sum(r["pseudo_train-fit"][m] for r in rows)
                                        / len(rows), 4) for m in metrics}
    out["pseudo_mAP50_by_fold"] = [r["pseudo_train-fit"]["pseudo_mAP50"] for r in rows]
    out["seconds"] = round(sum(r["seconds"] for r in rows), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="+", help="the dataset folder, then key=value overrides")
    ap.add_argument("--proposals", required=True)
    ap.add_argument("--classifiers", nargs="+", required=True, metavar="NAME=PATH")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--name", default=None)
    ap.add_argument("--variants", nargs="+", default=[""])
    ap.add_argument("--folds", type=int, nargs="+", default=[0],
                    help="calibration folds (see the module docstring); 0: train-fit only")
    args = ap.parse_args()
    overrides = [a for a in args.data if "=" in a]
    (data,) = [a for a in args.data if "=" not in a]
    ds = api.open_dataset(data, progress=False)
    splits = [("train-fit", "train-calib") if k == 0 else (f"train-fit{k}", f"train-calib{k}")
              for k in args.folds]
    for fit, _ in splits:
        ds.has_split(fit)
    store = ProposalStore.open(Path(args.proposals))
    rows, fold_rows = [], []
    for variant in args.variants:
        cfg = api.load_config(args.preset, [*overrides, *shlex.split(variant)])
        for spec in args.classifiers:
            name, _, path = spec.partition("=")
            per = []
            for (fit, calib), p in zip(splits, fold_paths(path, args.folds)):
                per.append({"variant": variant, **score(name, p, ds, cfg, store, fit, calib)})
                r = per[-1]
                print(variant, name, fit, r["peaks_train-fit"], r["peaks_train-calib"],
                      r["pseudo_train-fit"], flush=True)
            fold_rows += per
            rows.append(per[0] if len(per) == 1 else pooled(per))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    name = args.name or Path(data).name
    atomic_write_json(ROOT / "benchmarks" / "results" / f"calibrate_pseudo_{name}.json",
                      {"commit": commit, "data": data, "preset": args.preset,
                       "overrides": overrides, "folds": args.folds, "rows": rows,
                       **({"fold_rows": fold_rows} if len(args.folds) > 1 else {})},
                      indent=1)
    folds = "" if len(args.folds) == 1 else (
        f" (folds {args.folds}: peaks pooled, pseudo-mask scores the mean over folds)")
    print(f"\ncommit {commit}; {data}: peaks on train-fit (the classifier's training "
          f"images) and train-calib (held out); pseudo masks of train-fit{folds}\n\n"
          "| classifier | variant | fit peaks R / P | calib peaks R / P | pseudo mAP25 | "
          "pseudo mAP50 | pseudo ABO | mAP50 by fold |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        f, c, p = r["peaks_train-fit"], r["peaks_train-calib"], r["pseudo_train-fit"]
        by_fold = " / ".join(f"{100 * v:.1f}" for v in r.get("pseudo_mAP50_by_fold", []))
        print(f"| {r['classifier']} | {r['variant'] or '(preset)'} | "
              f"{100 * f['peak_recall']:.1f} / "
              f"{100 * f['peak_precision']:.1f} | {100 * c['peak_recall']:.1f} / "
              f"{100 * c['peak_precision']:.1f} | {100 * p['pseudo_mAP25']:.1f} | "
              f"{100 * p['pseudo_mAP50']:.1f} | {100 * p['pseudo_ABO']:.1f} | {by_fold} |")


if __name__ == "__main__":
    main()
