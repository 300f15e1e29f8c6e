"""Peak stimulation (PRM, Zhou et al. CVPR 2018) and peak extraction: pure tensor functions.

A peak is found as PRM finds it: a cell is a peak when it is the maximum of the ``window ×
window`` neighbourhood centred on it (borders padded with −inf), and on ties only the first
maximum of the window in row-major order counts (PRM compares max-pooling *indices*, so a
plateau yields one peak, not one per cell); PRM's median filter then keeps peaks ≥ the map's
median. All functions accept maps with no labelled class and never fail on "no peak": every
map has at least its global maximum as a peak.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from wiseseg.models.cam_geometry import CamGeometry


def local_peaks(maps: Tensor, window: int = 3, median_filter: bool = True) -> Tensor:
    """Local maxima of each map, one per window (see the module docstring).

    Args:
        maps: float ``B×C×H×W`` class activation maps.
        window: odd side ``r`` of the square neighbourhood.
        median_filter: keep only peaks ≥ the map's median (PRM's peak filter; the lower
            median for an even number of cells, as ``torch.median``).

    Returns:
        bool ``B×C×H×W``, True at peaks (no gradient).
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"peak window must be a positive odd number, got {window}")
    maps = maps.detach()
    b, c, h, w = maps.shape
    if maps.numel() == 0:
        return torch.zeros_like(maps, dtype=torch.bool)
    # float32: max pooling's arg-max of half-precision maps has more ties, and CPU max
    # pooling does not take every dtype
    _, where = F.max_pool2d(maps.float(), kernel_size=window, stride=1, padding=window // 2,
                            return_indices=True)
    own = torch.arange(h * w, device=maps.device).view(1, 1, h, w)
    peaks = where == own
    if median_filter:
        median = maps.reshape(b, c, -1).median(dim=2).values.view(b, c, 1, 1)
        peaks &= maps >= median
    return peaks


STIMULATION_GRADIENTS = ("mean", "prm")


def peak_stimulation(maps: Tensor, window: int = 3, median_filter: bool = True,
                     gradient: str = "mean") -> tuple[Tensor, Tensor]:
    """Class scores as the mean of each map's peaks: ``s^c = (1/N^c) Σ_k M^c(i_k, j_k)``.

    The peak positions are found without gradient, so the loss gradient flows into the maps
    only at the peaks (PRM's peak stimulation).

    Args:
        maps: float ``B×C×H×W``.
        gradient: ``mean`` — the true gradient of the mean (each peak gets ``1/N^c`` of the
            score's gradient); ``prm`` — PRM's custom backward, which hands every peak the
            score's whole gradient (the gradient of the *sum*), so with SGD the maps learn
            ``N^c`` times faster than the mean's gradient says (PRM's learning rates assume
            it).

    Returns:
        ``(scores B×C, peaks bool B×C×H×W)``.
    """
    if gradient not in STIMULATION_GRADIENTS:
        raise ValueError(f"unknown peak stimulation gradient {gradient!r} "
                         f"(known: {', '.join(STIMULATION_GRADIENTS)})")
    peaks = local_peaks(maps, window, median_filter)
    weights = peaks.to(maps.dtype)
    count = weights.sum(dim=(2, 3)).clamp(min=1.0)
    total = (maps * weights).sum(dim=(2, 3))
    mean = total / count
    if gradient == "prm":
        return total - (total - mean).detach(), peaks  # value of the mean, gradient of the sum
    return mean, peaks


def multilabel_loss(scores: Tensor, labels: Tensor, pos_weight: Tensor | None = None) -> Tensor:
    """Multi-label soft-margin loss; ``labels`` float ``B×C`` in {0, 1}, or -1 where a class's
    presence is unknown (an image labelled for some classes only): those terms are left out,
    the others keep soft-margin's 1/C weight. An image with no label (a negative) pushes every
    class score down. ``pos_weight`` (float ``C``, > 0, or None for PRM's unweighted loss)
    multiplies each class's positive terms (:func:`class_balance_weights`)."""
    known = labels >= 0
    if pos_weight is None and bool(known.all()):
        return F.multilabel_soft_margin_loss(scores, labels)
    per = F.binary_cross_entropy_with_logits(scores, labels.clamp(min=0), reduction="none",
                                             pos_weight=pos_weight)
    return ((per * known).sum(dim=1) / scores.shape[1]).mean()


