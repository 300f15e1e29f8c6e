"""Proposal quality against ground truth (class-agnostic).

- **ABO**: the mean over all ground-truth instances of the best mask IoU with any proposal of
  its image (0 when the image has none).
- **recall@t, top-k**: the share of ground-truth instances with IoU ≥ t to one of the first k
  proposals of their image (k = all: every stored proposal).
- **objectness AUC**: ROC AUC of the proposals' scores as a detector of "IoU ≥ 0.5 with some
  ground-truth instance", pooled over all proposals of all images (Mann–Whitney rank formula,
  ties counted half). 0.5 is chance; undefined (None) when one of the two groups is empty.
- **proposals per image** and **seconds per image** (the source's own time, from the store).

Pixels in the ground truth's ignore region (VOC void, COCO crowd) are removed from both masks
before the IoU, as in the project's mAP.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wiseseg import rle
from wiseseg.data.dataset import Dataset
from wiseseg.proposals.store import ProposalStore
from wiseseg.rle import RLE


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` for the boolean labels ``positive``; None if a class is empty."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def mask_iou(props: Sequence[RLE], gts: Sequence[RLE], ignore: RLE | None) -> np.ndarray:
    """P×G IoU with the ``ignore`` pixels removed from both sides (float64)."""
    iou = rle.iou(props, gts)
    if ignore is None or not len(props) or not len(gts) or rle.area([ignore])[0] == 0:
        return iou
    a_p = rle.area(props)
    a_g = rle.area(gts)
    inter = iou * (a_p[:, None] + a_g[None, :]) / (1.0 + iou)
    p_void = rle.intersection_over_first(props, [ignore])[:, 0] * a_p
    g_void = rle.intersection_over_first(gts, [ignore])[:, 0] * a_g
    both_void = np.zeros_like(inter)
    if np.any(g_void > 0):  # ground truth overlapping its own ignore region (rare)
        void = rle.decode(ignore)
        g_in_void = [rle.encode(rle.decode(g) & void) for g in gts]
        both_void = (rle.intersection_over_first(props, g_in_void)
                     * a_p[:, None])
    inter = inter - both_void
    union = (a_p - p_void)[:, None] + (a_g - g_void)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def proposal_quality(store: ProposalStore, dataset: Dataset, split: str,
                     top_ks: Sequence[int | None] = (10, 100, None),
                     thresholds: Sequence[float] = (0.5, 0.7),
                     image_ids: Sequence[int] | None = None) -> dict:
    """Quality of the stored proposals of ``split`` (see the module docstring).

    ``image_ids`` restricts the evaluation to those images of the split (default: all).

    Returns:
        ``{"images", "instances", "proposals_per_image", "seconds_per_image", "abo",
        "recall": {"0.5": {"10": r, "100": r, "all": r}, "0.7": {...}}, "objectness_auc",
        "positives"}``.
    """
    records = dataset.records(split)
    if image_ids is not None:
        wanted = set(image_ids)
        records = tuple(r for r in records if r.id in wanted)
    gts = dataset.ground_truth(split)
    best = {k: [] for k in top_ks}
    best_all = []
    scores, positive, counts, seconds = [], [], [], []
    for r in records:
        props = store.get(r.id, size=(r.height, r.width))
        gt = gts[r.id]
        masks = [i.segmentation for i in gt.instances]
        iou = mask_iou(props.masks, masks, gt.ignore)
        counts.append(len(props))
        seconds.append(store.seconds(r.id))
        scores.append(props.scores)
        positive.append(iou.max(axis=1) >= 0.5 if masks else np.zeros(len(props), bool))
        best_all.append(iou.max(axis=0) if len(iou) else np.zeros(len(masks)))
        for k in top_ks:
            head = iou[:k] if k is not None else iou
            best[k].append(head.max(axis=0) if len(head) else np.zeros(len(masks)))

    def name(k: int | None) -> str:
        return "all" if k is None else str(k)

    flat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in best.items()}
    everything = np.concatenate(best_all) if best_all else np.zeros(0)
    n_inst = len(everything)
    all_pos = np.concatenate(positive) if positive else np.zeros(0, bool)
    return {
        "images": len(records),
        "instances": n_inst,
        "proposals_per_image": float(np.mean(counts)) if counts else 0.0,
        "seconds_per_image": float(np.mean(seconds)) if seconds else 0.0,
        "abo": float(everything.mean()) if n_inst else None,
        "recall": {f"{t:g}": {name(k): float((flat[k] >= t).mean()) if n_inst else None
                              for k in top_ks} for t in thresholds},
        "objectness_auc": roc_auc(np.concatenate(scores) if scores else np.zeros(0),
                                  all_pos),
        "positives": int(all_pos.sum()),
    }


def format_quality(q: dict) -> str:
    """A short human-readable table of :func:`proposal_quality`'s result."""
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}"

    lines = [f"images {q['images']}, instances {q['instances']}, "
             f"{q['proposals_per_image']:.1f} proposals/image, "
             f"{q['seconds_per_image']:.3f} s/image",
             f"ABO {pct(q['abo'])}   objectness AUC "
             f"{'n/a' if q['objectness_auc'] is None else format(q['objectness_auc'], '.3f')}"]
    for t, row in q["recall"].items():
        cells = "  ".join(f"top-{k}: {pct(v)}" for k, v in row.items())
        lines.append(f"recall@{t}  {cells}")
    return "\n".join(lines)
