"""COCO instances JSON reader (polygons, RLE and uncompressed RLE; crowd → ignore region).

Accepted layouts:
- a COCO root with ``annotations/instances_<split>.json`` and images in ``<split>/``,
  ``images/<split>/`` or ``images/`` (COCO 2017 style); split names are ``<split>``;
- a single ``*.json`` file; images are looked up relative to its folder, then ``images/``
  beside it; the split is named after the file stem, and also ``train`` when that is unique;
- a folder holding exactly one COCO *instances* JSON (any name) at its top level, read as
  that file. A JSON counts when it is an object with ``images``, ``annotations`` and
  ``categories`` lists (:func:`is_instances_json` peeks without loading large files); two or
  more are an error that names them.

Categories keep COCO's order by id and are renumbered 0..K-1; the COCO ids are kept in
``Dataset.coco_category_ids`` so predictions can be written with the original ids.
"""

from __future__ import annotations

import json
import mmap
import re
from pathlib import Path

from pycocotools import mask as mask_utils

from wiseseg import rle
from wiseseg.data.coco_check import check_polygon, clean_coco
from wiseseg.data.dataset import (
    BadItems,
    Dataset,
    GroundTruth,
    ImageRecord,
    Instance,
    safe_join,
)
from wiseseg.data.images import check_image
from wiseseg.errors import DataError, WisesegError

#: Files up to this size are parsed to decide whether they are COCO instances JSON; larger
#: ones are scanned for the three top-level keys instead (memory-mapped, never loaded).
_PARSE_LIMIT = 16 * 2**20
_HEAD = 64 * 2**10
_KEYS = (b"images", b"annotations", b"categories")
_FILE_DIR = re.compile(rb'"file_name"\s*:\s*"([^"/\\]+)(?:/|\\\\)')


