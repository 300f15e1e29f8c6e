"""Proposal benchmark: the built-in generator against OpenCV's selective search (fast mode).

Two parts, one run:

1. **500×375 images, side by side.** ``--images`` images rendered by the shapes generator
   (:func:`wiseseg.data.shapes.render_image`) at 500×500 with its default settings and seed 7,
   cropped to the top 375 rows; ground-truth instances left with fewer than 100 pixels by the
   crop are dropped. For each image the built-in generator and selective search run one after
   the other in this process, each limited to one thread (BLAS and OpenCV), so both see the
   same machine load. Reported: seconds per image (median over images, wall clock and this
   process's CPU time, the latter less sensitive to other load), proposals per image,
   box recall at IoU 0.5 over all proposals (all that selective search can give), and for the
   built-in generator mask ABO and mask recall at 0.5 / 0.7.
2. **shapes val** (the default built-in data, 200 images of 128×128): the built-in generator's
   :func:`~wiseseg.proposals.proposal_quality` (ABO, mask recall at 0.5 / 0.7 at top
   10 / 100 / all, objectness ROC AUC, proposals and seconds per image), and selective search's
   box recall at 0.5 on the same images.

Needs the ``bench`` extra (``pip install -e '.[bench]'``: opencv-contrib-python-headless).
Usage::

    .venv/bin/python benchmarks/proposals.py [--images 20] [--val 200] [--json out.json]
        [--set key=value ...]   # built-in settings, e.g. --set work_pixels=40000
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core for each method; must precede numpy

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from wiseseg import rle  # noqa: E402
from wiseseg.data import load_image, open_dataset  # noqa: E402
from wiseseg.data.shapes import ShapesConfig, _load_photos, render_image  # noqa: E402
from wiseseg.proposals import compute_proposals, proposal_quality  # noqa: E402
from wiseseg.proposals.builtin import BuiltinSource  # noqa: E402

MIN_GT_PIXELS = 100


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``xyxy`` boxes (|a|×|b| float64), by torchvision."""
    import torch
    from torchvision.ops import box_iou as tv_box_iou

    return tv_box_iou(torch.as_tensor(a, dtype=torch.float64).reshape(-1, 4),
                      torch.as_tensor(b, dtype=torch.float64).reshape(-1, 4)).numpy()


def gt_boxes(masks: list[dict]) -> np.ndarray:
    xywh = rle.to_bbox(masks)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def selective_search(image: np.ndarray) -> np.ndarray:
    """All boxes (N×4 ``xyxy``) of OpenCV's selective search in fast mode."""
    import cv2

    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(np.ascontiguousarray(image[:, :, ::-1]))  # OpenCV wants BGR
    ss.switchToSelectiveSearchFast()
    rects = np.asarray(ss.process(), np.float64).reshape(-1, 4)
    return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)


def bench_images(n: int) -> list[tuple[np.ndarray, list[dict]]]:
    """``n`` 500×375 images with ground-truth masks (see the module docstring)."""
    cfg = ShapesConfig(size=500, seed=7)
    photos = _load_photos()
    out = []
    for i in range(n):
        img, instances = render_image(cfg, 0, i, photos)
        masks = [rle.encode(m[:375]) for _, m in instances if m[:375].sum() >= MIN_GT_PIXELS]
        out.append((np.ascontiguousarray(img[:375]), masks))
    return out


def side_by_side(n: int, source: BuiltinSource) -> dict:
    images = bench_images(n)
    source.propose(images[0][0])  # first-call imports and caches are not the method's time
    selective_search(images[0][0])
    ours_t, ss_t, ours_cpu, ss_cpu, ours_n, ss_n = [], [], [], [], [], []
    box_best_ours, box_best_ss, mask_best = [], [], []
    for img, masks in images:
        start, cpu = time.perf_counter(), time.process_time()
        props = source.propose(img)
        ours_t.append(time.perf_counter() - start)
        ours_cpu.append(time.process_time() - cpu)
        start, cpu = time.perf_counter(), time.process_time()
        boxes = selective_search(img)
        ss_t.append(time.perf_counter() - start)
        ss_cpu.append(time.process_time() - cpu)
        ours_n.append(len(props))
        ss_n.append(len(boxes))
        if not masks:
            continue
        gtb = gt_boxes(masks)
        box_best_ours.append(box_iou(props.boxes.astype(np.float64), gtb).max(axis=0))
        box_best_ss.append(box_iou(boxes, gtb).max(axis=0))
        mask_best.append(rle.iou(props.masks, masks).max(axis=0))
    bo, bs, mb = (np.concatenate(x) for x in (box_best_ours, box_best_ss, mask_best))
    return {
        "images": n, "instances": int(len(mb)),
        "builtin": {"seconds_per_image": float(np.median(ours_t)),
                    "seconds_mean": float(np.mean(ours_t)),
                    "cpu_seconds_per_image": float(np.median(ours_cpu)),
                    "proposals_per_image": float(np.mean(ours_n)),
                    "box_recall_0.5": float((bo >= 0.5).mean()),
                    "mask_abo": float(mb.mean()),
                    "mask_recall_0.5": float((mb >= 0.5).mean()),
                    "mask_recall_0.7": float((mb >= 0.7).mean())},
        "selective_search_fast": {"seconds_per_image": float(np.median(ss_t)),
                                  "seconds_mean": float(np.mean(ss_t)),
                                  "cpu_seconds_per_image": float(np.median(ss_cpu)),
                                  "proposals_per_image": float(np.mean(ss_n)),
                                  "box_recall_0.5": float((bs >= 0.5).mean())},
        "speedup": float(np.median(ss_t) / np.median(ours_t)),
        "cpu_speedup": float(np.median(ss_cpu) / np.median(ours_cpu)),
    }


