"""Peak → candidate proposals, and the paper's Eq. 1 sampling (pure functions).

For a peak (i, j) of class c, the candidates are the proposals whose mask contains (i, j)
(after the size filter below), at most ``max_candidates`` of them, those of highest
objectness; the pseudo mask is one of them, picked with probability

    P(G_k) = b_k / Σ_j b_j                                   (paper, Eq. 1)

where b_k ≥ 0 is the proposal's objectness (uniform when all are 0). Modes:

- ``sample``: re-drawn every time the image is used in training (Algorithm 1; default);
- ``argmax``: always the highest-objectness candidate (what the official WISE code did);
- ``fixed``: one Eq. 1 draw made before training and kept.

Duplicate rule: peaks are visited from the highest CAM value down; a drawn mask whose IoU with
a mask already kept for the image is ≥ ``dup_iou`` (default 0.8) is dropped for this draw —
two peaks on one object yield one instance, whatever their classes, and the stronger peak
decides the class.

Why ``max_candidates``: a hierarchical proposal method nests many large regions around every
pixel, and their objectness is not small enough for Eq. 1 to ignore them. On the built-in data
(``benchmarks``) one Eq. 1 draw over all containing proposals scored mAP50 17.8 against the
ground truth, over the best 3 26.8 (the arg-max 31.8); the ``cpu`` preset uses 3, the ``paper``
preset (MCG, as the paper) all of them (100).

Size filter: candidates must cover at least ``max(min_area_px, min_area_frac × H·W)`` pixels
and at most ``max_area_frac × H·W`` (a proposal covering nearly the whole image is background,
not an object).

Beyond the paper, ``cam_overlap = e > 0`` weighs each candidate by how well it covers the
peak's class activation: with ``R = {CAM_c ≥ cam_threshold × CAM_c(peak)}`` (the class CAM
resampled onto the image), the candidate's score becomes ``b_k · IoU(G_k, R)^e``; the
``max_candidates`` best by that score are kept and it is their Eq. 1 weight. Objectness alone
cannot tell an object from its parts and from the larger regions around it, all of which
contain the peak; the CAM says where the class is. Chosen by ``benchmarks/candidate_choice.py``
on the training images of VOC, Penn-Fudan + negatives and the shapes (docs/cpu-preset.md);
``cam_overlap: 0`` is the paper's objectness alone.

Beyond the paper, ``prm_candidates = k > 0`` adds, for every peak, the ``k`` proposals of
highest PRM retrieval value (:mod:`wiseseg.inference.prm_baseline`: the peak's response map
inside and along the proposal, less its background) that do not contain the peak — the
objects a containing proposal cannot hold well (a ring's peak in its hole, thin or occluded
objects). They join the candidates with their objectness as Eq. 1 weight; a peak with no
containing proposal then still gets candidates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from wiseseg import rle


@dataclass(frozen=True)
class Candidate:
    segmentation: dict
    score: float


@dataclass
class PseudoInstance:
    """One peak with its candidate proposals, sorted by decreasing objectness."""

    category: int
    peak: tuple[int, int, float]  # y, x, CAM value
    candidates: list[Candidate]
    fixed: int = 0  # the candidate kept in mode "fixed"


@dataclass
class PseudoImage:
    image_id: int
    height: int
    width: int
    instances: list[PseudoInstance] = field(default_factory=list)


@dataclass(frozen=True)
class Drawn:
    instance: int  # index into PseudoImage.instances
    category: int
    segmentation: dict
    candidate: int
    peak_score: float


@dataclass
class CandidateStats:
    peaks: int = 0
    absent_class: int = 0
    without_candidate: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"peaks": self.peaks, "dropped_absent_class": self.absent_class,
                "without_candidate": len(self.without_candidate)}


def eq1_probabilities(scores: np.ndarray) -> np.ndarray:
    """P(G_k) = b_k / Σ b_j; uniform when Σ b_j = 0. ``scores`` must be ≥ 0."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return s
    if np.any(s < 0) or not np.all(np.isfinite(s)):
        raise ValueError(f"objectness must be finite and ≥ 0, got min {s.min()}")
    total = s.sum()
    return s / total if total > 0 else np.full(s.size, 1.0 / s.size)


