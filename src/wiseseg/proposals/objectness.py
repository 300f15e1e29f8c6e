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

The factors and constants were chosen on the shapes train split, where the single factors
separate candidates with IoU ≥ 0.5 to a ground-truth object from the rest with ROC AUC 0.82
(C_ring), 0.73 (C_merge), 0.72 (size), 0.58 (κ) and 0.56 (1 - β), and the product with 0.87.
Two other cues were measured and left out: the mean edge strength along the outline against
the interior (AUC 0.67 alone, no gain in the product: stripes and checks of textured objects
have strong edges of their own) and superpixel straddling (higher AUC, but it pushed whole
textured objects out of the top 300). ``benchmarks/proposals.py`` reports the AUC of ``b``
on shapes val.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from wiseseg.proposals.grouping import Hierarchy
from wiseseg.proposals.superpixels import Superpixels

TINY_AREA = 5e-4
SMALL_AREA = 5e-3
LARGE_AREA = 0.5
HUGE_AREA = 0.9
BORDER_WEIGHT = 0.5
COMPACTNESS_POWER = 0.25


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


def ring_contrast(member: np.ndarray, sp: Superpixels, counts: np.ndarray) -> np.ndarray:
    """``C_ring`` of regions (R float32 in [0, 1]; 0 for a region without neighbours).

    Args:
        member: R×n bool regions.
        sp: the over-segmentation.
        counts: n×D Lab histogram counts of the superpixels.
    """
    i, j = sp.pairs[:, 0], sp.pairs[:, 1]
    adj = sparse.csr_matrix((np.ones(2 * len(i), np.float32), (np.r_[i, j], np.r_[j, i])),
                            shape=(sp.n, sp.n))
    # (adjᵀ · memberᵀ)ᵀ: the cost follows the adjacency's size, not n².
    ring = np.asarray((adj.T @ member.T.astype(np.float32)).T > 0) & ~member
    out = 1.0 - np.minimum(region_histograms(member, counts),
                           region_histograms(ring, counts)).sum(axis=1)
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


def objectness(member: np.ndarray, sp: Superpixels, lab_counts: np.ndarray,
               c_merge: np.ndarray) -> np.ndarray:
    """``b(R)`` of regions of one over-segmentation (R float32 in [0, 1]).

    Args:
        member: R×n bool regions over the superpixels of ``sp``.
        sp: the over-segmentation.
        lab_counts: n×75 Lab colour histogram counts of the superpixels.
        c_merge: R ``C_merge`` values (see :func:`merge_contrast`).
    """
    area, beta, kappa = shape_terms(member, sp)
    score = (ring_contrast(member, sp, lab_counts) * c_merge
             * (1.0 - BORDER_WEIGHT * beta) * kappa ** COMPACTNESS_POWER * size_prior(area))
    return score.astype(np.float32)
