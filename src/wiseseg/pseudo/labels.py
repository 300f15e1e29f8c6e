"""Pseudo labels as a COCO instances file, built from peaks and proposals.

The file is valid COCO: ``images``, ``categories`` and one annotation per peak whose
``segmentation`` is its best candidate (highest Eq. 1 weight; so detectron2 / mmdetection can
train on it as is). Each annotation also carries ``candidates`` (``[{segmentation, score}]``,
the Eq. 1 choices, ``score`` their Eq. 1 weight: the objectness, times the CAM agreement when
``cam_overlap > 0``), ``peak`` (``{y, x, score}``) and ``ignore: 1`` when, under the duplicate rule,
its arg-max mask duplicates a stronger peak's (mmdetection skips such annotations). The
top-level ``wiseseg`` key holds the settings and the counts of peaks dropped (class absent from
the image-level label) and peaks without any candidate, listed one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wiseseg import rle
from wiseseg.data.dataset import Dataset, WeakSplit
from wiseseg.errors import DataError
from wiseseg.io import atomic_write_json, read_json
from wiseseg.pseudo.sampling import (
    Candidate,
    CandidateStats,
    PseudoImage,
    PseudoInstance,
    build_candidates,
    draw_instances,
)


def build_pseudo_images(split: WeakSplit, peaks_by_id: dict[int, list[dict]], store,
                        cfg: dict[str, Any], progress: bool = True,
                        retrieval_fn: Callable | None = None,
                        cam_fn: Callable | None = None
                        ) -> tuple[list[PseudoImage], CandidateStats]:
    """Candidates for every image of the split (peaks from stage 1, proposals from ``store``,
    a :class:`~wiseseg.proposals.ProposalStore`).

    ``retrieval_fn(record, peaks, proposal_masks) -> [values per proposal] per peak`` gives
    PRM's retrieval values when ``cfg["prm_candidates"] > 0``; ``cam_fn(record) -> {class:
    H×W CAM on the image}`` the CAMs of its labelled classes when ``cfg["cam_overlap"] > 0``
    (see :func:`~wiseseg.pseudo.sampling.build_candidates`).
    """
    stats = CandidateStats()
    images = []
    k = int(cfg.get("prm_candidates", 0) or 0)
    if k > 0 and retrieval_fn is None:
        raise ValueError("pseudo.prm_candidates > 0 needs the classifier's response maps")
    overlap = float(cfg.get("cam_overlap", 0.0) or 0.0)
    if overlap > 0 and cam_fn is None:
        raise ValueError("pseudo.cam_overlap > 0 needs the classifier's CAMs")
    for rec in tqdm(split.records, desc="pseudo masks", unit="img", disable=not progress):
        peaks = peaks_by_id.get(rec.id, [])
        props = store.get(rec.id, size=(rec.height, rec.width)) if peaks else None
        retrieval = retrieval_fn(rec, peaks, props.masks) if k > 0 and peaks else None
        cams = cam_fn(rec) if overlap > 0 and peaks else None
        images.append(build_candidates(
            rec.id, (rec.height, rec.width), peaks, rec.labels,
            props.masks if props is not None else [],
            props.scores if props is not None else np.zeros(0),
            min_area_px=int(cfg["min_area_px"]), min_area_frac=float(cfg["min_area_frac"]),
            max_area_frac=float(cfg["max_area_frac"]),
            max_candidates=int(cfg["max_candidates"]), stats=stats,
            retrieval=retrieval, prm_candidates=k, cams=cams, cam_overlap=overlap,
            cam_threshold=float(cfg.get("cam_threshold", 0.3))))
    return images, stats


def to_coco(images: Iterable[PseudoImage], split: WeakSplit, category_ids: list[int],
            stats: CandidateStats, settings: dict) -> dict:
    """The pseudo-label COCO dict (see the module docstring)."""
    by_id = split.by_id()
    anns: list[dict] = []
    coco_images = []
    rng = np.random.default_rng(0)  # unused by argmax; draw_instances needs a generator
    for img in images:
        rec = by_id[img.image_id]
        coco_images.append({"id": rec.id, "file_name": rec.name, "height": rec.height,
                            "width": rec.width})
        kept = {d.instance for d in draw_instances(img, rng, mode="argmax",
                                                   dup_iou=settings["dup_iou"])}
        for n, inst in enumerate(img.instances):
            seg = inst.candidates[0].segmentation
            area = float(rle.area([seg])[0])
            anns.append({
                "id": len(anns) + 1, "image_id": rec.id,
                "category_id": category_ids[inst.category], "segmentation": seg,
                "area": area, "bbox": [float(v) for v in rle.to_bbox([seg])[0]],
                "iscrowd": 0, "score": inst.peak[2],
                "ignore": 0 if n in kept else 1,
                "peak": {"y": inst.peak[0], "x": inst.peak[1], "score": inst.peak[2]},
                "candidates": [{"segmentation": c.segmentation, "score": c.score}
                               for c in inst.candidates],
            })
    return {
        "info": {"description": "wiseseg pseudo masks (WISE, Eq. 1 candidates per peak)"},
        "images": coco_images,
        "categories": [{"id": cid, "name": n} for cid, n in zip(category_ids, split.classes)],
        "annotations": anns,
        "wiseseg": {"settings": settings, **stats.as_dict(),
                    "peaks_without_candidate": stats.without_candidate},
    }


def pseudo_view(path: str | Path, ds: Dataset, split: str) -> WeakSplit:
    """The images Mask R-CNN trains on with pseudo-label file ``path``: the split's
    :meth:`~wiseseg.data.dataset.Dataset.segmenter_view` plus the partially labelled images
    the file lists (``pseudo.partial_labels``: those stage 1 found complete)."""
    data = read_json(path, "pseudo-label COCO JSON")
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(path, "not a COCO instances file (no 'images' list)")
    listed = {im.get("id") for im in images if isinstance(im, dict)}
    return ds.segmenter_view(split, "pseudo",
                             include={r.id for r in ds.partially_labelled(split)
                                      if r.id in listed})


def write_pseudo(path: str | Path, coco: dict) -> Path:
    return atomic_write_json(path, coco)


def read_pseudo(path: str | Path, split: WeakSplit, category_ids: list[int]
                ) -> dict[int, PseudoImage]:
    """Pseudo images by image id from a pseudo-label file; checks it fits the split.

    Annotations without ``candidates`` (a plain COCO file from elsewhere) get their own
    ``segmentation`` as the single candidate.
    """
    data = read_json(path, "pseudo-label COCO JSON")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError(path, "not a COCO instances file (no 'annotations' list)")
    index = {cid: i for i, cid in enumerate(category_ids)}
    by_id = split.by_id()
    out = {rid: PseudoImage(rid, r.height, r.width) for rid, r in by_id.items()}
    for n, a in enumerate(data["annotations"]):
        iid, cid = a.get("image_id"), a.get("category_id")
        if iid not in by_id:
            raise DataError(path, f"annotation {n} (id {a.get('id')}): image_id {iid!r} is "
                            f"not in split {split.split!r}")
        if cid not in index:
            raise DataError(path, f"annotation {n} (id {a.get('id')}): unknown category_id "
                            f"{cid!r}")
        rec = by_id[iid]
        cands = a.get("candidates") or [{"segmentation": a.get("segmentation"),
                                         "score": 1.0}]
        parsed = []
        for c in cands:
            seg = c.get("segmentation")
            if not isinstance(seg, dict) or [int(s) for s in seg.get("size", [])] != \
                    [rec.height, rec.width]:
                raise DataError(path, f"annotation {n}: candidate mask is not an RLE of size "
                                f"[{rec.height}, {rec.width}]")
            bad = rle.problem(seg)
            if bad:
                raise DataError(path, f"annotation {n}: bad candidate RLE ({bad})")
            score = float(c.get("score", 0.0))
            if not np.isfinite(score) or score < 0:
                raise DataError(path, f"annotation {n}: candidate score {score} is not ≥ 0")
            parsed.append(Candidate(rle.normalize(seg), score))
        parsed.sort(key=lambda c: -c.score)
        peak = a.get("peak") or {}
        out[iid].instances.append(PseudoInstance(
            index[cid], (int(peak.get("y", 0)), int(peak.get("x", 0)),
                         float(peak.get("score", a.get("score", 0.0)))), parsed))
    for img in out.values():
        img.instances.sort(key=lambda i: -i.peak[2])
    return out
