"""Proposal benchmark on real instance-mask data: the built-in generator beside OpenCV's
selective search, on the same images, one thread each.

Reads any dataset wiseseg opens (a COCO- or VOC-layout path, or ``shapes``) and reports, per
method, on the images of one split (default ``val``):

- seconds per image: median over images of the wall clock and of this process's CPU time
  (the CPU time is less sensitive to other programs on a shared machine), the image at its
  native size, decoding excluded;
- proposals per image;
- box recall@0.5 at the top 1000 and at all proposals (a built-in proposal's box is its
  mask's tight box; selective search gives boxes only, in its own ranking order);
- mask recall@0.5 and @0.7 at the top 100 / 1000 / all, mask ABO at the top 1000 and all
  (mean over ground-truth instances of the best IoU), objectness ROC AUC (proposals with
  IoU ≥ 0.5 to some instance against the rest, pooled over images) — built-in only;
- for selective search, box ABO at all proposals instead.

Pixels of the ground truth's ignore region (VOC void, COCO crowd) are left out of mask IoUs,
as in :func:`wiseseg.proposals.proposal_quality`. Every method runs with one BLAS / OpenMP /
OpenCV / torch thread. The methods run one after the other on each image, so a change of
machine load hits them alike; still, on a shared machine repeat the run and compare medians.

Data: see ``benchmarks/data/README.md`` for how to obtain and convert Penn-Fudan, COCO,
NWPU VHR-10 and DSB2018 (nothing is in the repository). Needs the ``bench`` extra
(``pip install -e '.[bench]'``) for OpenCV.

Usage::

    .venv/bin/python benchmarks/proposals_real.py /data/pennfudan [--split val]
        [--limit N] [--top-k 1000] [--methods fast accurate ss-fast ss-quality]
        [--json out.json]
        [--md out.md] [--cache DIR]

``--cache DIR`` keeps selective search's boxes per image (its quality mode takes seconds per
image) so that a rerun only recomputes the built-in generator.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core for each method; must precede numpy

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from wiseseg import rle  # noqa: E402
from wiseseg.data import load_image, open_dataset  # noqa: E402
from wiseseg.proposals import build_proposal_source, roc_auc  # noqa: E402
from wiseseg.proposals.quality import mask_iou  # noqa: E402

MASK_KS = (100, 1000, None)
BOX_KS = (1000, None)
SS_MODES = {"ss-fast": "fast", "ss-quality": "quality"}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``xyxy`` boxes (|a|×|b| float64), by torchvision."""
    import torch
    from torchvision.ops import box_iou as tv_box_iou

    return tv_box_iou(torch.as_tensor(a, dtype=torch.float64).reshape(-1, 4),
                      torch.as_tensor(b, dtype=torch.float64).reshape(-1, 4)).numpy()


def gt_boxes(masks: list[dict]) -> np.ndarray:
    """Tight ``xyxy`` boxes (N×4 float64, end exclusive) of RLE masks."""
    if not masks:
        return np.zeros((0, 4))
    xywh = rle.to_bbox(masks).astype(np.float64)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def selective_search(image: np.ndarray, mode: str) -> np.ndarray:
    """OpenCV selective search boxes (N×4 ``xyxy`` float64), in its ranking order.

    Args:
        image: H×W×3 uint8 RGB.
        mode: ``fast`` or ``quality`` (OpenCV's ``switchToSelectiveSearchFast`` /
            ``...Quality``).
    """
    import cv2

    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(np.ascontiguousarray(image[:, :, ::-1]))  # OpenCV wants BGR
    if mode == "fast":
        ss.switchToSelectiveSearchFast()
    else:
        ss.switchToSelectiveSearchQuality()
    rects = np.asarray(ss.process(), np.float64).reshape(-1, 4)
    return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)


def _best(iou: np.ndarray, k: int | None, n_gt: int) -> np.ndarray:
    head = iou if k is None else iou[:k]
    return head.max(axis=0) if len(head) else np.zeros(n_gt)


def _timed(fn, *args):
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - start, time.process_time() - cpu


