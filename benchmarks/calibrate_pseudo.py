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
           [--variants "" "peaks.relative=0.5" ...]
``--variants``: further ``peaks`` / ``pseudo`` overrides, each scored with every classifier.
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


def score(name: str, path: Path, ds, cfg: dict, store) -> dict:
    """Peak quality on fit and calib, pseudo-mask quality on fit, for one classifier."""
    model, ccfg, _ = load_classifier(path)
    size = int(ccfg["input_size"])
    row: dict = {"classifier": name, "path": str(path)}
    t0 = time.time()
    for split in ("train-fit", "train-calib"):
        gts = ds.ground_truth(split)
        recs = [r for r in ds.records(split) if gts[r.id].instances]
        weak = WeakSplit(split=split, classes=ds.classes, records=tuple(recs))
        peaks = compute_peaks(model, weak, size, cfg["peaks"], progress=False,
                              category_ids=ds.category_ids)
        by_id = {im["image_id"]: im["peaks"] for im in peaks["images"]}
        q = peak_quality(by_id, gts, recs)
        row[f"peaks_{split}"] = {k: round(float(v), 4) for k, v in q.items()}
        if split != "train-fit":
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="+", help="the dataset folder, then key=value overrides")
    ap.add_argument("--proposals", required=True)
    ap.add_argument("--classifiers", nargs="+", required=True, metavar="NAME=PATH")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--name", default=None)
    ap.add_argument("--variants", nargs="+", default=[""])
    args = ap.parse_args()
    overrides = [a for a in args.data if "=" in a]
    (data,) = [a for a in args.data if "=" not in a]
    ds = api.open_dataset(data, progress=False)
    ds.has_split("train-fit")
    store = ProposalStore.open(Path(args.proposals))
    rows = []
    for variant in args.variants:
        cfg = api.load_config(args.preset, [*overrides, *shlex.split(variant)])
        for spec in args.classifiers:
            name, _, path = spec.partition("=")
            rows.append({"variant": variant, **score(name, Path(path), ds, cfg, store)})
            r = rows[-1]
            print(variant, name, r["peaks_train-fit"], r["peaks_train-calib"],
                  r["pseudo_train-fit"], flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    name = args.name or Path(data).name
    atomic_write_json(ROOT / "benchmarks" / "results" / f"calibrate_pseudo_{name}.json",
                      {"commit": commit, "data": data, "preset": args.preset,
                       "overrides": overrides, "rows": rows}, indent=1)
    print(f"\ncommit {commit}; {data}: peaks on train-fit (the classifier's training "
          "images) and train-calib (held out); pseudo masks of train-fit\n\n"
          "| classifier | variant | fit peaks R / P | calib peaks R / P | pseudo mAP25 | "
          "pseudo mAP50 | pseudo ABO |\n|---|---|---|---|---|---|---|")
    for r in rows:
        f, c, p = r["peaks_train-fit"], r["peaks_train-calib"], r["pseudo_train-fit"]
        print(f"| {r['classifier']} | {r['variant'] or '(preset)'} | "
              f"{100 * f['peak_recall']:.1f} / "
              f"{100 * f['peak_precision']:.1f} | {100 * c['peak_recall']:.1f} / "
              f"{100 * c['peak_precision']:.1f} | {100 * p['pseudo_mAP25']:.1f} | "
              f"{100 * p['pseudo_mAP50']:.1f} | {100 * p['pseudo_ABO']:.1f} |")


if __name__ == "__main__":
    main()
