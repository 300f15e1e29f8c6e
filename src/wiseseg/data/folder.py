"""Image-level labels only: a folder per class and/or a CSV of labels.

Accepted layouts (``root``):
- ``root/<class>/*.jpg`` — one split ``train``; or ``root/<split>/<class>/*.jpg`` when ``root``
  holds ``train/`` (and e.g. ``val/``) folders of class folders;
- ``root/labels.csv`` (or ``root/<split>.csv``) with a header ``image,labels``; ``labels`` is a
  ``;``-separated list of class names (empty for a negative image); images are relative to
  ``root``. When CSV files are present they define the splits (for multi-label images) and
  class folders only hold the files.

Class names come from ``root/classes.txt`` when present, else from the class folders, else
from the union of CSV labels. There are no masks: training works, evaluation does not.
"""

from __future__ import annotations

import csv
from pathlib import Path

from wiseseg.data.dataset import BadItems, Dataset, ImageRecord, assign_ids, safe_join
from wiseseg.data.images import IMAGE_SUFFIXES, check_image
from wiseseg.data.voc import parse_label_list, read_class_file
from wiseseg.errors import DataError, WisesegError


def _class_dirs(d: Path) -> list[Path]:
    return sorted(
        p for p in d.iterdir()
        if p.is_dir() and not p.name.startswith(".")
        and any(q.suffix.lower() in IMAGE_SUFFIXES for q in p.iterdir())
    )


def class_folder_names(root: Path) -> list[str]:
    """Names of the sub-folders of ``root`` that directly hold images (sorted)."""
    return [p.name for p in _class_dirs(root)] if root.is_dir() else []


def folder_splits(root: Path) -> dict[str, tuple[str, Path]]:
    """Split name → (kind, location) where kind is ``"dirs"`` or ``"csv"``; empty if none."""
    out: dict[str, tuple[str, Path]] = {}
    if not root.is_dir():
        return out
    csvs = {f.stem: f for f in sorted(root.glob("*.csv")) if f.stem in ("train", "val", "test")}
    if (root / "labels.csv").is_file():
        if "train" in csvs:
            raise WisesegError(f"{root}: both labels.csv and train.csv define split 'train'; "
                               "keep one")
        csvs["train"] = root / "labels.csv"
    if csvs:  # CSV files define the splits; sub-folders are then only where images live
        return {s: ("csv", f) for s, f in csvs.items()}
    split_dirs = [root / s for s in ("train", "val", "test") if (root / s).is_dir()]
    if split_dirs and all(_class_dirs(d) for d in split_dirs):
        for d in split_dirs:
            out[d.name] = ("dirs", d)
    elif _class_dirs(root):
        out["train"] = ("dirs", root)
    return out


def read_folder(root: Path, skip_bad: bool = False) -> Dataset:
    splits = folder_splits(root)
    if not splits:
        raise WisesegError(f"{root}: not a folder-per-class layout (needs <class>/ folders of "
                           "images or a labels.csv)")
    if (root / "classes.txt").exists():
        classes = read_class_file(root / "classes.txt")
    else:
        names: set[str] = set()
        for kind, loc in splits.values():
            if kind == "dirs":
                names.update(p.name for p in _class_dirs(loc))
            else:
                with loc.open(newline="") as fh:
                    for row in csv.DictReader(fh):
                        names.update(s.strip() for s in (row.get("labels") or "").split(";"))
        names.discard("")
        classes = tuple(sorted(names))
    if not classes:
        raise WisesegError(f"{root}: no class names found")

    entries: dict[str, list[tuple[str, Path, frozenset[int], Path]]] = {}
    for split, (kind, loc) in splits.items():
        rows = entries.setdefault(split, [])
        if kind == "dirs":
            index = {c: i for i, c in enumerate(classes)}
            for cdir in _class_dirs(loc):
                if cdir.name not in index:
                    raise DataError(cdir, f"class folder {cdir.name!r} is not in classes.txt")
                for img in sorted(cdir.iterdir()):
                    if img.suffix.lower() in IMAGE_SUFFIXES:
                        rel = img.relative_to(root).as_posix()
                        rows.append((rel, img, frozenset({index[cdir.name]}), cdir))
        else:
            with loc.open(newline="") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames is None or not {"image", "labels"} <= set(reader.fieldnames):
                    raise DataError(loc, "CSV needs a header with columns image,labels")
                for line, row in enumerate(reader, start=2):
                    rel = (row["image"] or "").strip()
                    if not rel:
                        raise DataError(loc, f"line {line}: empty image path")
                    labels = parse_label_list(row["labels"] or "", classes, f"{loc}:{line}")
                    rows.append((rel, safe_join(root, rel, loc), labels, loc))

    ids = assign_ids([rel for rows in entries.values() for rel, *_ in rows])
    bad = BadItems(skip_bad)
    ds = Dataset(name=root.name, root=root, classes=classes, layout="folder")
    for split, rows in entries.items():
        merged: dict[str, ImageRecord] = {}
        for rel, path, labels, _src in rows:
            if rel in merged:  # the same file listed twice (e.g. two CSV rows): union of labels
                old = merged[rel]
                merged[rel] = ImageRecord(old.id, old.name, old.path, old.height, old.width,
                                          old.labels | labels)
                continue
            try:
                h, w = check_image(path)
            except DataError as e:
                bad.handle(e)
                continue
            merged[rel] = ImageRecord(id=ids[rel], name=rel, path=path, height=h, width=w,
                                      labels=labels)
        if not merged:
            raise DataError(splits[split][1], f"split {split!r} has no usable images")
        ds._records[split] = tuple(merged.values())
        ds._gt[split] = None
    ds.skipped = bad.items
    return ds
