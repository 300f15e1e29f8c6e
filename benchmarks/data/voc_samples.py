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

    .venv/bin/python benchmarks/data/voc_samples.py pascal-sample-gt-masks DST/voc \\
        [--image-level pascal_sample_gt]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
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
    p.add_argument("--seg-val", type=Path, default=HERE / "voc2012_seg_val.txt",
                   help="VOC 2012 ImageSets/Segmentation/val.txt (default: the copy here)")
    args = p.parse_args()
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
            if names:
                extra[vid] = (img, {"names": names, "size": data["size"]})
    known_extra = sorted({n for _, info in extra.values() for n in info["names"]})
    unlabelled = [c for c in VOC_CLASSES if c not in known_extra]
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
                out.images[-1]["unlabelled_classes"] = unlabelled
        out.write(args.dst / "annotations" / f"instances_{split}.json")
        print(f"{split}: {out.summary()}"
              + (f"; + {len(extra)} image-level-only images" if split == "train" and extra
                 else ""))


if __name__ == "__main__":
    main()
