"""The one dataset representation every stage uses.

A :class:`Dataset` knows its class names and, per split, a list of :class:`ImageRecord` (id,
path, upright size, image-level label set). Ground truth (:class:`GroundTruth`: instances with
COCO-RLE masks plus an ignore region) is kept apart and handed out only by
:meth:`Dataset.ground_truth`, for evaluation and for the fully supervised reference.

Weakly supervised stages receive a :class:`WeakSplit`: records and class names only. It holds
no reference to the dataset or its ground truth, so a training stage cannot reach masks even by
accident.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wiseseg.errors import DataError, WisesegError
from wiseseg.rle import RLE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageRecord:
    """One image as the weakly supervised stages see it.

    Attributes:
        id: integer image id, unique within the dataset (the COCO ``image_id``).
        name: the dataset's own name for the image (VOC id, file stem, COCO file name).
        path: absolute path of the image file, inside the dataset root.
        height, width: size of the upright (EXIF-applied) image in pixels.
        labels: 0-based indices of the classes present (the image-level label); empty for a
            negative image.
        unknown: classes whose presence is not known for this image (an image labelled for
            some classes only); the classifier's loss leaves them out. Empty for most data.
    """

    id: int
    name: str
    path: Path
    height: int
    width: int
    labels: frozenset[int]
    unknown: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Instance:
    """A ground-truth object: 0-based class index and its mask as COCO RLE (upright image)."""

    category: int
    segmentation: RLE


@dataclass(frozen=True)
class GroundTruth:
    """All ground truth of one image.

    Attributes:
        image_id: the record's id.
        instances: the objects, in the dataset's order.
        ignore: pixels excluded from evaluation (VOC void 255, COCO crowd), or None.
    """

    image_id: int
    instances: tuple[Instance, ...]
    ignore: RLE | None = None


@dataclass(frozen=True)
class WeakSplit(Sequence[ImageRecord]):
    """Images and image-level labels of one split: all that weak supervision may use."""

    split: str
    classes: tuple[str, ...]
    records: tuple[ImageRecord, ...]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):  # type: ignore[override]
        return self.records[i]

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    def by_id(self) -> dict[int, ImageRecord]:
        return {r.id: r for r in self.records}


@dataclass
class Skipped:
    """A bad item that ``skip_bad`` dropped, kept so summaries can report it."""

    path: str
    problem: str


@dataclass
class Dataset:
    """A dataset with class names, splits of records and (optional) ground truth.

    Build one with :func:`wiseseg.data.open_dataset`; readers fill the fields.
    """

    name: str
    root: Path
    classes: tuple[str, ...]
    layout: str
    _records: dict[str, tuple[ImageRecord, ...]] = field(default_factory=dict, repr=False)
    _gt: dict[str, dict[int, GroundTruth] | None] = field(default_factory=dict, repr=False)
    #: per split, images with image-level labels only (no masks) or negatives (``--negatives``):
    #: in :meth:`weak`, never in :meth:`records` / :meth:`ground_truth`
    _weak_only: dict[str, tuple[ImageRecord, ...]] = field(default_factory=dict, repr=False)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def splits(self) -> list[str]:
        return list(self._records)

    def _check_split(self, split: str) -> None:
        if split not in self._records and not self._carve(split):
            raise WisesegError(
                f"{self.root}: no split {split!r} in this {self.layout} dataset "
                f"(available: {', '.join(self.splits) or 'none'})"
            )

    def has_split(self, split: str) -> bool:
        """Whether ``split`` exists, carving ``<base>-fit`` / ``<base>-calib`` (or fold ``k``'s
        ``<base>-fitK`` / ``<base>-calibK``) if asked."""
        return split in self._records or self._carve(split)

    def _carve(self, split: str) -> bool:
        """Make ``<base>-fit`` / ``<base>-calib`` (fold ``K``: ``-fitK`` / ``-calibK``) on first
        use (see :func:`calibration_split`); False when ``split`` is not of that form or its
        base split does not exist."""
        m = _CARVED.match(split)
        if not m or m.group(1) not in self._records:
            return False
        base, fold = m.group(1), m.group(3)
        try:
            fit, calib = calibration_split(self._records[base], fold=int(fold or 0))
        except WisesegError as e:
            raise WisesegError(f"{self.root}: split {split!r}: {e}") from None
        gt = self._gt.get(base)
        for name, recs in ((f"{base}-fit{fold}", fit), (f"{base}-calib{fold}", calib)):
            self._records[name] = recs
            self._gt[name] = None if gt is None else {r.id: gt[r.id] for r in recs}
        if base in self._weak_only:  # mask-free images only train: they join the fit part
            self._weak_only[f"{base}-fit{fold}"] = self._weak_only[base]
        return True

    def records(self, split: str) -> tuple[ImageRecord, ...]:
        self._check_split(split)
        return self._records[split]

    def weak(self, split: str) -> WeakSplit:
        """The mask-free view that weakly supervised training uses: the split's images plus
        its image-level-only images and negatives (:meth:`add_weak_only`)."""
        return WeakSplit(split=split, classes=self.classes,
                         records=self.records(split) + self._weak_only.get(split, ()))

    def segmenter_view(self, split: str, masks: str, include: Collection[int] = ()
                       ) -> WeakSplit:
        """The images Mask R-CNN trains on. ``masks="pseudo"``: the split's images plus its
        weak-only images whose every class is labelled (negatives and fully labelled
        image-level images); an image with unlabelled classes (``unknown``) trains stage 1
        only, since its unlabelled objects would be taught as background — unless its id is
        in ``include`` (stage 1 predicted none of its unlabelled classes:
        ``pseudo.partial_labels``). ``masks="gt"``: the split's images plus its negatives
        (true masks: none)."""
        keep = set(include) if masks == "pseudo" else set()
        extra = tuple(r for r in self.weak_only(split) if (not r.unknown or r.id in keep)
                      and (masks == "pseudo" or not r.labels))
        return WeakSplit(split=split, classes=self.classes, records=self.records(split) + extra)

    def segmenter_records(self, split: str, masks: str, negatives: float = 1.0,
                          include: Collection[int] = ()) -> list[ImageRecord]:
        """:meth:`segmenter_view`'s images with at most ``round(negatives × n)`` of its added
        negatives (``n``: the images that are not added negatives), a fixed seeded choice:
        hundreds of background images would otherwise take most of a time-bounded training
        (``segmenter.negatives``; 0 leaves them to stage 1)."""
        added = {r.id for r in self.weak_only(split) if not r.labels and not r.unknown}
        recs = list(self.segmenter_view(split, masks, include).records)
        neg = [r for r in recs if r.id in added]
        keep = int(round(float(negatives) * (len(recs) - len(neg))))
        if len(neg) <= keep:
            return recs
        chosen = {r.id for r in random.Random(0).sample(neg, keep)}
        return [r for r in recs if r.id not in added or r.id in chosen]

    def partially_labelled(self, split: str) -> tuple[ImageRecord, ...]:
        """The split's weak-only images with a label and unlabelled classes (``unknown``):
        the ones ``pseudo.partial_labels`` decides about."""
        return tuple(r for r in self.weak_only(split) if r.unknown and r.labels)

    def weak_only(self, split: str) -> tuple[ImageRecord, ...]:
        """The split's images without masks: image-level labels only, or negatives."""
        self._check_split(split)
        return self._weak_only.get(split, ())

    def add_weak_only(self, split: str, records: Sequence[ImageRecord], source: str | Path
                      ) -> None:
        """Add images that carry image-level labels only (or none: negatives) to ``split``'s
        weak view. Their ids must be new and their files distinct from the split's own."""
        self._check_split(split)
        have = {r.id: r for r in self.weak(split)}
        paths = {r.path.resolve() for r in have.values()}
        for r in records:
            if r.id in have:
                raise DataError(source, f"image id {r.id} ({r.name}) is already used by "
                                f"{have[r.id].name} in split {split!r}")
            if r.path.resolve() in paths:
                raise DataError(r.path, f"image is already in split {split!r}")
            have[r.id] = r
            paths.add(r.path.resolve())
        self._weak_only[split] = self._weak_only.get(split, ()) + tuple(records)
        for name in self._records:  # already carved: its fit parts train on them too
            m = _CARVED.match(name)
            if m and m.group(1) == split and m.group(2) == "fit":
                self._weak_only[name] = self._weak_only[split]

    @property
    def category_ids(self) -> list[int]:
        """COCO ``category_id`` of each class index: COCO's own ids, else ``index + 1``."""
        ids = getattr(self, "coco_category_ids", None)
        return list(ids) if ids is not None else list(range(1, len(self.classes) + 1))

    def class_index(self, category_id: int) -> int | None:
        """0-based class index of a COCO ``category_id``, or None if unknown."""
        try:
            return self.category_ids.index(category_id)
        except ValueError:
            return None

    def coco_categories(self) -> list[dict]:
        return [{"id": cid, "name": n} for cid, n in zip(self.category_ids, self.classes)]

    def coco_images(self, split: str) -> list[dict]:
        return [
            {"id": r.id, "file_name": r.name if "." in r.name else r.path.name,
             "height": r.height, "width": r.width}
            for r in self.records(split)
        ]

    def to_coco(self, split: str) -> dict:
        """Ground truth of ``split`` as a COCO instances dict (instances only; ignore regions
        such as VOC void have no category and are not exported).

        Usable by pycocotools' ``COCO`` and by other frameworks.
        """
        from wiseseg import rle

        gts = self.ground_truth(split)
        anns = []
        cids = self.category_ids
        for r in self.records(split):
            g = gts[r.id]
            segs = [i.segmentation for i in g.instances]
            boxes, areas = rle.to_bbox(segs), rle.area(segs)
            for inst, box, a in zip(g.instances, boxes, areas):
                anns.append({"id": len(anns) + 1, "image_id": r.id,
                             "category_id": cids[inst.category], "segmentation": inst.segmentation,
                             "area": float(a), "bbox": [float(v) for v in box], "iscrowd": 0})
        return {"images": self.coco_images(split), "annotations": anns,
                "categories": self.coco_categories()}

    def has_ground_truth(self, split: str) -> bool:
        self._check_split(split)
        return self._gt.get(split) is not None

    def ground_truth(self, split: str) -> dict[int, GroundTruth]:
        """Ground truth by image id. Raises a clear error when the split has none."""
        self._check_split(split)
        gt = self._gt.get(split)
        if gt is None:
            raise WisesegError(
                f"{self.root}: split {split!r} has image-level labels only, no ground-truth "
                f"masks ({self.layout} layout); evaluation needs masks"
            )
        return gt


