"""Evaluator speed: ``wiseseg`` evaluation against pycocotools' COCOeval on the same predictions.

A VOC-sized synthetic split (default 1,449 images of 500×375 with 1–5 instances each, about 3
on average, a void band around every object, 20 classes) and 50 predictions per image: jittered
copies of the instances, some with a wrong class, plus random blobs. Both evaluators get the
same predictions; the ratio is COCOeval's time over ours.

What is timed:
- wiseseg: checking the predictions (:func:`parse_predictions`, including the RLE check) and
  :func:`evaluate` (AP at 3 thresholds, ABO, AP50 by size and by count);
- COCOeval: building the ground-truth index, ``loadRes``, ``evaluate()`` and ``accumulate()``
  (10 thresholds × 4 area ranges, its standard work).

Each evaluator runs ``--repeat`` times and the fastest run counts (the usual way to measure on
a shared machine). Usage::

    .venv/bin/python benchmarks/evaluator_speed.py [--images 1449] [--preds 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from wiseseg import rle
from wiseseg.data.dataset import Dataset, GroundTruth, ImageRecord, Instance
from wiseseg.evaluation import evaluate, parse_predictions

H, W, N_CLASSES = 375, 500, 20


def _ellipse(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float) -> list[float]:
    """A wobbly ellipse as a COCO polygon (x, y, x, y, ...)."""
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    r = 1 + 0.08 * rng.standard_normal(t.size)
    xs = np.clip(cx + rx * r * np.cos(t), 0, W - 1)
    ys = np.clip(cy + ry * r * np.sin(t), 0, H - 1)
    return np.stack([xs, ys], 1).ravel().tolist()


def _polygons_to_rles(polys: list[list[float]]) -> list[dict]:
    out = mask_utils.frPyObjects(polys, H, W) if polys else []
    for r in out:
        r["counts"] = r["counts"].decode("ascii")
    return out


def synthetic_split(n_images: int, n_preds: int, seed: int) -> tuple[Dataset, list[dict]]:
    """A dataset with one split ``val`` and a COCO results list for it."""
    rng = np.random.default_rng(seed)
    classes = tuple(f"class{k}" for k in range(N_CLASSES))
    records, gts, results = [], {}, []
    for i in range(n_images):
        image_id = i + 1
        n_inst = int(rng.integers(1, 6))
        params = [(rng.uniform(40, W - 40), rng.uniform(40, H - 40), rng.uniform(8, 120),
                   rng.uniform(8, 120)) for _ in range(n_inst)]
        shapes = [_ellipse(rng, *p) for p in params]
        # Later objects occlude earlier ones, so instances are disjoint as in VOC.
        canvas = np.zeros((H, W), np.int32)
        for k, m in enumerate(rle.decode_many(_polygons_to_rles(shapes)), start=1):
            canvas[m] = k
        band = rle.decode_many(_polygons_to_rles([_ellipse(rng, cx, cy, rx + 3, ry + 3)
                                                   for cx, cy, rx, ry in params])).any(0)
        ids = [k for k in range(1, n_inst + 1) if (canvas == k).any()]
        masks = rle.encode_many(np.stack([canvas == k for k in ids]))
        cats = rng.integers(0, N_CLASSES, len(ids))
        gts[image_id] = GroundTruth(image_id, tuple(Instance(int(c), m)
                                                    for c, m in zip(cats, masks)),
                                    ignore=rle.encode(band & (canvas == 0)))
        cat_of_shape = {k - 1: int(c) for k, c in zip(ids, cats)}
        records.append(ImageRecord(image_id, f"{image_id:06d}", Path(f"{image_id:06d}.jpg"),
                                   H, W, frozenset(int(c) for c in cats)))
        polys, labels = [], []
        for _ in range(n_preds):
            if rng.random() < 0.5:
                k = int(rng.integers(len(params)))
                cx, cy, rx, ry = params[k]
                j = rng.normal(1, 0.15, 4)
                polys.append(_ellipse(rng, cx + 10 * j[0] - 10, cy + 10 * j[1] - 10, rx * j[2],
                                      ry * j[3]))
                right = k in cat_of_shape and rng.random() < 0.8
                labels.append(cat_of_shape[k] if right else int(rng.integers(N_CLASSES)))
            else:
                polys.append(_ellipse(rng, rng.uniform(0, W), rng.uniform(0, H),
                                      rng.uniform(5, 150), rng.uniform(5, 150)))
                labels.append(int(rng.integers(N_CLASSES)))
        for seg, c in zip(_polygons_to_rles(polys), labels):
            results.append({"image_id": image_id, "category_id": c + 1, "segmentation": seg,
                            "score": float(rng.random())})
    ds = Dataset(name="synthetic", root=Path("synthetic"), classes=classes, layout="synthetic",
                 _records={"val": tuple(records)}, _gt={"val": gts})
    return ds, results


def time_wiseseg(ds: Dataset, results: list[dict]) -> tuple[dict, dict]:
    t0 = time.perf_counter()
    by_image = parse_predictions(results, ds.records("val"), ds.category_ids)
    t1 = time.perf_counter()
    metrics = evaluate(by_image, ds.ground_truth("val"), ds.records("val"), ds.classes)
    t2 = time.perf_counter()
    return metrics, {"check": t1 - t0, "evaluate": t2 - t1, "total": t2 - t0}


def time_cocoeval(ds: Dataset, results: list[dict]) -> tuple[list[float], dict]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_dict = ds.to_coco("val")
    copies = [dict(r) for r in results]  # loadRes adds keys to the entries
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        dt = gt.loadRes(copies)
        t1 = time.perf_counter()
        ev = COCOeval(gt, dt, iouType="segm")
        ev.evaluate()
        t2 = time.perf_counter()
        ev.accumulate()
        t3 = time.perf_counter()
        ev.summarize()
    return list(ev.stats[:3]), {"load": t1 - t0, "evaluate": t2 - t1, "accumulate": t3 - t2,
                                "total": t3 - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1449)
    ap.add_argument("--preds", type=int, default=50, help="predictions per image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="runs per evaluator; the best counts")
    args = ap.parse_args()

    t = time.perf_counter()
    ds, results = synthetic_split(args.images, args.preds, args.seed)
    n_gt = sum(len(g.instances) for g in ds.ground_truth("val").values())
    print(f"data: {args.images} images {W}×{H}, {n_gt} instances "
          f"({n_gt / args.images:.2f}/image), {len(results)} predictions "
          f"(built in {time.perf_counter() - t:.1f} s)")

    runs = [time_wiseseg(ds, results) for _ in range(max(1, args.repeat))]
    ours, ours_t = min(runs, key=lambda r: r[1]["total"])
    runs_coco = [time_cocoeval(ds, results) for _ in range(max(1, args.repeat))]
    coco, coco_t = min(runs_coco, key=lambda r: r[1]["total"])
    print(f"best of {max(1, args.repeat)} runs each")
    print(f"wiseseg   : {ours_t['total']:6.2f} s  (check {ours_t['check']:.2f} s, evaluate "
          f"{ours_t['evaluate']:.2f} s)  mAP25 {ours['mAP25']:.4f}  mAP50 {ours['mAP50']:.4f}  "
          f"mAP75 {ours['mAP75']:.4f}  ABO {ours['ABO']:.4f}")
    print(f"COCOeval  : {coco_t['total']:6.2f} s  (load {coco_t['load']:.2f} s, evaluate "
          f"{coco_t['evaluate']:.2f} s, accumulate {coco_t['accumulate']:.2f} s)  "
          f"AP {coco[0]:.4f}  AP50 {coco[1]:.4f}  AP75 {coco[2]:.4f}")
    print(f"ratio     : COCOeval / wiseseg = {coco_t['total'] / ours_t['total']:.1f}x")


if __name__ == "__main__":
    main()
