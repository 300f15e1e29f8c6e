"""PASCAL VOC 2012 samples (Supervisely copies) → wiseseg's COCO layout, folder ``voc``.

SRC is a checkout of ``supervisely-ecosystem/pascal-sample-gt-masks`` (``project/<set>/ann/
<id>.jpg.json`` + ``project/<set>/img/<id>.jpg``; each object a ``bitmap``: base64 → zlib →
PNG, placed at ``origin`` [x, y]; class ``neutral`` is VOC's void border). The split follows
VOC 2012's own segmentation lists, not the copy's folders: ids in the official seg ``val``
list (``voc2012_seg_val.txt`` beside this file, 1,449 ids from VOC's
``ImageSets/Segmentation/val.txt``) go to ``val``, all others to ``train``. ``neutral``
pixels become the image's ignore region (COCO ``iscrowd``), as VOC evaluation ignores void.

``--image-level SRC2`` (a checkout of ``supervisely-ecosystem/pascal_sample_gt``, boxes of
15 classes) adds its images to ``train`` as **image-level labels only**: each image entry
carries ``"image_labels"`` (class names of its boxes) and no annotation, so wiseseg uses them
for the weakly supervised stages and never as masks. Images in the seg val list or already
in SRC are dropped. That copy labels only 15 of the 20 classes; the other five
(aeroplane, diningtable, pottedplant, sofa, tvmonitor) are listed per image in
``"unlabelled_classes"`` — their absence is unknown, not a negative.

``--all-labels LABELS`` completes those images' labels with VOC 2012's own image-level labels
for all 20 classes, as the paper trains: either a VOC devkit's ``ImageSets/Main`` folder
(``<class>_trainval.txt``: 1 present, 0 present but difficult only, -1 absent) or the
``voc12/cls_labels.npy`` that weakly supervised segmentation repositories ship (a dict VOC
id → 20 values in VOC's class order, made from VOC's XML annotations; e.g. in
``YudeWang/SEAM``, MIT licence; read without running any code it might hold). Where the
boxes' 15 classes disagree with these labels the conversion stops; images the labels do
not list keep ``"unlabelled_classes"``.

    .venv/bin/python benchmarks/data/voc_samples.py pascal-sample-gt-masks DST/voc \\
        [--image-level pascal_sample_gt [--all-labels SEAM/voc12/cls_labels.npy]]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import pickle
import sys
import zlib
from pathlib import Path

import numpy as np
from _coco_out import CocoWriter
from PIL import Image

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
VOID = "neutral"
HERE = Path(__file__).resolve().parent


def seg_val_ids(path: Path) -> set[str]:
    ids = {ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()}
    if len(ids) != 1449:
        sys.exit(f"error: {path}: {len(ids)} ids, VOC 2012 seg val has 1449")
    return ids


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only: a labels file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how a protocol-2 pickle stores an array's bytes

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a labels file")
        return super().find_class(module, name)


def read_all_labels(path: Path) -> dict[str, set[str]]:
    """VOC id → the classes present, from an ``ImageSets/Main`` folder or a ``cls_labels.npy``
    (see the module docstring)."""
    out: dict[str, set[str]] = {}
    if path.is_dir():
        for c in VOC_CLASSES:
            f = path / f"{c}_trainval.txt"
            if not f.is_file():
                sys.exit(f"error: {path}: no {f.name} (an ImageSets/Main folder has one a class)")
            for n, ln in enumerate(f.read_text().split("\n"), 1):
                if not ln.strip():
                    continue
                parts = ln.split()
                if len(parts) != 2 or parts[1] not in ("1", "0", "-1"):
                    sys.exit(f"error: {f}: line {n} is {ln!r}, not 'ID 1|0|-1'")
                out.setdefault(parts[0], set())
                if parts[1] != "-1":  # 0: only difficult objects of the class, still there
                    out[parts[0]].add(c)
        return out
    try:
        with path.open("rb") as fh:
            np.lib.format.read_magic(fh)
            np.lib.format.read_array_header_1_0(fh)
            table = _ArrayUnpickler(fh).load()
        table = table.item() if isinstance(table, np.ndarray) else table
    except (OSError, ValueError, pickle.UnpicklingError, EOFError) as e:
        sys.exit(f"error: {path}: not a cls_labels.npy of VOC labels ({e})")
    for vid, row in dict(table).items():
        row = np.asarray(row).ravel()
        if row.shape != (len(VOC_CLASSES),):
            sys.exit(f"error: {path}: {vid} has {row.size} values, VOC has {len(VOC_CLASSES)} "
                     "classes")
        out[str(vid)] = {c for c, v in zip(VOC_CLASSES, row) if v > 0}
    return out


def label_counts(extra: dict[str, tuple[Path, dict]]) -> str:
    """``class=images`` over the image-level images, in VOC's class order."""
    counts = {c: sum(c in info["names"] for _, info in extra.values()) for c in VOC_CLASSES}
    return ", ".join(f"{c}={n}" for c, n in counts.items())


def annotated_images(src: Path) -> dict[str, tuple[Path, Path]]:
    """VOC id → (annotation JSON, image) over every ``project/<set>/`` folder (first seen)."""
    proj = src / "project" if (src / "project").is_dir() else src
    found: dict[str, tuple[Path, Path]] = {}
    for ann in sorted(proj.glob("*/ann/*.json")):
        vid = ann.name.split(".")[0]
        img = ann.parent.parent / "img" / ann.name[: -len(".json")]
        if not img.is_file():
            sys.exit(f"error: {ann}: no image {img}")
        found.setdefault(vid, (ann, img))
    if not found:
        sys.exit(f"error: {src}: no project/*/ann/*.json (a Supervisely project checkout?)")
    return found