_CARVED = re.compile(r"^(.+)-(fit|calib)(\d*)$")
CALIBRATION_FRACTION = 0.15
CALIBRATION_SEED = 0


def calibration_split(records: Sequence[ImageRecord], fraction: float = CALIBRATION_FRACTION,
                      seed: int = CALIBRATION_SEED, fold: int = 0
                      ) -> tuple[tuple[ImageRecord, ...], tuple[ImageRecord, ...]]:
    """A split's ``(fit, calib)`` parts: ``calib`` is a seeded random ``fraction`` of the
    images (at least one when there are two or more), ``fit`` the rest, both in the split's
    order. Settings chosen by measurement are chosen on ``calib`` after training on ``fit``
    (``data.train_split=train-fit data.val_split=train-calib``), never on the split a table
    reports; the benchmarks in ``benchmarks/`` do this.

    ``fold`` k > 0 takes the next disjoint ``fraction`` of the same permutation as ``calib``
    (``train-calibK``), so that a small calibration set can be enlarged by pooling folds;
    fold 0 is ``train-calib``.
    """
    import numpy as np

    n = len(records)
    k = min(n - 1, max(1, round(fraction * n))) if n > 1 else 0
    if fold < 0 or (fold > 0 and (fold + 1) * k > n):
        raise WisesegError(f"calibration fold {fold}: {n} images hold folds 0 to "
                           f"{n // max(k, 1) - 1} of {k} images")
    perm = np.random.default_rng(seed).permutation(n)
    chosen = set(perm[fold * k:(fold + 1) * k].tolist())
    fit = tuple(r for i, r in enumerate(records) if i not in chosen)
    calib = tuple(r for i, r in enumerate(records) if i in chosen)
    return fit, calib


