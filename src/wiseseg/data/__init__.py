"""Datasets: one representation (:class:`Dataset`), readers chosen by a ``--data`` spec."""

from __future__ import annotations

from pathlib import Path

from wiseseg.data.coco import coco_annotation_files, read_coco
from wiseseg.data.dataset import Dataset, GroundTruth, ImageRecord, Instance, WeakSplit
from wiseseg.data.folder import folder_splits, read_folder
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
    "COCO (annotations/instances_<split>.json or one .json file)",
    "folder-per-class (<class>/*.jpg and/or labels.csv with image,labels)",
)


def detect_layout(path: Path) -> str:
    """Which reader serves ``path``: ``voc``, ``coco`` or ``folder``; a clear error otherwise."""
    if not path.exists():
        raise WisesegError(f"{path}: no such file or directory")
    found = []
    if path.is_dir() and find_voc_root(path) is not None:
        found.append("voc")
    if coco_annotation_files(path):
        found.append("coco")
    if path.is_dir() and not found:
        try:
            if folder_splits(path):
                found.append("folder")
        except WisesegError:
            found.append("folder")
    if len(found) == 1:
        return found[0]
    accepted = "; ".join(LAYOUTS)
    if not found:
        raise WisesegError(f"{path}: unknown dataset layout; accepted: {accepted}")
    raise WisesegError(f"{path}: ambiguous dataset layout (looks like {' and '.join(found)}); "
                       f"point --data at one of them; accepted: {accepted}")


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
