"""PASCAL VOC 2012 layout reader (also serves the built-in shapes data, written in this layout).

Layout (``root`` may be ``VOCdevkit``, ``VOCdevkit/VOC2012`` or the folder holding them)::

    JPEGImages/<id>.jpg
    SegmentationObject/<id>.png   palette PNG: 0 background, 1..N instance index, 255 void
    SegmentationClass/<id>.png    palette PNG: 0 background, 1..K class index, 255 void
    Annotations/<id>.xml          object names (image-level labels for ids without masks)
    ImageSets/Segmentation/<split>.txt   one id per line
    ImageSets/Segmentation/<split>.csv   optional instead: ``image,labels`` (labels ``;``-separated)
    classes.txt                   optional class names, one per line (default: VOC's 20)

Image-level labels of an id come from its masks when it has them, else from its
``Annotations`` XML, else from the split's CSV. A split has ground truth when every id has an
instance mask (SBD-style ``train_aug`` lists do not, and are for weak training only).
"""

from __future__ import annotations

import posixpath
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from wiseseg import rle
from wiseseg.data.dataset import (
    BadItems,
    Dataset,
    GroundTruth,
    ImageRecord,
    Instance,
    assign_ids,
    safe_join,
)
from wiseseg.data.images import check_image, load_label_png
from wiseseg.data.text import csv_dict_rows, read_lines
from wiseseg.errors import DataError, WisesegError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
VOID = 255
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def find_voc_root(path: Path) -> Path | None:
    """The folder holding ``JPEGImages`` and ``ImageSets`` under ``path``, or None."""
    for cand in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir() and (cand / "ImageSets").is_dir():
            return cand
    return None


def read_class_file(path: Path) -> tuple[str, ...]:
    lines = read_lines(path)  # UTF-8, no NUL byte
    names = [name for _, name in lines]
    if not names:
        raise DataError(path, "class list is empty")
    first: dict[str, int] = {}
    for line, name in lines:
        if name in first:
            raise DataError(path, f"line {line}: class {name!r} is listed again (first on "
                                  f"line {first[name]})")
        first[name] = line
    return tuple(names)


def parse_label_list(text: str, classes: tuple[str, ...], source: Path | str) -> frozenset[int]:
    """``"cat;dog"`` → class indices; an unknown class name is an error naming the file."""
    index = {c: i for i, c in enumerate(classes)}
    out = set()
    for name in (s.strip() for s in text.split(";")):
        if not name:
            continue
        if name not in index:
            raise DataError(source, f"unknown class {name!r} (known: {', '.join(classes)})")
        out.add(index[name])
    return frozenset(out)


def instances_from_pngs(
    obj: np.ndarray, cls: np.ndarray, n_classes: int, source: Path
) -> tuple[list[Instance], np.ndarray]:
    """Split a VOC object PNG into instances, each classed by the class PNG under it.

    Returns the instances (in object-index order) and the void mask (H×W bool).
    """
    instances = []
    for k in np.unique(obj):
        if k in (0, VOID):
            continue
        m = obj == k
        values, counts = np.unique(cls[m], return_counts=True)
        keep = (values != 0) & (values != VOID)
        if not keep.any():
            raise DataError(source, f"instance {int(k)} has no class in SegmentationClass")
        c = int(values[keep][np.argmax(counts[keep])])
        if c > n_classes:
            raise DataError(
                source, f"class id {c} of instance {int(k)} is outside the class list "
                f"(1..{n_classes})"
            )
        instances.append(Instance(category=c - 1, segmentation=rle.encode(m)))
    return instances, obj == VOID


def _xml_labels(path: Path, classes: tuple[str, ...]) -> frozenset[int]:
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise DataError(path, f"malformed XML ({e})") from None
    names = [o.findtext("name", "").strip() for o in tree.getroot().iter("object")]
    return parse_label_list(";".join(names), classes, path)


