"""Predictions in the COCO results format, read and checked entry by entry.

A predictions file is a JSON list of ``{"image_id", "category_id", "segmentation", "score"}``
objects, optionally with ``"bbox"`` (``[x, y, w, h]``), as detectron2, mmdetection and
pycocotools' ``loadRes`` use:

- ``image_id``: an image of the evaluated split (a prediction for an image of another split is
  an error, since it cannot be scored);
- ``category_id``: the dataset's COCO category id (:attr:`Dataset.category_ids`: COCO's own ids
  for COCO datasets, class index + 1 otherwise);
- ``segmentation``: compressed COCO RLE ``{"size": [h, w], "counts": str}`` of the image's
  upright size (``counts`` may be ``bytes`` for in-memory input); polygons are not accepted;
- ``score``: a finite number; higher ranks first.

An empty list is valid (nothing was detected; every AP is 0). Every problem raises
:class:`~wiseseg.errors.DataError` naming the source and the entry (its index in the list) with
the offending value; nothing is skipped.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wiseseg.data.dataset import Dataset, ImageRecord
from wiseseg.errors import DataError
from wiseseg.io import read_json
from wiseseg.rle import RLE
from wiseseg.rle_check import rle_counts_problems

#: What an entry must hold.
REQUIRED_KEYS = ("image_id", "category_id", "segmentation", "score")
_REQUIRED = frozenset(REQUIRED_KEYS)


@dataclass(frozen=True)
class Prediction:
    """One predicted instance.

    Attributes:
        category: 0-based class index.
        segmentation: compressed COCO RLE (``counts`` as ``str``) of the image's size, checked to
            be well formed.
        score: confidence; predictions are ranked by it, highest first.
        index: position in the input list; among equal scores the earlier entry ranks first.
    """

    category: int
    segmentation: RLE
    score: float
    index: int


def load_predictions(path: str | Path, dataset: Dataset, split: str) -> dict[int, list[Prediction]]:
    """Read a COCO results JSON file and check it against ``dataset``'s ``split``.

    Returns:
        Every image id of the split → its predictions in file order (an empty list for images
        without any).

    Raises:
        DataError: the file is missing or not JSON, or an entry is malformed (see the module
            docstring); the message names the file and the entry.
    """
    entries = read_json(path, "predictions JSON")
    return parse_predictions(entries, dataset.records(split), dataset.category_ids,
                             source=path, split=split)


def parse_predictions(
    entries: Any,
    records: Sequence[ImageRecord],
    category_ids: Sequence[int],
    source: str | Path = "<predictions>",
    split: str | None = None,
) -> dict[int, list[Prediction]]:
    """Check in-memory COCO results entries and group them by image.

    Args:
        entries: the decoded JSON (must be a list of objects).
        records: the images predictions may refer to.
        category_ids: ``category_id`` of each class index.
        source: the file (or a description) named in errors.
        split: the split's name, for messages.

    Returns:
        Every record id → its predictions in input order.
    """
    if not isinstance(entries, list):
        raise DataError(source, f"expected a JSON list of COCO results, got "
                        f"{type(entries).__name__}")
    by_id = {r.id: r for r in records}
    class_of = {cid: i for i, cid in enumerate(category_ids)}
    out: dict[int, list[Prediction]] = {r.id: [] for r in records}
    parsed: list[tuple[int, Prediction]] = []
    for i, e in enumerate(entries):
        parsed.append(_parse_entry(i, e, by_id, class_of, category_ids, source, split))
    problems = rle_counts_problems([p.segmentation["counts"] for _, p in parsed],
                                   [tuple(p.segmentation["size"]) for _, p in parsed])
    for (image_id, p), problem in zip(parsed, problems):
        if problem is not None:
            raise DataError(source, f"entry {p.index} (image_id {image_id}): bad RLE "
                            f"segmentation: {problem}")
        out[image_id].append(p)
    return out


# numbers.* rather than int/float: in-memory results often carry numpy scalars (np.float32).
# The exact-type tests first are a fast path (tens of thousands of entries).
def _is_int(v: Any) -> bool:
    return type(v) is int or (isinstance(v, numbers.Integral)
                              and not isinstance(v, (bool, np.bool_)))


def _is_number(v: Any) -> bool:
    if type(v) is float:
        return math.isfinite(v)
    return type(v) is int or (isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
                              and math.isfinite(v))


def _known_ids(ids: Sequence[int]) -> str:
    if list(ids) == list(range(1, len(ids) + 1)):
        return f"1..{len(ids)}"
    shown = ", ".join(map(str, ids[:30]))
    return shown + (", ..." if len(ids) > 30 else "")


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_entry(i: int, e: Any, by_id: dict[int, ImageRecord], class_of: dict[int, int],
                 category_ids: Sequence[int], source: str | Path,
                 split: str | None) -> tuple[int, Prediction]:
    def bad(problem: str) -> DataError:
        return DataError(source, f"entry {i}: {problem}")

    if not isinstance(e, dict):
        raise bad(f"expected an object with {', '.join(REQUIRED_KEYS)}, got {_short(e)}")
    if not _REQUIRED.issubset(e.keys()):
        missing = [k for k in REQUIRED_KEYS if k not in e]
        raise bad(f"missing {', '.join(repr(k) for k in missing)}")
    image_id = e["image_id"]
    if not _is_int(image_id) or image_id not in by_id:
        where = f"split {split!r}" if split else "the evaluated images"
        raise bad(f"image_id {_short(image_id)} is not an image of {where}")
    rec = by_id[image_id]
    cid = e["category_id"]
    if not _is_int(cid) or cid not in class_of:
        raise bad(f"unknown category_id {_short(cid)} (known: {_known_ids(category_ids)})")
    score = e["score"]
    if not _is_number(score):
        raise bad(f"score {_short(score)} is not a finite number")
    if "bbox" in e:
        box = e["bbox"]
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(map(_is_number, box)):
            raise bad(f"bbox {_short(box)} is not [x, y, width, height]")
    seg = e["segmentation"]
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        kind = "a polygon list" if isinstance(seg, list) else _short(seg)
        raise bad(f"segmentation must be a compressed COCO RLE {{'size': [h, w], 'counts': "
                  f"str}}, got {kind}")
    size, counts = seg["size"], seg["counts"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2 or not all(map(_is_int, size))):
        raise bad(f"RLE size {_short(size)} is not [height, width]")
    if (size[0], size[1]) != (rec.height, rec.width):
        raise bad(f"mask size {size[0]}×{size[1]} (h×w) differs from image {rec.name} "
                  f"({rec.height}×{rec.width})")
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError:
            raise bad("bad RLE segmentation: counts has a character outside '0'..'o'") from None
    if not isinstance(counts, str):
        kind = "a list (uncompressed RLE)" if isinstance(counts, list) else _short(counts)
        raise bad(f"RLE counts must be a compressed string, got {kind}")
    pred = Prediction(category=class_of[int(cid)],
                      segmentation={"size": [rec.height, rec.width], "counts": counts},
                      score=float(score), index=i)
    return int(image_id), pred