class BadItems:
    """Collects bad items: raises at once, or (``skip_bad``) warns, records and goes on."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.items: list[Skipped] = []

    def handle(self, err: DataError) -> None:
        if not self.skip_bad:
            raise err
        log.warning("skipping %s", err)
        self.items.append(Skipped(err.path, err.problem))


_NUMERIC_NAME = re.compile(r"^\d+(_\d+)?$")


def assign_ids(names: Sequence[str]) -> dict[str, int]:
    """Stable integer ids for image names.

    Names made of digits with at most one underscore (VOC ``2007_000032``, shapes ``000123``)
    become that number with the underscore removed, so ids survive a change of split lists.
    Otherwise ids are 1-based positions in the sorted list of all names.
    """
    unique = sorted(set(names))
    if unique and all(_NUMERIC_NAME.match(n) for n in unique):
        ids = {n: int(n.replace("_", "")) for n in unique}
        if len(set(ids.values())) == len(ids) and max(ids.values()) < 2**31:
            return ids
    return {n: i + 1 for i, n in enumerate(unique)}


def safe_join(root: Path, relative: str, source: str | Path) -> Path:
    """``root / relative``, refusing absolute paths and paths that escape ``root``.

    Args:
        root: the dataset root.
        relative: a path read from a data file (list, CSV, JSON).
        source: the data file it came from, named in the error.
    """
    if not relative or relative.strip() != relative:
        raise DataError(source, f"bad path entry {relative!r}")
    rel = Path(relative)
    if rel.is_absolute():
        raise DataError(source, f"path {relative!r} is absolute; paths must be inside {root}")
    root_resolved = root.resolve()
    full = (root_resolved / rel).resolve()
    if full != root_resolved and root_resolved not in full.parents:
        raise DataError(source, f"path {relative!r} escapes the dataset root {root}")
    return full