def peek_instances_json(path: Path) -> frozenset[str] | None:
    """``None`` unless ``path`` is a COCO instances file — a JSON object whose ``images``,
    ``annotations`` and ``categories`` are lists; else the first folder of every image
    ``file_name`` that has one (``{"images"}`` for ``images/a.jpg``; empty when the images
    lie beside the file).

    Cheap: a file that does not open with ``{`` or names none of the three keys in its first
    64 KiB is rejected after reading that much; a file over 16 MiB is memory-mapped and
    scanned for ``"key": [`` rather than parsed, so gigabytes are never loaded.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(_HEAD)
            if not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
                return None
            if not any(b'"' + k + b'"' in head for k in _KEYS):
                return None
            if size <= _PARSE_LIMIT:
                data = json.loads((head + fh.read()).decode("utf-8-sig"))
                if not (isinstance(data, dict)
                        and all(isinstance(data.get(k.decode()), list) for k in _KEYS)):
                    return None
                names = (im.get("file_name") for im in data["images"] if isinstance(im, dict))
                parts = (Path(n.replace("\\", "/")).parts for n in names if isinstance(n, str))
                return frozenset(p[0] for p in parts if len(p) > 1)
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                if not all(re.search(rb'"' + k + rb'"\s*:\s*\[', mm) for k in _KEYS):
                    return None
                return frozenset(m.group(1).decode("utf-8", "replace")
                                 for m in _FILE_DIR.finditer(mm))
    except (OSError, ValueError):  # unreadable, not UTF-8 or not JSON
        return None


def is_instances_json(path: Path) -> bool:
    """Whether ``path`` is a COCO instances JSON (see :func:`peek_instances_json`)."""
    return peek_instances_json(path) is not None


def instance_jsons(folder: Path) -> list[Path]:
    """The COCO instances JSON files at the top level of ``folder`` (sorted)."""
    if not folder.is_dir():
        return []
    return [f for f in sorted(folder.glob("*.json")) if f.is_file() and is_instances_json(f)]


def coco_annotation_files(path: Path) -> dict[str, Path]:
    """Split name → instances JSON for a COCO root, a single JSON file, or a folder with
    exactly one instances JSON at its top level (several are an error naming them)."""
    if path.is_file() and path.suffix == ".json":
        return {path.stem.removeprefix("instances_"): path}
    ann = path / "annotations"
    if ann.is_dir():
        files = sorted(ann.glob("instances_*.json"))
        if files:
            return {f.stem[len("instances_"):]: f for f in files}
    found = instance_jsons(path)
    if len(found) > 1:
        raise WisesegError(
            f"{path}: {len(found)} COCO instances JSON files ({', '.join(f.name for f in found)})"
            f"; point --data at the one to use, e.g. {found[0]}")
    if found:
        return {found[0].stem.removeprefix("instances_"): found[0]}
    return {}


def _image_dirs(json_path: Path, split: str) -> list[Path]:
    base = json_path.parent
    if base.name == "annotations":
        root = base.parent
        return [root / split, root / "images" / split, root / "images", root]
    return [base, base / "images"]


def _segmentation_to_rle(seg, h: int, w: int, source: Path, ann_id) -> dict:
    try:
        if isinstance(seg, list):
            check_polygon(seg, h, w)  # before pycocotools, which trusts its input
            return rle.normalize(mask_utils.merge(mask_utils.frPyObjects(seg, h, w)))
        if isinstance(seg, dict) and "counts" in seg and "size" in seg:
            if [int(s) for s in seg["size"]] != [h, w]:
                raise ValueError(f"RLE size {seg['size']} differs from the image's [{h}, {w}]")
            bad = rle.problem(seg)
            if bad:
                raise ValueError(bad)
            return rle.normalize(seg)
        raise ValueError("segmentation is neither a polygon list nor an RLE")
    except (ValueError, TypeError, KeyError, OverflowError) as e:
        raise DataError(source, f"annotation {ann_id}: bad segmentation ({e})") from None


def read_coco(path: Path, skip_bad: bool = False) -> Dataset:
    files = coco_annotation_files(path)
    if not files:
        raise WisesegError(f"{path}: not a COCO layout (needs annotations/instances_*.json, "
                           "a .json file, or one instances .json in the folder)")
    bad = BadItems(skip_bad)
    classes: tuple[str, ...] | None = None
    cat_ids: list[int] = []
    root = path if path.is_dir() else path.parent
    ds: Dataset | None = None
    seen_ids: dict[int, str] = {}
    for split, jf in files.items():
        try:
            data = json.loads(jf.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise DataError(jf, f"cannot read COCO JSON ({e})") from None
        data = clean_coco(data, jf, bad)  # types, duplicates; bad entries to `bad`
        cats = sorted(data["categories"], key=lambda c: c["id"])
        names = tuple(str(c["name"]) for c in cats)
        if classes is None:
            classes, cat_ids = names, [int(c["id"]) for c in cats]
            ds = Dataset(name=root.name, root=root, classes=classes, layout="coco")
            ds.coco_category_ids = cat_ids  # type: ignore[attr-defined]
        elif names != classes:
            raise DataError(jf, "categories differ from the other splits' categories")
        if not classes:
            raise DataError(jf, "COCO JSON has no categories")
        cat_index = {cid: i for i, cid in enumerate(cat_ids)}
        anns_by_image: dict[int, list[dict]] = {}
        for a in data["annotations"]:
            anns_by_image.setdefault(a.get("image_id"), []).append(a)
        known_images = {im.get("id") for im in data["images"]}
        for img_id in anns_by_image:
            if img_id not in known_images:
                bad.handle(DataError(jf, f"annotation refers to unknown image id {img_id}"))
        dirs = _image_dirs(jf, split)
        records, gts, weak_only = [], {}, []
        files_seen: dict[Path, tuple[str, int]] = {}  # resolved file → (file_name, id)
        for im in data["images"]:
            if isinstance(im, dict) and "image_labels" in im:
                try:
                    weak_only.append(_read_weak_image(im, anns_by_image.get(im.get("id")), dirs,
                                                      classes, jf))
                except DataError as e:
                    bad.handle(e)
                continue
            try:
                rec, gt = _read_image(im, anns_by_image.get(im.get("id"), []), dirs, cat_index,
                                      classes, jf)
            except DataError as e:
                bad.handle(e)
                continue
            if rec.id in seen_ids and seen_ids[rec.id] != rec.name:
                bad.handle(DataError(jf, f"image id {rec.id} is used by two different files"))
                continue
            if rec.path in files_seen:  # one file under two names (../x/a.png, a symlink)
                first, first_id = files_seen[rec.path]
                bad.handle(DataError(jf, f"image {rec.id}: {rec.name!r} is the file already "
                                         f"listed as {first!r} (image {first_id}); list every "
                                         "file once"))
                continue
            files_seen[rec.path] = (rec.name, rec.id)
            seen_ids[rec.id] = rec.name
            records.append(rec)
            gts[rec.id] = gt
        if not records:
            raise DataError(jf, f"split {split!r} has no usable images")
        ds._records[split] = tuple(records)
        ds._gt[split] = gts
        if weak_only:
            ds.add_weak_only(split, weak_only, jf)
    assert ds is not None
    if len(files) == 1 and "train" not in ds._records:
        only = next(iter(ds._records))
        ds._records["train"] = ds._records[only]
        ds._gt["train"] = ds._gt[only]
    ds.skipped = bad.items
    return ds


def _class_indices(names, classes: tuple[str, ...], jf: Path, image, key: str) -> frozenset[int]:
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(jf, f"image {image}: {key!r} must be a list of class names, not "
                        f"{str(names)[:60]}")
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise DataError(jf, f"image {image}: {key!r} names {unknown[0]!r}, not a category "
                        f"({', '.join(classes)})")
    return frozenset(classes.index(n) for n in names)


def _read_weak_image(im: dict, anns: list[dict] | None, dirs: list[Path],
                     classes: tuple[str, ...], jf: Path) -> ImageRecord:
    """An image entry with wiseseg's ``"image_labels"`` (class names) and optional
    ``"unlabelled_classes"``: image-level labels only, used by the weak stages, never as
    ground truth. It may have no annotation."""
    if "id" not in im or "file_name" not in im:
        raise DataError(jf, f"image entry without id/file_name: {str(im)[:80]}")
    if anns:
        raise DataError(jf, f"image {im['id']}: has \"image_labels\" and {len(anns)} "
                        "annotations; an image is either image-level only or annotated")
    labels = _class_indices(im["image_labels"], classes, jf, im["id"], "image_labels")
    unknown = _class_indices(im.get("unlabelled_classes", []), classes, jf, im["id"],
                             "unlabelled_classes")
    if labels & unknown:
        raise DataError(jf, f"image {im['id']}: a class is both labelled and unlabelled")
    fname = str(im["file_name"])
    path = next((c for c in (safe_join(d, fname, jf) for d in dirs) if c.exists()), None)
    if path is None:
        raise DataError(safe_join(dirs[0], fname, jf), f"image not found (listed in {jf})")
    h, w = check_image(path)
    return ImageRecord(id=int(im["id"]), name=fname, path=path, height=h, width=w,
                       labels=labels, unknown=unknown)


def _read_image(im: dict, anns: list[dict], dirs: list[Path], cat_index: dict[int, int],
                classes: tuple[str, ...], jf: Path) -> tuple[ImageRecord, GroundTruth]:
    if "id" not in im or "file_name" not in im:
        raise DataError(jf, f"image entry without id/file_name: {str(im)[:80]}")
    fname = str(im["file_name"])
    path = None
    for d in dirs:
        cand = safe_join(d, fname, jf)
        if cand.exists():
            path = cand
            break
    if path is None:
        raise DataError(safe_join(dirs[0], fname, jf), f"image not found (listed in {jf})")
    h, w = check_image(path)
    if ("height" in im and "width" in im) and (int(im["height"]), int(im["width"])) != (h, w):
        raise DataError(path, f"image is {w}×{h} (upright) but {jf.name} says "
                        f"{im['width']}×{im['height']}")
    instances, crowd, labels = [], [], set()
    for a in anns:
        cid = a.get("category_id")
        if cid not in cat_index:
            raise DataError(jf, f"annotation {a.get('id')}: category id {cid} is not in the "
                            f"category list ({', '.join(map(str, sorted(cat_index)))})")
        seg = _segmentation_to_rle(a.get("segmentation"), h, w, jf, a.get("id"))
        labels.add(cat_index[cid])
        if a.get("iscrowd", 0):
            crowd.append(seg)
        else:
            instances.append(Instance(category=cat_index[cid], segmentation=seg))
    ignore = rle.merge(crowd, (h, w)) if crowd else None
    rec = ImageRecord(id=int(im["id"]), name=fname, path=path, height=h, width=w,
                      labels=frozenset(labels))
    return rec, GroundTruth(image_id=rec.id, instances=tuple(instances), ignore=ignore)
