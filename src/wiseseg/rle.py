"""COCO run-length encoding: the one way masks travel between stages.

All helpers wrap ``pycocotools.mask`` so that every RLE in the project has ``counts`` as ``str``
(JSON-serialisable) and ``size`` as ``[height, width]``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

RLE = dict  # {"size": [h, w], "counts": str}


def encode(mask: np.ndarray) -> RLE:
    """Encode one binary mask.

    Args:
        mask: H×W array, any dtype; non-zero is foreground.

    Returns:
        COCO RLE with ``counts`` decoded to ``str``.
    """
    if mask.ndim != 2:
        raise ValueError(f"encode expects an H×W mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def encode_many(masks: np.ndarray) -> list[RLE]:
    """Encode an N×H×W stack of binary masks into N RLEs (one C call)."""
    if masks.ndim != 3:
        raise ValueError(f"encode_many expects N×H×W masks, got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


def _as_bytes(rle: RLE) -> dict:
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE, as COCO's crowd annotations use
        return mask_utils.frPyObjects(rle, *rle["size"])
    if isinstance(counts, str):
        return {"size": list(rle["size"]), "counts": counts.encode("ascii")}
    return rle


def decode(rle: RLE) -> np.ndarray:
    """Decode one RLE to an H×W ``bool`` array."""
    return mask_utils.decode(_as_bytes(rle)).astype(bool)


def decode_many(rles: Sequence[RLE], size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode RLEs to an N×H×W ``bool`` array (N may be 0 when ``size`` is given)."""
    if not rles:
        if size is None:
            raise ValueError("decode_many of an empty list needs size=(h, w)")
        return np.zeros((0, *size), dtype=bool)
    # pycocotools writes H×W×N uint8 0/1 in Fortran order: a bool view, copied one mask at
    # a time (faster than astype on the transposed view, and no uint8 copy)
    out = mask_utils.decode([_as_bytes(r) for r in rles]).view(bool)
    masks = np.empty((out.shape[2], out.shape[0], out.shape[1]), dtype=bool)
    for k in range(out.shape[2]):
        masks[k] = out[:, :, k]
    return masks


def area(rles: Sequence[RLE]) -> np.ndarray:
    """Pixel counts, float64 array of length N."""
    if not rles:
        return np.zeros(0)
    objs = [_as_bytes(r) for r in rles]
    # pycocotools' area() sizes its output with a uint8 under NumPy 2: > 255 masks overflow.
    return np.concatenate([np.asarray(mask_utils.area(objs[i:i + 255]), dtype=np.float64)
                           for i in range(0, len(objs), 255)])


def to_bbox(rles: Sequence[RLE]) -> np.ndarray:
    """Tight boxes as N×4 float64 ``xywh`` (COCO convention)."""
    if not rles:
        return np.zeros((0, 4))
    return np.asarray(mask_utils.toBbox([_as_bytes(r) for r in rles]), dtype=np.float64).reshape(
        -1, 4
    )


def iou(a: Sequence[RLE], b: Sequence[RLE]) -> np.ndarray:
    """Mask IoU matrix |a|×|b| (float64) through pycocotools' C code."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    return np.asarray(
        mask_utils.iou([_as_bytes(r) for r in a], [_as_bytes(r) for r in b], [0] * len(b)),
        dtype=np.float64,
    ).reshape(len(a), len(b))


def intersection_over_first(a: Sequence[RLE], b: Sequence[RLE]) -> np.ndarray:
    """|a_i ∩ b_j| / |a_i| for every pair (float64 |a|×|b|); 0 where a_i is empty.

    pycocotools' "crowd" IoU divides by the area of the detection (the first argument), which is
    exactly the share of ``a_i`` covered by ``b_j``.
    """
    if not a or not b:
        return np.zeros((len(a), len(b)))
    return np.asarray(
        mask_utils.iou([_as_bytes(r) for r in a], [_as_bytes(r) for r in b], [1] * len(b)),
        dtype=np.float64,
    ).reshape(len(a), len(b))


def contains(rles: Sequence[RLE], points: Sequence[tuple[int, int]],
             size: tuple[int, int]) -> np.ndarray:
    """Which masks hold which pixels, without decoding them (one C call).

    Args:
        rles: N masks of ``size`` = (height, width).
        points: P pixels as ``(row, column)``, each inside the image.

    Returns:
        bool ``N×P``: ``[i, j]`` is True when pixel ``points[j]`` is foreground in ``rles[i]``.
    """
    h, w = int(size[0]), int(size[1])
    for y, x in points:
        if not (0 <= y < h and 0 <= x < w):
            raise ValueError(f"pixel ({y}, {x}) is outside the {h}×{w} image")
    if not rles or not points:
        return np.zeros((len(rles), len(points)), dtype=bool)
    # a one-pixel mask as an uncompressed RLE: counts run down the columns (Fortran order)
    pixels = [{"size": [h, w], "counts": [int(x) * h + int(y), 1, h * w - int(x) * h - int(y) - 1]}
              for y, x in points]
    return intersection_over_first(rles, pixels) > 0


def merge(rles: Sequence[RLE], size: tuple[int, int]) -> RLE:
    """Union of RLEs; an empty mask of ``size`` when there are none."""
    if not rles:
        return encode(np.zeros(size, dtype=np.uint8))
    out = mask_utils.merge([_as_bytes(r) for r in rles], intersect=False)
    out["counts"] = out["counts"].decode("ascii")
    return out


def problem(rle: RLE) -> str | None:
    """Why an RLE read from a file is unsafe for pycocotools (see :mod:`wiseseg.rle_check`),
    or None. Uncompressed (list) counts are checked for their sum."""
    from wiseseg.rle_check import rle_counts_problems

    try:
        size, counts = rle["size"], rle["counts"]
        h, w = (int(v) for v in size)
    except (KeyError, TypeError, ValueError):
        return "RLE needs 'size' [h, w] and 'counts'"
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in size):
        return f"RLE size {list(size)} must be two whole numbers [h, w]"
    if h < 0 or w < 0:
        return f"negative RLE size {[h, w]}"
    if isinstance(counts, list):
        if any((not isinstance(c, int)) or c < 0 for c in counts) or sum(counts) != h * w:
            return f"uncompressed RLE counts do not sum to {h}×{w}"
        return None
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", "replace")
    if not isinstance(counts, str):
        return "RLE counts must be a string or a list"
    return rle_counts_problems([counts], [(h, w)])[0]


def normalize(rle: RLE) -> RLE:
    """Any COCO RLE (compressed, bytes or uncompressed) → compressed with str counts."""
    out = dict(_as_bytes(rle))
    if isinstance(out["counts"], bytes):
        out["counts"] = out["counts"].decode("ascii")
    out["size"] = [int(s) for s in out["size"]]
    return out