def build_candidates(image_id: int, size: tuple[int, int], peaks: Iterable[dict],
                     labels: Iterable[int], proposal_masks: list[dict],
                     proposal_scores: np.ndarray, min_area_px: int = 16,
                     min_area_frac: float = 0.0005, max_area_frac: float = 0.9,
                     max_candidates: int = 100,
                     stats: CandidateStats | None = None,
                     retrieval: list[np.ndarray] | None = None,
                     prm_candidates: int = 0,
                     cams: Mapping[int, np.ndarray] | None = None,
                     cam_overlap: float = 0.0, cam_threshold: float = 0.3) -> PseudoImage:
    """Candidates of every peak of a labelled class (see the module docstring).

    Args:
        peaks: dicts with ``class`` (0-based), ``y``, ``x`` (pixels) and ``score``.
        labels: the image-level label; peaks of other classes are dropped and counted.
        proposal_masks: RLEs (at ``size``); proposal_scores: their objectness (≥ 0).
        stats: counters updated in place (peaks, dropped, peaks without any candidate).
        retrieval: per peak (in the order given), PRM's retrieval value of every proposal
            (``NaN`` where not computed); needed when ``prm_candidates > 0``.
        prm_candidates: extra candidates per peak by retrieval value (module docstring).
        cams: class index → float ``H×W`` CAM of that class on the image's pixels (centre of
            pixel (r, c) at (r, c)); needed for the labelled classes when ``cam_overlap > 0``.
        cam_overlap, cam_threshold: the CAM agreement weight (module docstring; 0: off).
    """
    if cam_overlap < 0:
        raise ValueError(f"cam_overlap must be ≥ 0, got {cam_overlap}")
    stats = stats if stats is not None else CandidateStats()
    h, w = size
    labels = set(labels)
    out = PseudoImage(image_id=image_id, height=h, width=w)
    if retrieval is not None:
        peaks = [{**p, "_retrieval": r} for p, r in zip(peaks, retrieval)]
    peaks = sorted(peaks, key=lambda p: -float(p["score"]))
    if not peaks:
        return out
    areas = rle.area(proposal_masks)
    lo = max(min_area_px, min_area_frac * h * w)
    ok = (areas >= lo) & (areas <= max_area_frac * h * w) if len(areas) else np.zeros(0, bool)
    keep = np.nonzero(ok)[0]
    kept = [proposal_masks[i] for i in keep]
    scores = np.asarray(proposal_scores, dtype=np.float64)[keep]
    # which proposals hold each peak, on the RLEs: decoding a thousand proposals of a
    # photograph cost more than everything else this function does
    held = rle.contains(kept, [(int(p["y"]), int(p["x"])) for p in peaks], size)
    for n, p in enumerate(peaks):
        stats.peaks += 1
        if int(p["class"]) not in labels:
            stats.absent_class += 1
            continue
        y, x = int(p["y"]), int(p["x"])
        inside = np.nonzero(held[:, n])[0]
        weight = scores.copy()  # objectness, × CAM agreement^e where cam_overlap > 0
        region = None
        if cam_overlap > 0:
            if cams is None or int(p["class"]) not in cams:
                raise ValueError(f"cam_overlap > 0 needs the CAM of class {p['class']}")
            region = _cam_region_rle(cams[int(p["class"])], size, y, x, cam_threshold)
            weight[inside] = _weighted(scores, kept, inside, region, cam_overlap)
        # by weight, ties (e.g. no activation at the peak) by objectness
        order = inside[np.lexsort((-scores[inside], -weight[inside]))][:max_candidates]
        if prm_candidates > 0 and p.get("_retrieval") is not None and len(keep):
            r = np.asarray(p["_retrieval"], dtype=np.float64)[keep]
            r[np.isin(np.arange(len(keep)), inside)] = np.nan  # containing ones are in
            best = np.argsort(-np.nan_to_num(r, nan=-np.inf), kind="stable")
            extra = np.asarray([i for i in best if np.isfinite(r[i])][:prm_candidates], int)
            if cam_overlap > 0:  # they do not contain the peak: the same CAM region
                weight[extra] = _weighted(scores, kept, extra, region, cam_overlap)
            order = np.concatenate([order, extra])
            order = order[np.lexsort((-scores[order], -weight[order]))]
        if order.size == 0:
            stats.without_candidate.append({"image_id": image_id, "class": int(p["class"]),
                                            "y": y, "x": x, "score": float(p["score"])})
            continue
        cands = [Candidate(kept[i], float(weight[i])) for i in order]
        out.instances.append(PseudoInstance(int(p["class"]), (y, x, float(p["score"])), cands))
    return out