def shapes_val(n: int, source: BuiltinSource) -> dict:
    ds = open_dataset("shapes")
    records = ds.records("val")[:n]
    with tempfile.TemporaryDirectory() as tmp:
        store = compute_proposals(records, source, tmp, workers=1, progress=True,
                                  top_k=source.config.top_k)
        quality = proposal_quality(store, ds, "val", image_ids=[r.id for r in records])
    gts = ds.ground_truth("val")
    best, ss_t = [], []
    for r in records:
        masks = [i.segmentation for i in gts[r.id].instances]
        start = time.perf_counter()
        boxes = selective_search(load_image(r.path))
        ss_t.append(time.perf_counter() - start)
        if masks:
            best.append(box_iou(boxes, gt_boxes(masks)).max(axis=0))
    quality["selective_search_box_recall_0.5"] = float((np.concatenate(best) >= 0.5).mean())
    quality["selective_search_seconds_per_image"] = float(np.mean(ss_t))
    return quality


def table(res: dict) -> str:
    a, b = res["side_by_side"]["builtin"], res["side_by_side"]["selective_search_fast"]
    q = res["shapes_val"]
    lines = [
        f"500×375 images ({res['side_by_side']['images']} rendered shapes scenes, "
        f"{res['side_by_side']['instances']} objects), one thread each, same run:",
        "",
        "| method | s / image (wall) | CPU s / image | proposals / image | box recall@0.5 | "
        "mask ABO | mask recall@0.5 | mask recall@0.7 |",
        "|---|---|---|---|---|---|---|---|",
        f"| wiseseg built-in | {a['seconds_per_image']:.3f} | {a['cpu_seconds_per_image']:.3f} | "
        f"{a['proposals_per_image']:.0f} | {100 * a['box_recall_0.5']:.1f} | "
        f"{100 * a['mask_abo']:.1f} | {100 * a['mask_recall_0.5']:.1f} | "
        f"{100 * a['mask_recall_0.7']:.1f} |",
        f"| OpenCV selective search (fast) | {b['seconds_per_image']:.3f} | "
        f"{b['cpu_seconds_per_image']:.3f} | {b['proposals_per_image']:.0f} | "
        f"{100 * b['box_recall_0.5']:.1f} | — | — | — |",
        "",
        f"Speed-up (medians): {res['side_by_side']['speedup']:.1f}× wall clock, "
        f"{res['side_by_side']['cpu_speedup']:.1f}× CPU time.",
    ]
    if q is None:
        return "\n".join(lines)
    lines += [
        "",
        f"shapes val ({q['images']} images of 128×128, {q['instances']} objects), built-in "
        f"generator, ≤ {res['top_k']} proposals per image:",
        "",
        "| recall@IoU | top-10 | top-100 | all |",
        "|---|---|---|---|",
    ]
    for t, row in q["recall"].items():
        lines.append(f"| {t} | " + " | ".join(f"{100 * v:.1f}" for v in row.values()) + " |")
    lines += [
        "",
        f"ABO {100 * q['abo']:.1f}, objectness ROC AUC {q['objectness_auc']:.3f}, "
        f"{q['proposals_per_image']:.0f} proposals/image, {q['seconds_per_image']:.3f} s/image; "
        f"selective search fast on the same images: box recall@0.5 "
        f"{100 * q['selective_search_box_recall_0.5']:.1f} "
        f"({q['selective_search_seconds_per_image']:.3f} s/image).",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=20, help="500×375 images (default 20)")
    ap.add_argument("--val", type=int, default=200, help="shapes val images (default 200)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="built-in generator settings (JSON values)")
    args = ap.parse_args()
    try:
        import cv2
    except ImportError:
        raise SystemExit("needs OpenCV's contrib modules: pip install -e '.[bench]'") from None
    cv2.setNumThreads(1)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    source = BuiltinSource(**overrides)
    res = {"settings": source.settings(), "top_k": source.config.top_k,
           "opencv": cv2.__version__,
           "side_by_side": side_by_side(args.images, source),
           "shapes_val": shapes_val(args.val, source) if args.val > 0 else None}
    print(table(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
