"""Checks of a COCO instances JSON before anything trusts it (see ``docs/bad-input.md``).

:func:`clean_coco` checks the types of every entry (objects with whole-number ids, string
file names, a category list without duplicate ids or names, no image listed twice) and
returns the entries to read; a bad image or annotation entry is a :class:`DataError` naming
the file and the entry (skipped with ``--skip-bad``), a bad category list always stops.
:func:`check_polygon` bounds polygon coordinates before pycocotools sees them: its C code
allocates memory in proportion to the polygon's length, so a NaN or a coordinate of 1e9 would
make it allocate gigabytes.
"""

from __future__ import annotations

import math
import posixpath
from pathlib import Path

from wiseseg.data.dataset import BadItems
from wiseseg.errors import DataError

#: A polygon may reach this many image sizes beyond the image (pycocotools clips it).
_MARGIN = 1.0
#: The largest image id (int64, as ids travel in tensors and arrays).
MAX_IMAGE_ID = 2**63 - 1


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_whole(value) -> bool:
    """An ``int`` (not a ``bool``): what COCO ids, heights and widths must be."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_categories(cats: list, jf: Path) -> None:
    ids: dict[int, str] = {}
    names: dict[str, tuple[int, str]] = {}
    for j, c in enumerate(cats):
        if not isinstance(c, dict):
            raise DataError(jf, f"category entry {j} is not an object: {_short(c)}")
        if "id" not in c or not is_whole(c["id"]):
            raise DataError(jf, f"category entry {j} ({_short(c.get('name'))}) needs a "
                                f"whole-number 'id', got {_short(c.get('id'))}")
        name = c.get("name")
        if not isinstance(name, str) or not name.strip() or "\0" in name:
            raise DataError(jf, f"category id {c['id']} needs a non-empty 'name', got "
                                f"{_short(name)}")
        if c["id"] in ids:
            raise DataError(jf, f"category id {c['id']} is used twice ({ids[c['id']]!r} and "
                                f"{name!r}); every category needs its own id")
        key = name.strip()  # 'cat' and 'cat ' would read as one class in every table
        if key in names:
            first_id, first = names[key]
            if first == name:
                raise DataError(jf, f"category name {name!r} is used twice (ids {first_id} "
                                    f"and {c['id']}); merge them or rename one")
            raise DataError(jf, f"category names {first!r} (id {first_id}) and {name!r} (id "
                                f"{c['id']}) differ only by surrounding spaces; merge them "
                                "or rename one")
        ids[c["id"]], names[key] = name, (c["id"], name)


def _image_problem(im) -> str | None:
    if not isinstance(im, dict):
        return f"image entry is not an object: {_short(im)}"
    if "id" not in im or not is_whole(im["id"]):
        return f"image entry needs a whole-number 'id', got {_short(im.get('id'))}"
    if not 0 <= im["id"] <= MAX_IMAGE_ID:  # ids name files and travel as int64 tensors
        return f"image id {im['id']} is outside 0 … 2**63 - 1 (file {_short(im.get('file_name'))})"
    name = im.get("file_name")
    if not isinstance(name, str) or not name or "\0" in name:
        return f"image {im['id']}: 'file_name' must be a non-empty string, got {_short(name)}"
    for key in ("height", "width"):
        if key in im and not (is_whole(im[key]) and im[key] > 0):
            return f"image {im['id']}: {key!r} must be a whole number > 0, got {_short(im[key])}"
    return None


def _annotation_problem(a) -> str | None:
    if not isinstance(a, dict):
        return f"annotation entry is not an object: {_short(a)}"
    who = f"annotation {_short(a.get('id'))}"
    for key in ("image_id", "category_id"):
        if not is_whole(a.get(key)):
            return f"{who}: {key!r} must be a whole number, got {_short(a.get(key))}"
    if a.get("iscrowd", 0) not in (0, 1):
        return f"{who}: 'iscrowd' must be 0 or 1, got {_short(a.get('iscrowd'))}"
    return None


def clean_coco(data, jf: Path, bad: BadItems) -> dict:
    """``data`` (a parsed instances JSON) with only entries that are safe to read.

    Raises DataError for a file that is not an instances object or whose categories are
    broken or duplicated; a broken or duplicated image / annotation entry goes to ``bad``
    (an error, or skipped and counted under ``--skip-bad``).
    """
    if not isinstance(data, dict):
        raise DataError(jf, f"COCO JSON must be an object with images, annotations and "
                            f"categories, not a {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(jf, f"COCO JSON has no {key!r} list")
    _check_categories(data["categories"], jf)
    images, by_id, by_file = [], {}, {}
    for im in data["images"]:
        problem = _image_problem(im)
        if problem is None:
            key = posixpath.normpath(im["file_name"].replace("\\", "/"))
            if im["id"] in by_id:
                problem = (f"image id {im['id']} is listed twice ({by_id[im['id']]!r} and "
                           f"{im['file_name']!r}); every image needs its own id")
            elif key in by_file:
                problem = (f"image {im['file_name']!r} is listed twice (ids {by_file[key]} and "
                           f"{im['id']}); list every file once")
            else:
                by_id[im["id"]], by_file[key] = im["file_name"], im["id"]
        if problem is not None:
            bad.handle(DataError(jf, problem))
            continue
        images.append(im)
    anns = []
    for a in data["annotations"]:
        problem = _annotation_problem(a)
        if problem is not None:
            bad.handle(DataError(jf, problem))
            continue
        anns.append(a)
    return {**data, "images": images, "annotations": anns}


def check_polygon(seg: list, h: int, w: int) -> None:
    """Raise ValueError unless ``seg`` is a list of polygons of finite numbers that stay
    within one image size of the ``h``×``w`` image and together are at most about
    ``h × w`` pixels long — so pycocotools allocates at most a small multiple of the
    image. A polygon entirely outside the image is refused too (it would be an empty
    object)."""
    if not seg:
        raise ValueError("polygon needs at least 3 (x, y) points")
    length = 0.0
    limit = h * w + 4 * (h + w)
    inside = False
    for p in seg:
        if not isinstance(p, list) or len(p) < 6 or len(p) % 2:
            raise ValueError("polygon needs at least 3 (x, y) points")
        for v in p:
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ValueError(f"polygon coordinate {_short(v)} is not a number")
            if not math.isfinite(v):
                raise ValueError(f"polygon coordinate {v} is not a finite number")
        xs, ys = p[0::2], p[1::2]
        for name, vs, size in (("x", xs, w), ("y", ys, h)):
            lo, hi = min(vs), max(vs)
            if lo < -_MARGIN * size or hi > (1 + _MARGIN) * size:
                far = lo if lo < -_MARGIN * size else hi
                raise ValueError(f"polygon coordinate {name}={far:g} is far outside the "
                                 f"{w}×{h} image")
        if max(xs) > 0 and min(xs) < w and max(ys) > 0 and min(ys) < h:
            inside = True
        n = len(xs)
        length += sum(max(abs(xs[i] - xs[i - 1]), abs(ys[i] - ys[i - 1])) + 1
                      for i in range(n))
        if length > limit:
            raise ValueError(f"polygons are {length:.0f} px long, more than the {w}×{h} "
                             f"image can hold")
    if not inside:
        raise ValueError(f"polygon lies entirely outside the {w}×{h} image")