def _weighted(scores: np.ndarray, masks: list[dict], idx: np.ndarray, region: dict | None,
              exponent: float) -> np.ndarray:
    """Objectness × CAM agreement^exponent of the proposals ``idx`` (RLEs ``masks``);
    agreement 0 when there is no CAM region (no activation at the peak)."""
    if not len(idx):
        return np.zeros(0)
    if region is None:
        return np.zeros(len(idx))
    agree = rle.iou([masks[i] for i in idx], [region])[:, 0]
    return scores[idx] * agree ** exponent


def cam_region(cam: np.ndarray, y: int, x: int, threshold: float) -> np.ndarray | None:
    """Where the CAM is at least ``threshold`` × its value at the peak pixel ``(y, x)``: a
    bool ``H×W`` mask, or None when the CAM at the peak is not positive (no activation)."""
    v = float(cam[y, x])
    if not np.isfinite(v) or v <= 0:
        return None
    return cam >= threshold * v


def _cam_region_rle(cam: np.ndarray, size: tuple[int, int], y: int, x: int,
                    threshold: float) -> dict | None:
    if tuple(cam.shape) != tuple(size):
        raise ValueError(f"masks of {tuple(size)} pixels, CAM of {cam.shape}")
    region = cam_region(cam, y, x, threshold)
    return None if region is None else rle.encode(region)


def cam_agreement(masks: np.ndarray, cam: np.ndarray, y: int, x: int,
                  threshold: float) -> np.ndarray:
    """IoU of each mask with the region where the CAM is at least ``threshold`` × its value
    at the peak pixel ``(y, x)`` (:func:`cam_region`; :func:`build_candidates` computes the
    same on the proposals' RLEs).

    Args:
        masks: bool or {0, 1} ``N×H×W``; cam: float ``H×W`` on the same pixels.
    Returns:
        float64 ``N`` in [0, 1] (0 for all when the CAM at the peak is ≤ 0; ``N = 0``: empty).
    """
    masks = np.asarray(masks)
    if masks.shape[0] == 0:
        return np.zeros(0)
    if masks.shape[1:] != cam.shape:
        raise ValueError(f"masks of {masks.shape[1:]} pixels, CAM of {cam.shape}")
    region = cam_region(cam, y, x, threshold)
    if region is None:
        return np.zeros(masks.shape[0])
    region = region.reshape(-1)
    flat = masks.reshape(masks.shape[0], -1).astype(bool, copy=False)
    inter = flat[:, region].sum(1, dtype=np.int64)
    union = flat.sum(1, dtype=np.int64) + int(region.sum()) - inter
    return inter / np.maximum(union, 1)


def fix_draws(images: Iterable[PseudoImage], seed: int) -> None:
    """Mode ``fixed``: one Eq. 1 draw per instance, made once with ``seed``."""
    for img in images:
        rng = np.random.default_rng([seed, img.image_id])
        for inst in img.instances:
            p = eq1_probabilities(np.array([c.score for c in inst.candidates]))
            inst.fixed = int(rng.choice(len(p), p=p))


def draw_instances(img: PseudoImage, rng: np.random.Generator, mode: str = "sample",
                   dup_iou: float = 0.8) -> list[Drawn]:
    """The pseudo masks of one use of an image (possibly none)."""
    if mode not in ("sample", "argmax", "fixed"):
        raise ValueError(f"unknown sampling mode {mode!r} (sample, argmax, fixed)")
    kept: list[Drawn] = []
    for n, inst in enumerate(img.instances):  # already ordered by decreasing peak score
        if mode == "sample":
            p = eq1_probabilities(np.array([c.score for c in inst.candidates]))
            k = int(rng.choice(len(p), p=p))
        elif mode == "argmax":
            k = 0
        else:
            k = inst.fixed
        seg = inst.candidates[k].segmentation
        if kept and rle.iou([seg], [d.segmentation for d in kept]).max() >= dup_iou:
            continue
        kept.append(Drawn(n, inst.category, seg, k, inst.peak[2]))
    return kept