class Tally:
    """Per-method accumulators over images."""

    def __init__(self, masks: bool):
        self.masks = masks
        self.wall, self.cpu, self.count = [], [], []
        self.box = {k: [] for k in BOX_KS}
        self.mask = {k: [] for k in MASK_KS}
        self.scores, self.positive = [], []

    def add(self, wall: float, cpu: float, boxes: np.ndarray, gt_box: np.ndarray,
            iou: np.ndarray | None = None, scores: np.ndarray | None = None) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)
        self.count.append(len(boxes))
        biou = box_iou(boxes, gt_box)
        for k in BOX_KS:
            self.box[k].append(_best(biou, k, len(gt_box)))
        if iou is not None:
            for k in MASK_KS:
                self.mask[k].append(_best(iou, k, len(gt_box)))
            self.scores.append(scores)
            self.positive.append(iou.max(axis=1) >= 0.5 if iou.shape[1]
                                 else np.zeros(len(iou), bool))

    def result(self) -> dict:
        def name(k):
            return "all" if k is None else str(k)

        box = {k: np.concatenate(v) if v else np.zeros(0) for k, v in self.box.items()}
        out = {"images": len(self.wall),
               "seconds_per_image": float(np.median(self.wall)),
               "seconds_mean": float(np.mean(self.wall)),
               "cpu_seconds_per_image": float(np.median(self.cpu)),
               "proposals_per_image": float(np.mean(self.count)),
               "box_recall_0.5": {name(k): float((v >= 0.5).mean()) for k, v in box.items()},
               "box_abo": float(box[None].mean())}
        if self.masks:
            mask = {k: np.concatenate(v) for k, v in self.mask.items()}
            out["mask_recall"] = {f"{t:g}": {name(k): float((v >= t).mean())
                                             for k, v in mask.items()} for t in (0.5, 0.7)}
            out["mask_abo"] = {name(k): float(v.mean()) for k, v in mask.items()}
            out["objectness_auc"] = roc_auc(np.concatenate(self.scores),
                                            np.concatenate(self.positive))
        return out


