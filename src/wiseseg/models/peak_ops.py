"""Peak stimulation (PRM, Zhou et al. CVPR 2018) and peak extraction: pure tensor functions.

All functions accept maps with no labelled class and never fail on "no peak": every map has at
least its global maximum as a peak (a constant map makes every position a peak).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def local_peaks(maps: Tensor, window: int = 3, median_filter: bool = True) -> Tensor:
    """Local maxima of each map.

    Args:
        maps: float ``B×C×H×W`` class activation maps.
        window: odd side ``r`` of the square neighbourhood; a position is a peak when it equals
            the maximum of its window (plateaus count, borders padded with −inf).
        median_filter: keep only peaks ≥ the map's median (PRM's peak filter).

    Returns:
        bool ``B×C×H×W``, True at peaks (no gradient).
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"peak window must be a positive odd number, got {window}")
    maps = maps.detach()
    pooled = F.max_pool2d(maps, kernel_size=window, stride=1, padding=window // 2)
    peaks = maps >= pooled
    if median_filter:
        b, c = maps.shape[:2]
        median = maps.reshape(b, c, -1).median(dim=2).values.view(b, c, 1, 1)
        peaks &= maps >= median
    return peaks


def peak_stimulation(maps: Tensor, window: int = 3, median_filter: bool = True
                     ) -> tuple[Tensor, Tensor]:
    """Class scores as the mean of each map's peaks: ``s^c = (1/N^c) Σ_k M^c(i_k, j_k)``.

    The peak positions are found without gradient, so the loss gradient flows into the maps
    only at the peaks (PRM's peak stimulation).

    Args:
        maps: float ``B×C×H×W``.

    Returns:
        ``(scores B×C, peaks bool B×C×H×W)``.
    """
    peaks = local_peaks(maps, window, median_filter)
    weights = peaks.to(maps.dtype)
    count = weights.sum(dim=(2, 3)).clamp(min=1.0)
    scores = (maps * weights).sum(dim=(2, 3)) / count
    return scores, peaks


def multilabel_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Multi-label soft-margin loss; ``labels`` float ``B×C`` in {0, 1}. An image with no
    label (a negative) pushes every class score down."""
    return F.multilabel_soft_margin_loss(scores, labels)


@dataclass(frozen=True)
class Peak:
    """A peak in original-image pixels: class index (0-based), row ``y``, column ``x``
    (integers, inside the image) and its CAM value."""

    category: int
    y: int
    x: int
    score: float


def extract_peaks(cam: Tensor, classes: list[int] | None, image_size: tuple[int, int],
                  window: int = 3, median_filter: bool = True, min_score: float = 0.0,
                  relative: float = 0.0, max_per_class: int | None = None) -> list[Peak]:
    """Peaks of one image's CAM mapped to original pixels.

    Args:
        cam: float ``C×h×w`` activation maps of one image (any spatial size; the image is
            assumed to span the map, i.e. the map was computed on a resized copy of it).
        classes: class indices to take peaks from (the image-level label, or predicted
            classes); None for all.
        image_size: ``(H, W)`` of the original image.
        min_score: absolute CAM threshold.
        relative: also drop peaks below ``relative ×`` the class's highest peak.
        max_per_class: keep at most this many (highest first).

    Returns:
        Peaks sorted by class, then by decreasing score; empty when no class is given.
    """
    c, h, w = cam.shape
    if classes is None:
        classes = list(range(c))
    if not classes or h == 0 or w == 0:
        return []
    H, W = image_size
    peaks = local_peaks(cam[None], window, median_filter)[0]
    out: list[Peak] = []
    for k in sorted(set(classes)):
        ys, xs = torch.nonzero(peaks[k], as_tuple=True)
        vals = cam[k, ys, xs].detach()
        if vals.numel() == 0:
            continue
        keep = vals >= max(min_score, relative * float(vals.max()))
        ys, xs, vals = ys[keep], xs[keep], vals[keep]
        order = torch.argsort(vals, descending=True)
        if max_per_class is not None:
            order = order[:max_per_class]
        for i in order.tolist():
            # The centre of map cell (i, j) in original pixels.
            y = min(H - 1, max(0, int((float(ys[i]) + 0.5) * H / h)))
            x = min(W - 1, max(0, int((float(xs[i]) + 0.5) * W / w)))
            out.append(Peak(category=k, y=y, x=x, score=float(vals[i])))
    return out
