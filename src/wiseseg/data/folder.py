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

from pathlib import Path

from wiseseg.data.dataset import BadItems, Dataset, ImageRecord, assign_ids, safe_join
from wiseseg.data.images import IMAGE_SUFFIXES, check_image
from wiseseg.data.text import csv_dict_rows
from wiseseg.data.voc import parse_label_list, read_class_file
from wiseseg.errors import DataError, WisesegError


def _is_image_name(p: Path) -> bool:
    """An image file name; hidden files (macOS ``._a.jpg``, ``.DS_Store``) are never images,
    as in ``--negatives``."""
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _class_dirs(d: Path) -> list[Path]:
    return sorted(
        p for p in d.iterdir()
        if p.is_dir() and not p.name.startswith(".")
        and any(_is_image_name(q) for q in p.iterdir())
    )


def _has_images(d: Path) -> bool:
    return any(_is_image_name(q) and not any(part.startswith(".") for part in
                                             q.relative_to(d).parts) for q in d.rglob("*"))


def _check_other_dirs(loc: Path, root: Path, bad: BadItems, need_images: bool) -> None:
    """Folders of ``loc`` that are not class folders must not hide data: one holding
    images only in sub-folders, or (without classes.txt, where the folders name the
    classes) an empty one, is an error (skipped with a warning under ``--skip-bad``)."""
    classes = set(_class_dirs(loc))
    for d in sorted(p for p in loc.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if d in classes or (loc == root and d.name in ("train", "val", "test")):
            continue
        if _has_images(d):
            bad.handle(DataError(d, "holds images only in sub-folders, which are not read; "
                                    "a class folder holds its images directly"))
        elif need_images:
            bad.handle(DataError(d, "empty class folder: the class would have no images; "
                                    "add images, remove the folder, or list the classes in "
                                    "classes.txt"))


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
                for _, row in csv_dict_rows(loc, ("image", "labels")):
                    names.update(s.strip() for s in (row.get("labels") or "").split(";"))
        names.discard("")
        classes = tuple(sorted(names))
    if not classes:
        raise WisesegError(f"{root}: no class names found")

    bad = BadItems(skip_bad)
    entries: dict[str, list[tuple[str, Path, frozenset[int], str]]] = {}
    for split, (kind, loc) in splits.items():
        rows = entries.setdefault(split, [])
        if kind == "dirs":
            index = {c: i for i, c in enumerate(classes)}
            _check_other_dirs(loc, root, bad, need_images=not (root / "classes.txt").exists())
            for cdir in _class_dirs(loc):
                if cdir.name not in index:
                    raise DataError(cdir, f"class folder {cdir.name!r} is not in classes.txt")
                safe_join(root, cdir.relative_to(root).as_posix(), cdir)  # no link out
                for img in sorted(cdir.iterdir()):
                    if _is_image_name(img) and not img.is_dir():
                        rel = img.relative_to(root).as_posix()
                        try:
                            path = safe_join(root, rel, cdir)
                        except DataError as e:
                            bad.handle(DataError(img, f"{e.problem} (a link out of the "
                                                      f"dataset)"))
                            continue
                        rows.append((rel, path, frozenset({index[cdir.name]}), str(cdir)))
                    elif img.is_dir() and not img.name.startswith(".") and _has_images(img):
                        bad.handle(DataError(img, "images in a sub-folder of a class folder "
                                                  "are not read; move them into "
                                                  f"{cdir.name}/ or into a class folder of "
                                                  "their own"))
        else:
            for line, row in csv_dict_rows(loc, ("image", "labels")):
                rel = (row["image"] or "").strip()
                if not rel:
                    raise DataError(loc, f"line {line}: empty image path")
                if row["labels"] is None:
                    raise DataError(loc, f"line {line}: no labels field (write "
                                         f"'{rel},' for a negative image)")
                labels = parse_label_list(row["labels"], classes, f"{loc}:{line}")
                try:
                    rows.append((rel, safe_join(root, rel, loc), labels, f"{loc}:{line}"))
                except DataError as e:
                    bad.handle(DataError(f"{loc}:{line}", e.problem))

    ids = assign_ids([rel for rows in entries.values() for rel, *_ in rows])
    ds = Dataset(name=root.name, root=root, classes=classes, layout="folder")
    for split, rows in entries.items():
        merged: dict[str, ImageRecord] = {}
        where: dict[Path, tuple[str, str]] = {}
        for rel, path, labels, src in rows:
            if path in where:  # one file twice, also as an alias (images/../images/a.jpg)
                first_rel, first_src = where[path]
                bad.handle(DataError(src, f"{rel!r} is the file already listed as "
                                          f"{first_rel!r} ({first_src}); list every image "
                                          f"once, with all its labels ('a;b')"))
                continue
            where[path] = (rel, src)
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