def run(data: str, split: str, methods: list[str], limit: int | None,
        cache: Path | None, top_k: int) -> dict:
    import torch

    if any(m in SS_MODES for m in methods):
        import cv2

        cv2.setNumThreads(1)
    torch.set_num_threads(1)
    ds = open_dataset(data)
    records = list(ds.records(split))
    if limit:
        # Every n-th image, so that a limited run still spans the whole split.
        records = records[:: max(1, len(records) // limit)][:limit]
    gts = ds.ground_truth(split)
    ours = {m: build_proposal_source(f"builtin:{m}", top_k=top_k)
            for m in methods if m not in SS_MODES}
    tallies = {m: Tally(masks=m not in SS_MODES) for m in methods}
    # First calls pay for imports, the backbone's weights and caches: not the method's time.
    warm = load_image(records[0].path)
    for src in ours.values():
        src.propose(warm)
    instances = 0
    for i, r in enumerate(records):
        image = load_image(r.path)
        gt = gts[r.id]
        masks = [inst.segmentation for inst in gt.instances]
        instances += len(masks)
        gtb = gt_boxes(masks)
        for m in methods:
            if m in SS_MODES:
                boxes, wall, cpu = _ss_cached(image, r.path, SS_MODES[m], cache)
                tallies[m].add(wall, cpu, boxes, gtb)
            else:
                props, wall, cpu = _timed(ours[m].propose, image)
                iou = (mask_iou(props.masks, masks, gt.ignore) if masks
                       else np.zeros((len(props), 0)))
                tallies[m].add(wall, cpu, props.boxes.astype(np.float64), gtb, iou,
                               props.scores)
        print(f"\r{data} {split}: {i + 1}/{len(records)}", end="", flush=True)
    print()
    return {"data": str(data), "split": split, "images": len(records),
            "instances": instances,
            "sizes": {"median_hw": [float(np.median([r.height for r in records])),
                                    float(np.median([r.width for r in records]))]},
            "methods": {m: t.result() for m, t in tallies.items()},
            "settings": {m: s.settings() for m, s in ours.items()}}


def _ss_cached(image: np.ndarray, path: Path, mode: str,
               cache: Path | None) -> tuple[np.ndarray, float, float]:
    """Selective search boxes and (wall, CPU) seconds, from ``cache`` when there."""
    file = None
    if cache is not None:
        key = hashlib.sha256(f"{Path(path).resolve()}|{mode}|{image.shape}".encode())
        file = cache / f"ss-{key.hexdigest()[:20]}.npz"
        if file.is_file():
            z = np.load(file, allow_pickle=False)
            return z["boxes"], float(z["wall"]), float(z["cpu"])
    boxes, wall, cpu = _timed(selective_search, image, mode)
    if file is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(file, boxes=boxes, wall=wall, cpu=cpu)
    return boxes, wall, cpu


LABELS = {"fast": "wiseseg built-in `fast`", "accurate": "wiseseg built-in `accurate`",
          "ss-fast": "OpenCV selective search, fast (boxes)",
          "ss-quality": "OpenCV selective search, quality (boxes)"}


def table(res: dict) -> str:
    """Markdown table of one dataset's result."""
    def pct(v):
        return "—" if v is None else f"{100 * v:.1f}"

    lines = [
        f"**{res['data']}** `{res['split']}`: {res['images']} images (median "
        f"{res['sizes']['median_hw'][0]:.0f}×{res['sizes']['median_hw'][1]:.0f}), "
        f"{res['instances']} instances.",
        "",
        "| method | s / image | CPU s / image | proposals / image | box R@0.5 top-1000 / all | "
        "mask R@0.5 top-100 / 1000 / all | mask R@0.7 top-100 / 1000 / all | ABO top-1000 / all "
        "| objectness AUC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, q in res["methods"].items():
        box = f"{pct(q['box_recall_0.5']['1000'])} / {pct(q['box_recall_0.5']['all'])}"
        if "mask_recall" in q:
            r5 = " / ".join(pct(v) for v in q["mask_recall"]["0.5"].values())
            r7 = " / ".join(pct(v) for v in q["mask_recall"]["0.7"].values())
            abo = f"{pct(q['mask_abo']['1000'])} / {pct(q['mask_abo']['all'])}"
            auc = "—" if q["objectness_auc"] is None else f"{q['objectness_auc']:.3f}"
        else:
            r5 = r7 = "—"
            abo = f"(box {pct(q['box_abo'])})"
            auc = "—"
        lines.append(f"| {LABELS.get(m, m)} | {q['seconds_per_image']:.3f} | "
                     f"{q['cpu_seconds_per_image']:.3f} | {q['proposals_per_image']:.0f} | "
                     f"{box} | {r5} | {r7} | {abo} | {auc} |")
    return "\n".join(lines)


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True,
                               text=True, cwd=Path(__file__).parent).stdout.strip()
        return head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", nargs="+", help="dataset path(s) (COCO or VOC layout) or shapes")
    ap.add_argument("--split", default="val")
    ap.add_argument("--limit", type=int, default=None,
                    help="at most this many images per dataset (evenly spread)")
    ap.add_argument("--methods", nargs="+", default=["fast", "accurate", "ss-fast",
                                                       "ss-quality"],
                    help="fast / accurate (built-in qualities), ss-fast, ss-quality")
    ap.add_argument("--top-k", type=int, default=1000,
                    help="built-in proposals per image at most (default 1000)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="folder for selective search's boxes (reused by reruns)")
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    ap.add_argument("--md", type=Path, default=None, help="write the tables here")
    args = ap.parse_args()
    if any(m.startswith("ss-") for m in args.methods):  # only selective search needs it
        try:
            import cv2  # noqa: F401
        except ImportError:
            raise SystemExit("selective search needs OpenCV's contrib modules: "
                             "pip install -e '.[bench]'") from None
    results = [run(d, args.split, args.methods, args.limit, args.cache, args.top_k)
               for d in args.data]
    text = "\n\n".join(table(r) for r in results)
    header = (f"Commit {_commit()}; one thread per method; seconds are medians over "
              f"images.\n\n")
    print(header + text)
    if args.json:
        args.json.write_text(json.dumps({"commit": _commit(), "results": results}, indent=2))
    if args.md:
        args.md.write_text(header + text + "\n")


if __name__ == "__main__":
    main()
