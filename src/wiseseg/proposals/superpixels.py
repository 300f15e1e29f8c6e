"""Over-segmentation and the per-superpixel statistics the grouping and the objectness use.

Everything here is computed with whole-image numpy operations (``bincount`` over label keys);
there is no loop over pixels, and loops over superpixels are avoided as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.color import rgb2lab
from skimage.segmentation import felzenszwalb

COLOUR_SPACES = ("rgb", "lab", "hsv")
COLOUR_BINS = 25  # per channel, as selective search
TEXTURE_BINS = 10  # per channel and orientation, as selective search


def colour_spaces(image: np.ndarray, names: set[str] | list[str]) -> dict[str, np.ndarray]:
    """The image in the colour spaces ``names``, every channel scaled to [0, 1].

    Args:
        image: H×W×3 uint8 RGB.
        names: any of ``rgb``, ``lab``, ``hsv``.

    Returns:
        name → H×W×3 float32 in [0, 1] (HSV hue wraps around at 1).
    """
    unknown = set(names) - set(COLOUR_SPACES)
    if unknown:
        raise ValueError(f"unknown colour space(s) {sorted(unknown)} (known: "
                         f"{', '.join(COLOUR_SPACES)})")
    rgb01 = image.astype(np.float32) / 255.0
    out = {}
    if "rgb" in names:
        out["rgb"] = rgb01
    if "lab" in names:
        lab = rgb2lab(rgb01)
        scaled = np.empty_like(rgb01)
        scaled[..., 0] = lab[..., 0] / 100.0
        scaled[..., 1:] = (lab[..., 1:] + 128.0) / 255.0
        out["lab"] = np.clip(scaled, 0.0, 1.0, out=scaled)
    if "hsv" in names:
        # Pillow's C conversion is several times faster than skimage's, and 8 bits per
        # channel are finer than the 25-bin histograms and the segmentation need.
        hsv = Image.fromarray(np.ascontiguousarray(image)).convert("HSV")
        out["hsv"] = np.asarray(hsv, dtype=np.float32) / 255.0
    return out


def segment(image01: np.ndarray, scale: float, sigma: float, min_size: int) -> np.ndarray:
    """Felzenszwalb–Huttenlocher graph segmentation (scikit-image).

    Args:
        image01: H×W×3 float in [0, 1] (``scale`` is then in the paper's 0–255 units).

    Returns:
        H×W int32 labels 0..n-1, every label present.
    """
    labels = felzenszwalb(image01, scale=scale, sigma=sigma, min_size=min_size)
    # Consecutive ids: felzenszwalb's are already (checked by a count, cheaper than a sort);
    # the remap keeps the invariant whatever the library's version does.
    if labels.min() >= 0 and np.bincount(labels.ravel()).all():
        return labels.astype(np.int32)
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int32)


def _channel_bins(image01: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((image01 * bins).astype(np.int64), bins - 1)


def colour_histograms(labels: np.ndarray, n: int, image01: np.ndarray,
                      normalise: bool = True) -> np.ndarray:
    """Selective search colour histograms: 25 bins per channel.

    Returns:
        n×75 float32: rows sum to 1, or (``normalise=False``) pixel counts, whole numbers
        (3 per pixel: one per channel).
    """
    b = _channel_bins(image01, COLOUR_BINS)
    lab = labels.ravel().astype(np.int64) * (3 * COLOUR_BINS)
    keys = np.concatenate([lab + c * COLOUR_BINS + b[..., c].ravel() for c in range(3)])
    h = np.bincount(keys, minlength=n * 3 * COLOUR_BINS).reshape(n, -1).astype(np.float32)
    return h / np.maximum(h.sum(axis=1, keepdims=True), 1.0) if normalise else h


def _gradient(a: np.ndarray, axis: int) -> np.ndarray:
    """Central differences along ``axis``; zero along an axis one pixel long."""
    if a.shape[axis] < 2:
        return np.zeros_like(a)
    return np.gradient(a, axis=axis)


def orientation_responses(image01: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Gaussian-derivative responses in 8 orientations per channel (SIFT-like, as selective
    search's texture): 4 directions, positive and negative parts kept apart.

    Returns:
        H×W×24 float32, each response scaled to [0, 1] by its image maximum.
    """
    smooth = ndimage.gaussian_filter(image01, sigma=(sigma, sigma, 0))
    gy, gx = _gradient(smooth, 0), _gradient(smooth, 1)
    diag = np.float32(np.sqrt(0.5))
    directions = (gx, (gx + gy) * diag, gy, (gy - gx) * diag)
    out = []
    for d in directions:
        out.append(np.maximum(d, 0.0))
        out.append(np.maximum(-d, 0.0))
    resp = np.concatenate(out, axis=2).astype(np.float32)
    peak = resp.reshape(-1, resp.shape[2]).max(axis=0)
    return resp / np.where(peak > 0, peak, 1.0)


def texture_codes(responses: np.ndarray) -> np.ndarray:
    """Per pixel and response channel, the histogram slot ``channel * 10 + bin``.

    Computed once per image and shared by the texture histograms of every over-segmentation.

    Returns:
        (H·W)×C int32.
    """
    c = responses.shape[2]
    bins = _channel_bins(responses, TEXTURE_BINS).reshape(-1, c)
    return (bins + np.arange(c) * TEXTURE_BINS).astype(np.int32)


def texture_histograms(labels: np.ndarray, n: int, codes: np.ndarray) -> np.ndarray:
    """10-bin histograms of each orientation response per region, L1-normalised.

    Args:
        labels: H×W superpixel ids 0..n-1.
        n: number of superpixels.
        codes: :func:`texture_codes` of the image.

    Returns:
        n×(10·C) float32 (C = 24 response channels), rows sum to 1.
    """
    width = codes.shape[1] * TEXTURE_BINS
    keys = (labels.reshape(-1, 1).astype(np.int64) * width + codes).ravel()
    h = np.bincount(keys, minlength=n * width).reshape(n, -1).astype(np.float32)
    return h / np.maximum(h.sum(axis=1, keepdims=True), 1.0)


@dataclass
class Superpixels:
    """One over-segmentation and its region statistics.

    Attributes:
        labels: h×w int32, ids 0..n-1.
        n: number of superpixels.
        sizes: n float64 pixel counts.
        boxes: n×4 int64 ``(y0, x0, y1, x1)``, end exclusive.
        pairs: E×2 int64 adjacent superpixel ids (4-neighbourhood), ``a < b``, unique.
        pair_len: E float64, number of pixel sides the pair shares.
        border: n float64, pixel sides on the image border.
        pair_edge: E float64, summed edge strength over the pixel sides the pair shares
            (zeros when no edge map was given).
    """

    labels: np.ndarray
    n: int
    sizes: np.ndarray
    boxes: np.ndarray
    pairs: np.ndarray
    pair_len: np.ndarray
    border: np.ndarray
    pair_edge: np.ndarray


def describe(labels: np.ndarray, edges: np.ndarray | None = None) -> Superpixels:
    """Sizes, boxes, adjacency and border contact of a label image.

    Args:
        labels: h×w int32, ids 0..n-1 all present.
    """
    n = int(labels.max()) + 1
    flat = labels.ravel()
    sizes = np.bincount(flat, minlength=n).astype(np.float64)

    boxes = np.array([(r.start, c.start, r.stop, c.stop)
                      for r, c in ndimage.find_objects(labels + 1)], np.int64).reshape(n, 4)

    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()])
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()])
    cut = a != b
    lo = np.minimum(a[cut], b[cut]).astype(np.int64)
    hi = np.maximum(a[cut], b[cut]).astype(np.int64)
    keys, inverse = np.unique(lo * n + hi, return_inverse=True)
    pairs = np.stack([keys // n, keys % n], axis=1)
    pair_len = np.bincount(inverse, minlength=len(keys)).astype(np.float64)
    if edges is None:
        pair_edge = np.zeros(len(keys))
    else:
        # A pixel side's strength: the mean of the edge map on its two pixels.
        ea = np.concatenate([edges[:, :-1].ravel(), edges[:-1, :].ravel()])[cut]
        eb = np.concatenate([edges[:, 1:].ravel(), edges[1:, :].ravel()])[cut]
        pair_edge = np.bincount(inverse, 0.5 * (ea + eb), minlength=len(keys))

    rim = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    border = np.bincount(rim, minlength=n).astype(np.float64)
    return Superpixels(labels, n, sizes, boxes, pairs, pair_len, border, pair_edge)
