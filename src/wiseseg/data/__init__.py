"""Datasets: one representation (:class:`Dataset`), readers chosen by a ``--data`` spec."""

from __future__ import annotations

from pathlib import Path

from wiseseg.data.coco import coco_annotation_files, peek_instances_json, read_coco
from wiseseg.data.dataset import Dataset, GroundTruth, ImageRecord, Instance, WeakSplit
from wiseseg.data.folder import class_folder_names, folder_splits, read_folder
from wiseseg.data.images import load_image
from wiseseg.data.shapes import ensure_shapes, parse_shapes_spec
from wiseseg.data.voc import find_voc_root, read_voc
from wiseseg.errors import WisesegError

__all__ = [
    "Dataset", "GroundTruth", "ImageRecord", "Instance", "WeakSplit", "load_image",
    "open_dataset", "detect_layout", "LAYOUTS",
]

LAYOUTS = (
    "'shapes' (built-in)",
    "VOC (JPEGImages/ + ImageSets/Segmentation/<split>.txt)",
    "COCO (annotations/instances_<split>.json, a .json file, or one instances .json in the "
    "folder beside its images)",
    "folder-per-class (<class>/*.jpg and/or labels.csv with image,labels)",
)


def _folder_reading(path: Path, image_dirs: frozenset[str] = frozenset()) -> str | None:
    """How ``path`` reads as folder-per-class, in words, or None. Sub-folders named in
    ``image_dirs`` (where a COCO file's images live) are not taken for class folders."""
    try:
        splits = folder_splits(path)
    except WisesegError as e:  # e.g. labels.csv and train.csv both: still this layout
        return f"folder-per-class ({e})"
    if not splits:
        return None
    if any(kind == "csv" for kind, _ in splits.values()):
        return "image-level labels " + ", ".join(loc.name for _, loc in splits.values())
    if set(splits) == {"train"} and splits["train"][1] == path:
        names = [n for n in class_folder_names(path) if n not in image_dirs]
        return f"class folders {', '.join(n + '/' for n in names)}" if names else None
    return f"split folders {', '.join(s + '/' for s in splits)} of class folders"


def detect_layout(path: Path) -> str:
    """Which reader serves ``path``: ``voc``, ``coco`` or ``folder``; a clear error otherwise.

    A folder holding one COCO instances JSON (any name; see
    :func:`~wiseseg.data.coco.peek_instances_json`) beside its images is COCO. A folder that
    reads several ways — such a JSON and also class sub-folders, several instances JSON
    files, VOC and COCO — is an error listing what was found and how to choose.
    """
    if not path.exists():
        raise WisesegError(f"{path}: no such file or directory")
    accepted = "; ".join(LAYOUTS)
    if path.is_file():
        if coco_annotation_files(path):
            return "coco"
        raise WisesegError(f"{path}: unknown dataset layout; accepted: {accepted}")
    found: list[tuple[str, str]] = []
    voc = find_voc_root(path)
    if voc is not None:
        found.append(("voc", f"VOC in {voc.name if voc != path else '.'}/"))
    ann_dir = path / "annotations"
    ann = sorted(ann_dir.glob("instances_*.json")) if ann_dir.is_dir() else []
    if ann:
        found.append(("coco", "COCO " + ", ".join(f"annotations/{f.name}" for f in ann)))
    top = {}
    for f in sorted(path.glob("*.json")):
        dirs = peek_instances_json(f) if f.is_file() else None
        if dirs is not None:
            top[f] = dirs
            found.append(("coco", f"COCO instances JSON {f.name}"))
    if not found:
        folder = _folder_reading(path)
    elif top and not ann and voc is None:  # a JSON beside its images: do class folders compete?
        folder = _folder_reading(path, frozenset({"images"}).union(*top.values()))
    else:
        folder = None
    if folder:
        found.append(("folder", folder))
    if len(found) == 1:
        return found[0][0]
    if not found:
        raise WisesegError(f"{path}: unknown dataset layout; accepted: {accepted}")
    hints = []
    if top:
        which = "one of the JSON files" if len(top) > 1 else "the JSON file"
        hints.append(f"point --data at {which} to read it as COCO (e.g. {next(iter(top))})")
    if ann:
        hints.append(f"{'' if top else 'point --data '}at one split file to read that COCO "
                     f"split (e.g. {ann[0]})")
    if voc is not None and voc != path:
        hints.append(f"{'' if hints else 'point --data '}at {voc} for VOC")
    if folder and top:
        hints.append("or move the JSON out of the folder to read the class folders")
    elif folder or (voc is not None and voc == path):
        hints.append("or move the files of the unwanted layout out of the folder")
    raise WisesegError(f"{path}: ambiguous dataset layout: found {'; '.join(d for _, d in found)}"
                       f"; {', '.join(hints)}")


def open_dataset(spec: str | Path, skip_bad: bool = False, progress: bool = True) -> Dataset:
    """Open a dataset from a ``--data`` spec.

    Args:
        spec: ``shapes`` (optionally ``shapes:key=value,...``) or a path whose layout is
            detected (VOC, COCO, folder-per-class).
        skip_bad: skip bad items with a warning (listed in ``Dataset.skipped``) instead of
            raising on the first one.
        progress: show a progress bar while generating the shapes data.
    """
    text = str(spec)
    if text == "shapes" or text.startswith("shapes:"):
        root = ensure_shapes(parse_shapes_spec(text), progress=progress)
        ds = read_voc(root, skip_bad=skip_bad)
        ds.name, ds.layout = "shapes", "shapes"
        return ds
    path = Path(text).expanduser()
    layout = detect_layout(path)
    reader = {"voc": read_voc, "coco": read_coco, "folder": read_folder}[layout]
    return reader(path, skip_bad=skip_bad)
