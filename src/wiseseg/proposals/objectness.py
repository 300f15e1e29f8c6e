"""Objectness of the built-in generator's regions: a small learned model over region cues.

Every candidate region R (a set of superpixels of one over-segmentation) is described by
:data:`FEATURES`, cues that need no training themselves:

- ``log_area``, ``log_area_sq``: log10 of the area fraction (and its square: objects are
  neither specks nor the whole image);
- ``ring_colour``: ``1 - Σ min(h_R, h_ring)``, Lab colour-histogram contrast between R and the
  ring of superpixels adjacent to it (0 without neighbours): an object differs from its
  surroundings, a piece of an object does not;
- ``ring_deep``: ``1 - cos(f_R, f_ring)``, the same with the mean ImageNet-backbone feature
  (EfficientNet-Lite0) of R and of its ring — contrast in what things are, not only in colour;
- ``merge_colour``: ``C_merge``, colour contrast between R and the region it is merged with
  next in the hierarchy (the largest over the hierarchies R occurs in; 1 for a last region);
- ``outline_edge``, ``inner_edge``: mean edge strength (Lab gradient magnitude scaled by its
  image 99th percentile) along R's outline and across the superpixel boundaries inside R;
- ``border``: β, the fraction of R's outline on the image border; ``compact``:
  ``κ = min(1, 4π|R| / P²)``; ``fill``: area over box area;
- ``stable``: the fraction of the segmentation's hierarchies (grouping strategies) that formed
  R — a region every strategy agrees on is a segment of its own;
- ``log_parts``: log10 of R's number of superpixels.

The objectness is a one-hidden-layer perceptron over the standardised features,
``b = σ(w₂ · relu(W₁ x + b₁) + b₂)`` in [0, 1], trained to tell candidates with IoU ≥ 0.5 to
a ground-truth instance from the rest. Its parameters are in
:mod:`wiseseg.proposals.objectness_model` (plain numbers, written by
``benchmarks/proposals_objectness.py``, which also says on what data it was trained).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from wiseseg.proposals.grouping import Hierarchy
from wiseseg.proposals.superpixels import Superpixels

FEATURES = ("log_area", "log_area_sq", "ring_colour", "ring_deep", "merge_colour",
            "outline_edge", "inner_edge", "border", "compact", "fill", "stable", "log_parts")


def region_histograms(member: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Normalised histograms of regions from the histogram counts of their superpixels.

    Args:
        member: R×n bool regions over superpixels.
        counts: n×D whole-number histogram counts of the superpixels.

    Returns:
        R×D float32, rows sum to 1 (0 for an empty region).
    """
    # Sums of whole numbers below 2**24 are exact in float32 whatever order BLAS adds them
    # in, so the scores do not depend on the number of BLAS threads.
    total = member.astype(np.float32) @ counts
    norm = total.sum(axis=1, keepdims=True)
    return total / np.where(norm > 0, norm, 1.0)


def merge_contrast(hier: Hierarchy, counts: np.ndarray) -> np.ndarray:
    """``C_merge`` of every region of one hierarchy (R float32, in [0, 1]).

    Args:
        hier: the hierarchy.
        counts: n×D Lab histogram counts of the superpixels.
    """
    h = region_histograms(hier.member, counts)
    kids = hier.children
    merged = np.flatnonzero(kids[:, 0] >= 0)
    sibling = np.full(len(h), -1, np.int64)
    sibling[kids[merged, 0]] = kids[merged, 1]
    sibling[kids[merged, 1]] = kids[merged, 0]
    out = np.ones(len(h), np.float32)
    has = sibling >= 0
    out[has] = 1.0 - np.minimum(h[has], h[sibling[has]]).sum(axis=1)
    return np.clip(out, 0.0, 1.0)


def rings(member: np.ndarray, sp: Superpixels) -> np.ndarray:
    """R×n bool: the superpixels adjacent to each region and not in it."""
    i, j = sp.pairs[:, 0], sp.pairs[:, 1]
    adj = sparse.csr_matrix((np.ones(2 * len(i), np.float32), (np.r_[i, j], np.r_[j, i])),
                            shape=(sp.n, sp.n))
    # (adjᵀ · memberᵀ)ᵀ: the cost follows the adjacency's size, not n².
    return np.asarray((adj.T @ member.T.astype(np.float32)).T > 0) & ~member