def bitmap_mask(obj: dict, h: int, w: int, source: Path) -> np.ndarray:
    """The object's full-image boolean mask from its Supervisely bitmap (clipped to the image)."""
    bm = obj["bitmap"]
    png = zlib.decompress(base64.b64decode(bm["data"]))
    part = np.asarray(Image.open(io.BytesIO(png))) > 0
    if part.ndim == 3:  # RGBA bitmaps: any channel set
        part = part.any(axis=2)
    x0, y0 = (int(v) for v in bm["origin"])
    if x0 < 0 or y0 < 0 or x0 >= w or y0 >= h:
        sys.exit(f"error: {source}: bitmap origin {bm['origin']} outside the {w}×{h} image")
    full = np.zeros((h, w), bool)
    ph, pw = min(part.shape[0], h - y0), min(part.shape[1], w - x0)
    full[y0:y0 + ph, x0:x0 + pw] = part[:ph, :pw]
    return full


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="pascal-sample-gt-masks checkout")
    p.add_argument("dst", type=Path, help="output folder (conventionally .../voc); empty or new")
    p.add_argument("--image-level", type=Path, default=None,
                   help="pascal_sample_gt checkout: extra train images, image-level labels only")
    p.add_argument("--all-labels", type=Path, default=None,
                   help="VOC's image-level labels of all 20 classes for the --image-level images: "
                        "an ImageSets/Main folder or a cls_labels.npy")
    p.add_argument("--seg-val", type=Path, default=HERE / "voc2012_seg_val.txt",
                   help="VOC 2012 ImageSets/Segmentation/val.txt (default: the copy here)")
    args = p.parse_args()
    if args.all_labels is not None and args.image_level is None:
        sys.exit("error: --all-labels completes the --image-level images' labels; give both")
    if args.dst.exists() and any(args.dst.iterdir()):
        sys.exit(f"error: {args.dst}: exists and is not empty")
    val_ids = seg_val_ids(args.seg_val)
    images = annotated_images(args.src)
    with_masks = {}
    for vid, (ann, img) in images.items():
        data = json.loads(ann.read_text())
        if data.get("objects"):  # the copy's VOC test images carry no objects: not usable
            with_masks[vid] = (ann, img, data)
    splits = {"train": sorted(v for v in with_masks if v not in val_ids),
              "val": sorted(v for v in with_masks if v in val_ids)}
    extra: dict[str, tuple[Path, dict]] = {}
    if args.image_level is not None:
        for vid, (ann, img) in annotated_images(args.image_level).items():
            if vid in val_ids or vid in with_masks:
                continue
            data = json.loads(ann.read_text())
            names = sorted({o["classTitle"] for o in data.get("objects", [])} & set(VOC_CLASSES))
            if names or args.all_labels is not None:  # no box: kept if --all-labels names some
                extra[vid] = (img, {"names": names, "size": data["size"]})
    known_extra = sorted({n for _, info in extra.values() for n in info["names"]})
    unlabelled = [c for c in VOC_CLASSES if c not in known_extra]
    completed = 0
    if args.all_labels is not None and unlabelled:
        full = read_all_labels(args.all_labels)
        for vid, (_, info) in extra.items():
            if vid not in full:
                continue
            if set(info["names"]) != full[vid] - set(unlabelled):
                sys.exit(f"error: {args.all_labels}: {vid} has {sorted(full[vid])}, its boxes "
                         f"{info['names']} (classes other than {', '.join(unlabelled)} must agree)")
            info["names"], info["complete"] = sorted(full[vid]), True
            completed += 1
    extra = {vid: e for vid, e in extra.items() if e[1]["names"]}
    for split, ids in splits.items():
        out = CocoWriter(list(VOC_CLASSES), f"PASCAL VOC 2012 sample, seg {split}")
        for vid in ids:
            ann, img, data = with_masks[vid]
            h, w = int(data["size"]["height"]), int(data["size"]["width"])
            with Image.open(img) as im:
                if im.size != (w, h):
                    sys.exit(f"error: {img}: image is {im.size}, {ann.name} says {(w, h)}")
            image_id = out.add_image(int(vid.replace("_", "")), img, args.dst / split,
                                     f"{vid}.jpg", h, w)
            void = np.zeros((h, w), bool)
            present = []
            for obj in data["objects"]:
                mask = bitmap_mask(obj, h, w, ann)
                if obj["classTitle"] == VOID:
                    void |= mask
                elif obj["classTitle"] in VOC_CLASSES:
                    out.add_mask(image_id, obj["classTitle"], mask)
                    present.append(obj["classTitle"])
                else:
                    sys.exit(f"error: {ann}: unknown class {obj['classTitle']!r}")
            if void.any() and present:
                # COCO has no class-free region: the void border is filed as a crowd region of
                # a class the image has anyway, so the image-level labels stay VOC's.
                out.add_mask(image_id, present[0], void, iscrowd=True)
        if split == "train":
            for vid, (img, info) in sorted(extra.items()):
                h, w = int(info["size"]["height"]), int(info["size"]["width"])
                out.add_image(int(vid.replace("_", "")), img, args.dst / split, f"{vid}.jpg", h, w)
                out.images[-1]["image_labels"] = info["names"]
                if not info.get("complete"):
                    out.images[-1]["unlabelled_classes"] = unlabelled
        out.write(args.dst / "annotations" / f"instances_{split}.json")
        print(f"{split}: {out.summary()}"
              + (f"; + {len(extra)} image-level-only images" if split == "train" and extra
                 else "")
              + (f" ({completed} with all 20 classes from {args.all_labels})"
                 if split == "train" and completed else "")
              + (f"; their labels: {label_counts(extra)}" if split == "train" and extra
                 else ""))


if __name__ == "__main__":
    main()