def class_balance_weights(labels: Tensor, exponent: float) -> Tensor | None:
    """Positive-term weights of a class-balanced :func:`multilabel_loss`: class ``c``'s
    positives weigh ``(negatives_c / positives_c) ** exponent``, counted over the images whose
    label for ``c`` is known, so that a rare class is not learnt mostly as "absent".

    Args:
        labels: float ``N×C`` image-level labels of the training images, as
            :func:`multilabel_loss` takes them (1 present, 0 absent, -1 unknown).
        exponent: 0 (None returned: the unweighted loss) … 1 (the classes' positive and
            negative terms weigh alike in total).

    Returns:
        float ``C`` weights, or None for exponent 0. A class without a positive or without a
        negative image keeps weight 1 (there is nothing to balance).
    """
    if not 0.0 <= exponent <= 1.0:
        raise ValueError(f"class-balance exponent must be within [0, 1], got {exponent!r}")
    if exponent == 0.0:
        return None
    pos = (labels == 1).sum(dim=0).to(torch.float64)
    neg = (labels == 0).sum(dim=0).to(torch.float64)
    w = torch.ones(labels.shape[1], dtype=torch.float64)
    both = (pos > 0) & (neg > 0)
    w[both] = (neg[both] / pos[both]) ** exponent
    return w.to(torch.float32)


@dataclass(frozen=True)
class Peak:
    """A peak in original-image pixels: class index (0-based), row ``y``, column ``x``
    (integers, inside the image), its CAM value, and the CAM cell ``(i, j)`` it came from
    (None when only the pixel is known, e.g. read from a file)."""

    category: int
    y: int
    x: int
    score: float
    cell: tuple[int, int] | None = None


def extract_peaks(cam: Tensor, classes: list[int] | None, image_size: tuple[int, int],
                  geometry: CamGeometry, window: int = 3, median_filter: bool = True,
                  min_score: float = float("-inf"), relative: float = 0.0,
                  max_per_class: int | None = None, exclusive: bool = False,
                  min_per_class: int = 0) -> list[Peak]:
    """Peaks of one image's CAM, mapped to the pixels of the image.

    Args:
        cam: float ``C×h×w`` activation maps of one image (the CAM of the image resized to
            the network input, after any sub-pixel upsampling).
        classes: class indices to take peaks from (the image-level label, or predicted
            classes); None for all.
        image_size: ``(H, W)`` of the image the peaks are reported in.
        geometry: where the cells sit (:mod:`wiseseg.models.cam_geometry`).
        min_score: keep peaks whose CAM value is above this (PRM's ``peak_threshold``,
            strict ``>``; PRM's demo uses 30 on its raw CAM scale).
        relative: also drop peaks below ``relative ×`` the class's highest peak.
        max_per_class: keep at most this many (highest first).
        exclusive: beyond PRM, keep a peak of class k only where k's CAM is the highest of
            the requested classes (two labelled classes cannot both claim one cell).
        min_per_class: beyond PRM, 1 gives a requested class that the rules above leave
            without a peak its strongest cell (the label says it is in the image, so it has
            at least one instance); 0: none added (PRM).

    Returns:
        Peaks sorted by class, then by decreasing score; empty when no class is given.
    """
    c, h, w = cam.shape
    if classes is None:
        classes = list(range(c))
    if not classes or h == 0 or w == 0:
        return []
    if tuple(geometry.cam_size) != (h, w):
        raise ValueError(f"CAM of {h}×{w} cells but the geometry is for {geometry.cam_size}")
    peaks = local_peaks(cam[None], window, median_filter)[0]
    if exclusive and len(set(classes)) > 1:
        chosen = sorted(set(classes))
        winner = torch.full_like(peaks, False)
        best = cam[chosen].argmax(dim=0)
        for n, k in enumerate(chosen):
            winner[k] = best == n
        peaks &= winner
    if min_per_class not in (0, 1):
        raise ValueError(f"min_per_class must be 0 or 1, got {min_per_class!r}")
    out: list[Peak] = []
    for k in sorted(set(classes)):
        ys, xs = torch.nonzero(peaks[k], as_tuple=True)
        vals = cam[k, ys, xs].detach().float()
        if vals.numel():
            keep = vals > min_score
            if relative > 0:
                keep &= vals >= relative * float(vals.max())
            ys, xs, vals = ys[keep], xs[keep], vals[keep]
        if vals.numel() == 0:
            if not min_per_class:
                continue
            best = int(cam[k].detach().float().argmax())  # the class's strongest cell
            ys, xs = torch.tensor([best // w]), torch.tensor([best % w])
            vals = cam[k, ys, xs].detach().float()
        order = torch.argsort(vals, descending=True)
        if max_per_class is not None:
            order = order[:max_per_class]
        for n in order.tolist():
            i, j = int(ys[n]), int(xs[n])
            y, x = geometry.cell_to_pixel(i, j, image_size)
            out.append(Peak(category=k, y=y, x=x, score=float(vals[n]), cell=(i, j)))
    return out
