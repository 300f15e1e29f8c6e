"""Negative images (``--negatives DIR``): photographs that contain none of the classes.

A class present in every training image cannot be localised from image-level labels: the
classifier can answer "yes" from the background alone. Images without the class give stage 1
the contrast it needs; they join the training split's weak view (:meth:`Dataset.weak`) with
an empty label, and Mask R-CNN trains on them as background.

``DIR`` is any folder of images (sub-folders are read too, links out of it are refused). Ids
are numbered after the dataset's largest id, in sorted order of the relative paths, so they
are stable for a given folder.
"""

from __future__ import annotations

from pathlib import Path

from wiseseg.data.dataset import BadItems, Dataset, ImageRecord, safe_join
from wiseseg.data.images import IMAGE_SUFFIXES, check_image
from wiseseg.errors import DataError


def read_negatives(folder: str | Path, first_id: int, skip_bad: bool = False
                   ) -> tuple[list[ImageRecord], list]:
    """(records with an empty label, skipped items) for every image under ``folder``.

    Raises :class:`DataError` (one line naming the folder or file) when the folder is missing,
    is not a folder, holds no image, or an image is unreadable (unless ``skip_bad``)."""
    root = Path(folder)
    if not root.exists():
        raise DataError(root, "negatives folder does not exist")
    if not root.is_dir():
        raise DataError(root, "--negatives needs a folder of images, got a file")
    root = root.resolve()
    files = sorted(p for p in root.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise DataError(root, "negatives folder holds no image "
                              f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    bad = BadItems(skip_bad)
    records = []
    for p in files:
        rel = p.relative_to(root).as_posix()
        try:
            path = safe_join(root, rel, root)
            h, w = check_image(path)
        except DataError as e:
            bad.handle(e)
            continue
        records.append(ImageRecord(id=first_id + len(records), name=f"negatives/{rel}",
                                   path=path, height=h, width=w, labels=frozenset()))
    if not records:
        raise DataError(root, "no usable image in the negatives folder")
    return records, bad.items


def add_negatives(ds: Dataset, folder: str | Path, split: str, skip_bad: bool = False
                  ) -> int:
    """Add ``folder``'s images to ``split``'s weak view as negatives; returns how many."""
    top = max((r.id for s in ds.splits for r in ds.weak(s).records), default=0)
    records, skipped = read_negatives(folder, top + 1, skip_bad)
    ds.add_weak_only(split, records, folder)
    ds.skipped.extend(skipped)
    return len(records)