def region_features(member: np.ndarray, sp: Superpixels, lab_counts: np.ndarray,
                    deep: np.ndarray, c_merge: np.ndarray, stable: np.ndarray) -> np.ndarray:
    """:data:`FEATURES` of regions of one over-segmentation.

    Args:
        member: R×n bool regions over the superpixels of ``sp``.
        sp: the over-segmentation (with ``pair_edge`` from an edge map in [0, 1]).
        lab_counts: n×75 Lab colour histogram counts of the superpixels.
        deep: n×F mean backbone feature of each superpixel.
        c_merge: R ``C_merge`` values (see :func:`merge_contrast`).
        stable: R fractions of the hierarchies that formed each region.

    Returns:
        R×len(FEATURES) float32.
    """
    ring = rings(member, sp)
    has_ring = ring.any(axis=1)
    m32, r32 = member.astype(np.float32), ring.astype(np.float32)
    ring_colour = 1.0 - np.minimum(region_histograms(member, lab_counts),
                                   region_histograms(ring, lab_counts)).sum(axis=1)
    weighted = deep * sp.sizes[:, None].astype(np.float32)
    f_in, f_ring = m32 @ weighted, r32 @ weighted
    cos = (f_in * f_ring).sum(axis=1) / np.maximum(
        np.linalg.norm(f_in, axis=1) * np.linalg.norm(f_ring, axis=1), 1e-12)
    ring_deep = 1.0 - cos

    area_px = m32.astype(np.float64) @ sp.sizes
    a, b = sp.pairs[:, 0], sp.pairs[:, 1]
    in_a, in_b = member[:, a], member[:, b]
    cut = (in_a ^ in_b).astype(np.float32)
    inner = (in_a & in_b).astype(np.float32)
    border = m32.astype(np.float64) @ sp.border
    cut_len = cut @ sp.pair_len.astype(np.float32)
    perimeter = cut_len + border
    outline_edge = (cut @ sp.pair_edge.astype(np.float32)) / np.maximum(cut_len, 1.0)
    inner_len = inner @ sp.pair_len.astype(np.float32)
    inner_edge = (inner @ sp.pair_edge.astype(np.float32)) / np.maximum(inner_len, 1.0)

    big = np.iinfo(np.int64).max
    y0 = np.where(member, sp.boxes[:, 0], big).min(axis=1)
    x0 = np.where(member, sp.boxes[:, 1], big).min(axis=1)
    y1 = np.where(member, sp.boxes[:, 2], -1).max(axis=1)
    x1 = np.where(member, sp.boxes[:, 3], -1).max(axis=1)
    box_area = np.maximum((y1 - y0) * (x1 - x0), 1).astype(np.float64)

    log_area = np.log10(np.maximum(area_px / max(float(sp.sizes.sum()), 1.0), 1e-9))
    out = np.stack([
        log_area, log_area ** 2,
        np.where(has_ring, ring_colour, 0.0),
        np.where(has_ring, ring_deep, 0.0),
        c_merge,
        outline_edge, inner_edge,
        border / np.maximum(perimeter, 1.0),
        np.minimum(1.0, 4 * np.pi * area_px / np.maximum(perimeter, 1.0) ** 2),
        area_px / box_area,
        stable,
        np.log10(np.maximum(member.sum(axis=1), 1)),
    ], axis=1)
    return out.astype(np.float32)


def score(features: np.ndarray, model: dict | None = None) -> np.ndarray:
    """Objectness in [0, 1] (R float32) of regions with :func:`region_features` rows.

    Args:
        features: R×len(FEATURES).
        model: parameters (default: the shipped
            :data:`wiseseg.proposals.objectness_model.MODEL`): ``features`` (names, which
            must equal :data:`FEATURES`), ``mean``, ``std``, ``w1`` (H×D), ``b1`` (H), ``w2``
            (H), ``b2``.
    """
    if model is None:
        from wiseseg.proposals.objectness_model import MODEL as model
    if tuple(model["features"]) != FEATURES:
        raise ValueError("objectness model: its features differ from this code's FEATURES")
    x = (features.astype(np.float64) - np.asarray(model["mean"])) / np.asarray(model["std"])
    hidden = np.maximum(x @ np.asarray(model["w1"]).T + np.asarray(model["b1"]), 0.0)
    logit = hidden @ np.asarray(model["w2"]) + float(model["b2"])
    # float32 rounding can make ties out of near-ties; the caller's stable sort keeps their
    # order deterministic.
    return (1.0 / (1.0 + np.exp(-np.clip(logit, -60, 60)))).astype(np.float32)
