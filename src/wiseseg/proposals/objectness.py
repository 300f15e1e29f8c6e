"""Objectness of the built-in generator's regions, from image evidence only (nothing learned).

For a region R (a set of superpixels) with area fraction ``a`` of the image:

    b(R) = C_ring · C_merge · (1 - β/2) · κ^(1/4) · s(a)            (0 ≤ b ≤ 1)

- ``C_ring = 1 - Σ min(h_R, h_ring)``: colour contrast between R and the ring of superpixels
  adjacent to it (Lab histograms, 25 bins per channel, L1-normalised, histogram
  intersection). An object differs from what surrounds it; a piece of an object does not,
  since the rest of the object is part of its ring. 0 when R has no neighbours.
- ``C_merge = 1 - Σ min(h_R, h_S)``: contrast between R and the region S it is merged with
  next in the hierarchy (the largest such value over the hierarchies R occurs in; 1 for a
  hierarchy's last region). A region that lives long in the hierarchy, merged only with
  something unlike it, is a stable segment.
- ``β``: fraction of R's outline that lies on the image border (background regions run along
  the border; objects mostly do not).
- ``κ = min(1, 4π |R| / P²)``: compactness, P the outline length in pixel sides.
- ``s(a)``: size prior, a ramp in log area from 0 at ``a = 5·10⁻⁴`` to 1 at ``5·10⁻³``,
  times a ramp from 1 at ``a = 0.5`` down to 0 at ``a = 0.9`` (the whole image is no object).

The factors and constants were chosen on the shapes train split; the benchmark reports the
ROC AUC of ``b`` (separating proposals with IoU ≥ 0.5 to some ground-truth object from the
rest) on shapes val. Boundary edge strength and superpixel straddling were measured too and
ranked worse (they reward fragments of textured objects), so they are not used.
"""

from __future__ import annotations

import numpy as np

from wiseseg.proposals.grouping import Hierarchy
from wiseseg.proposals.superpixels import Superpixels

TINY_AREA = 5e-4
SMALL_AREA = 5e-3
LARGE_AREA = 0.5
HUGE_AREA = 0.9
BORDER_WEIGHT = 0.5
COMPACTNESS_POWER = 0.25


def region_histograms(member: np.ndarray, sizes: np.ndarray, hist: np.ndarray) -> np.ndarray:
    """Histograms of regions from those of their superpixels.

    Args:
        member: R×n bool regions over superpixels.
        sizes: n superpixel pixel counts.
        hist: n×D superpixel histograms, rows sum to 1.

    Returns:
        R×D float64, rows sum to 1 (0 for an empty region).
    """
    # float64: BLAS sums in a thread-count-dependent order, and float32 rounding of that
    # would make scores differ between a worker process and the main one.
    weighted = (member * sizes.astype(np.float64)) @ hist.astype(np.float64)
    total = weighted.sum(axis=1, keepdims=True)
    return weighted / np.where(total > 0, total, 1.0)


def merge_contrast(hier: Hierarchy, sizes: np.ndarray, hist: np.ndarray) -> np.ndarray:
    """``C_merge`` of every region of one hierarchy (R float64, in [0, 1])."""
    h = region_histograms(hier.member, sizes, hist)
    kids = hier.children
    merged = np.flatnonzero(kids[:, 0] >= 0)
    sibling = np.full(len(h), -1, np.int64)
    sibling[kids[merged, 0]] = kids[merged, 1]
    sibling[kids[merged, 1]] = kids[merged, 0]
    out = np.ones(len(h))
    has = sibling >= 0
    out[has] = 1.0 - np.minimum(h[has], h[sibling[has]]).sum(axis=1)
    return np.clip(out, 0.0, 1.0)


def ring_contrast(member: np.ndarray, sp: Superpixels, hist: np.ndarray) -> np.ndarray:
    """``C_ring`` of regions (R float64 in [0, 1]; 0 for a region without neighbours)."""
    adj = np.zeros((sp.n, sp.n), np.float32)
    adj[sp.pairs[:, 0], sp.pairs[:, 1]] = 1.0
    adj[sp.pairs[:, 1], sp.pairs[:, 0]] = 1.0
    ring = ((member.astype(np.float32) @ adj) > 0) & ~member
    h_in = region_histograms(member, sp.sizes, hist)
    h_ring = region_histograms(ring, sp.sizes, hist)
    out = 1.0 - np.minimum(h_in, h_ring).sum(axis=1)
    out[~ring.any(axis=1)] = 0.0
    return np.clip(out, 0.0, 1.0)


def shape_terms(member: np.ndarray, sp: Superpixels) -> tuple[np.ndarray, ...]:
    """Area fraction, border fraction β and compactness κ of regions (R float64 each)."""
    area = member.astype(np.float64) @ sp.sizes
    cut = member[:, sp.pairs[:, 0]] ^ member[:, sp.pairs[:, 1]]
    border = member.astype(np.float64) @ sp.border
    perimeter = cut.astype(np.float64) @ sp.pair_len + border
    beta = border / np.maximum(perimeter, 1.0)
    kappa = np.minimum(1.0, 4 * np.pi * area / np.maximum(perimeter, 1.0) ** 2)
    return area / max(float(sp.sizes.sum()), 1.0), beta, kappa


def size_prior(area: np.ndarray) -> np.ndarray:
    """``s(a)`` for area fractions ``a`` (values in [0, 1])."""
    lo, hi = np.log(TINY_AREA), np.log(SMALL_AREA)
    small = np.clip((np.log(np.maximum(area, 1e-12)) - lo) / (hi - lo), 0.0, 1.0)
    large = np.clip((HUGE_AREA - area) / (HUGE_AREA - LARGE_AREA), 0.0, 1.0)
    return small * large


def objectness(member: np.ndarray, sp: Superpixels, lab_hist: np.ndarray,
               c_merge: np.ndarray) -> np.ndarray:
    """``b(R)`` of regions of one over-segmentation (R float32 in [0, 1]).

    Args:
        member: R×n bool regions over the superpixels of ``sp``.
        sp: the over-segmentation.
        lab_hist: n×75 Lab colour histograms of the superpixels.
        c_merge: R ``C_merge`` values (see :func:`merge_contrast`).
    """
    area, beta, kappa = shape_terms(member, sp)
    score = (ring_contrast(member, sp, lab_hist) * c_merge
             * (1.0 - BORDER_WEIGHT * beta) * kappa ** COMPACTNESS_POWER * size_prior(area))
    return score.astype(np.float32)
