"""Checks of a ``peaks.json`` read from disk (``wiseseg pseudo-masks --peaks``, a run's peaks).

:func:`peaks_by_id` checks the structure (an object with ``classes`` and ``images``; every
image entry an object with a whole-number ``image_id`` listed once and a list of peaks; every
peak an object with a whole-number ``class`` and finite numbers ``y``, ``x``, ``score``);
:func:`check_peaks_for` checks it against the dataset: the same classes, peak classes within
them, images of the split, coordinates inside their image. A bad entry is a one-line
:class:`DataError` naming the file and the entry; a coordinate of 1e9 would otherwise index
past the proposal masks (a traceback), and a negative one would silently read the other end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from wiseseg.errors import DataError


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def peaks_by_id(data, path: str | Path) -> dict[int, list[dict]]:
    """Image id → its peaks, after checking the structure of the parsed ``data``."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("classes"), list):
        raise DataError(path, "not a wiseseg peaks file (needs a 'classes' list and an "
                              "'images' list)")
    if not all(isinstance(c, str) for c in data["classes"]):
        raise DataError(path, f"'classes' must be class names, got {_short(data['classes'])}")
    out: dict[int, list[dict]] = {}
    for j, im in enumerate(data["images"]):
        if not isinstance(im, dict):
            raise DataError(path, f"image entry {j} is not an object: {_short(im)}")
        iid = im.get("image_id")
        if not _whole(iid):
            raise DataError(path, f"image entry {j}: 'image_id' must be a whole number, got "
                                  f"{_short(iid)}")
        if iid in out:
            raise DataError(path, f"image {iid} is listed twice")
        peaks = im.get("peaks")
        if not isinstance(peaks, list):
            raise DataError(path, f"image {iid}: 'peaks' must be a list, got {_short(peaks)}")
        for k, p in enumerate(peaks):
            who = f"image {iid}, peak {k}"
            if not isinstance(p, dict):
                raise DataError(path, f"{who} is not an object: {_short(p)}")
            if not _whole(p.get("class")):
                raise DataError(path, f"{who}: 'class' must be a whole number, got "
                                      f"{_short(p.get('class'))}")
            for key in ("y", "x", "score"):
                if not _number(p.get(key)):
                    raise DataError(path, f"{who}: {key!r} must be a finite number, got "
                                          f"{_short(p.get(key))}")
        out[iid] = peaks
    return out


def check_peaks_for(path: str | Path, data: dict, classes: Sequence[str],
                    records: Sequence) -> None:
    """``data`` (a checked peaks file, with ``by_id``) fits the dataset: its classes are the
    dataset's (in order), and every peak is of one of them, of an image among ``records``
    (:class:`~wiseseg.data.ImageRecord`) and inside that image."""
    listed = list(data["classes"])
    if listed != list(classes):
        raise DataError(path, f"the peaks file lists {len(listed)} classes "
                              f"({', '.join(listed[:6])}{'…' if len(listed) > 6 else ''}) but "
                              f"the dataset has {len(classes)} ({', '.join(classes[:6])}"
                              f"{'…' if len(classes) > 6 else ''}); compute the peaks on "
                              f"this dataset")
    sizes = {r.id: (r.height, r.width) for r in records}
    for iid, peaks in data["by_id"].items():
        if iid not in sizes:
            raise DataError(path, f"image {iid} is not an image of the split (peaks of "
                                  f"another split or dataset?)")
        h, w = sizes[iid]
        for k, p in enumerate(peaks):
            who = f"image {iid}, peak {k}"
            if not 0 <= p["class"] < len(classes):
                raise DataError(path, f"{who}: class {p['class']} is not a class index "
                                      f"0 … {len(classes) - 1}")
            if not (0 <= p["y"] < h and 0 <= p["x"] < w):
                raise DataError(path, f"{who}: (y, x) = ({p['y']:g}, {p['x']:g}) is outside "
                                      f"the {w}×{h} image")