def read_voc(path: Path, skip_bad: bool = False) -> Dataset:
    root = find_voc_root(path)
    if root is None:
        raise WisesegError(f"{path}: not a VOC layout (needs JPEGImages/ and ImageSets/)")
    classes = read_class_file(root / "classes.txt") if (root / "classes.txt").exists() else (
        VOC_CLASSES
    )
    seg_dir = root / "ImageSets" / "Segmentation"
    if not seg_dir.is_dir():
        raise DataError(seg_dir, "missing (the split lists live here)")
    bad = BadItems(skip_bad)
    split_entries: dict[str, list[tuple[str, frozenset[int] | None, Path]]] = {}
    for f in sorted(seg_dir.glob("*.txt")):
        split_entries[f.stem] = [(i, None, f) for _, i in _unique_ids(read_lines(f), f, bad)]
    for f in sorted(seg_dir.glob("*.csv")):
        if f.stem in split_entries:
            raise DataError(f, f"split {f.stem!r} is given both as .txt and .csv")
        rows, lines = {}, []
        for line, row in csv_dict_rows(f, ("image", "labels")):
            if row["image"] is None or row["labels"] is None:
                bad.handle(DataError(f, f"line {line}: needs two fields image,labels "
                                        f"(empty labels for a negative image), got "
                                        f"{[v for v in row.values() if v is not None]}"))
                continue
            name = row["image"].strip()
            rows[(line, name)] = parse_label_list(row["labels"], classes, f"{f}:{line}")
            lines.append((line, name))
        split_entries[f.stem] = [(i, rows[(n, i)], f) for n, i in _unique_ids(lines, f, bad)]
    if not split_entries:
        raise DataError(seg_dir, "no split lists (<split>.txt or <split>.csv)")

    all_names = [n for entries in split_entries.values() for n, _, _ in entries]
    ids = assign_ids(all_names)
    ds = Dataset(name=root.name, root=root, classes=classes, layout="voc")
    cache: dict[tuple, tuple[ImageRecord, GroundTruth | None]] = {}
    for split, entries in split_entries.items():
        records, gts, all_have_masks = [], {}, True
        files: dict[Path, str] = {}  # resolved image file → the id that listed it
        for name, csv_labels, source in entries:
            key = (name, csv_labels)
            if key in cache:
                rec, gt = cache[key]
            else:
                try:
                    rec, gt = _read_item(root, name, ids[name], classes, csv_labels, source)
                except DataError as e:
                    bad.handle(e)
                    continue
                cache[key] = (rec, gt)
            real = rec.path.resolve()
            if real in files:  # a symlink alias of an image already in the split
                bad.handle(DataError(source, f"id {name!r} is the image file of id "
                                             f"{files[real]!r} ({real.name}); list every "
                                             "image once"))
                continue
            files[real] = name
            records.append(rec)
            if gt is None:
                all_have_masks = False
            else:
                gts[rec.id] = gt
        if not records:
            raise DataError(source if entries else seg_dir / f"{split}.txt",
                            f"split {split!r} has no usable images")
        ds._records[split] = tuple(records)
        ds._gt[split] = gts if all_have_masks else None
    ds.skipped = bad.items
    return ds


def _unique_ids(lines: list[tuple[int, str]], source: Path, bad: BadItems
                ) -> list[tuple[int, str]]:
    """The ``(line, id)`` entries of a split list; an id listed again is an error (or,
    under ``--skip-bad``, its later lines are skipped): it would count the image twice."""
    first: dict[str, tuple[int, str]] = {}
    out = []
    for line, name in lines:
        key = posixpath.normpath(name.replace("\\", "/"))  # ./2007_000001 is 2007_000001
        if key in first:
            alias = " is" if name == first[key][1] else f" is {first[key][1]!r},"
            bad.handle(DataError(source, f"line {line}: id {name!r}{alias} listed again "
                                         f"(first on line {first[key][0]}); list every image "
                                         "once"))
            continue
        first[key] = (line, name)
        out.append((line, name))
    return out


def _find_image(root: Path, name: str, source: Path) -> Path:
    base = safe_join(root / "JPEGImages", name, source)
    for ext in _IMAGE_EXTS:
        p = base.with_name(base.name + ext)
        if p.exists():
            return p
    raise DataError(base.with_name(base.name + ".jpg"), f"image for id {name!r} not found "
                    f"(listed in {source})")


def _read_item(
    root: Path,
    name: str,
    image_id: int,
    classes: tuple[str, ...],
    csv_labels: frozenset[int] | None,
    source: Path,
) -> tuple[ImageRecord, GroundTruth | None]:
    img_path = _find_image(root, name, source)
    h, w = check_image(img_path)
    obj_path = root / "SegmentationObject" / f"{name}.png"
    gt = None
    if obj_path.exists():
        cls_path = root / "SegmentationClass" / f"{name}.png"
        obj = load_label_png(obj_path)
        if not cls_path.exists():
            raise DataError(cls_path, "missing (every SegmentationObject PNG needs its class PNG)")
        cls = load_label_png(cls_path)
        for p, arr in ((obj_path, obj), (cls_path, cls)):
            if arr.shape != (h, w):
                raise DataError(
                    p, f"mask is {arr.shape[1]}×{arr.shape[0]} but its image {img_path.name} "
                    f"is {w}×{h} (width×height, upright)"
                )
        instances, void = instances_from_pngs(obj, cls, len(classes), obj_path)
        gt = GroundTruth(
            image_id=image_id,
            instances=tuple(instances),
            ignore=rle.encode(void) if void.any() else None,
        )
        labels = frozenset(i.category for i in instances)
    elif csv_labels is not None:
        labels = csv_labels
    elif (root / "Annotations" / f"{name}.xml").exists():
        labels = _xml_labels(root / "Annotations" / f"{name}.xml", classes)
    else:
        raise DataError(obj_path, f"id {name!r} (listed in {source}) has neither masks, an "
                        "Annotations XML, nor a CSV row with its labels")
    rec = ImageRecord(id=image_id, name=name, path=img_path, height=h, width=w, labels=labels)
    return rec, gt
