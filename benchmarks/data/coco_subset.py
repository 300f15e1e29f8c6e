"""COCO subsets → one wiseseg COCO dataset over the frequent classes, with negatives.

SRC is a folder holding one or more COCO copies (each an ``annotations/instances_*.json`` with
its images in ``<split>/``, ``images/<split>/`` or ``images/``), e.g. several small public
excerpts of COCO 2017. Images are merged by COCO image id (an image in two copies counts
once; its annotations are the union by annotation id) and kept only when the file is present.

Classes: those present in at least ``--min-images`` of the merged images (or the list given
with ``--classes``), in COCO id order. Annotations of other classes are dropped, so an image
holding none of the kept classes is a negative image. Crowd annotations of a kept class stay
crowd (wiseseg ignores those regions in evaluation). Masks are written as compressed RLE;
images are copied unchanged. Usage::

    .venv/bin/python benchmarks/data/coco_subset.py SRC /data/coco_subset [--min-images 15]
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from _coco_out import CocoWriter, base_parser, check_args, image_ids, split_names
from pycocotools import mask as mask_utils


def _segmentation_mask(seg, h: int, w: int) -> np.ndarray:
    if isinstance(seg, list):
        polys = [p for p in seg if len(p) >= 6 and len(p) % 2 == 0]
        if not polys:
            return np.zeros((h, w), bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    elif isinstance(seg.get("counts"), list):  # uncompressed RLE (crowd)
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def _find_image(json_path: Path, split: str, file_name: str) -> Path | None:
    root = json_path.parent.parent
    for d in (root / split, root / "images" / split, root / "images", root):
        if (d / file_name).is_file():
            return d / file_name
    return None


def main() -> None:
    p = base_parser(__doc__.splitlines()[0], 0.25)
    p.add_argument("--min-images", type=int, default=15,
                   help="keep the classes present in at least this many images (default 15)")
    p.add_argument("--classes", default=None,
                   help="comma-separated COCO class names to keep instead of --min-images")
    args = p.parse_args()
    check_args(args)

    categories: dict[int, str] = {}
    images: dict[int, dict] = {}  # COCO image id -> {"path", "h", "w", "anns": {id: ann}}
    sources = sorted(args.src.rglob("annotations/instances_*.json"))
    if not sources:
        raise SystemExit(f"error: {args.src}: no annotations/instances_*.json below")
    for jf in sources:
        data = json.loads(jf.read_text())
        split = jf.stem.removeprefix("instances_")
        categories.update({c["id"]: c["name"] for c in data["categories"]})
        by_image: dict[int, list] = {}
        for a in data["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        for im in data["images"]:
            path = _find_image(jf, split, im["file_name"])
            if path is None:
                continue
            entry = images.setdefault(im["id"], {"path": path, "h": im["height"],
                                                 "w": im["width"], "anns": {}})
            entry["anns"].update({a["id"]: a for a in by_image.get(im["id"], [])})
    if not images:
        raise SystemExit(f"error: {args.src}: no listed image was found on disk")

    per_class = Counter(c for e in images.values()
                        for c in {a["category_id"] for a in e["anns"].values()})
    if args.classes:
        wanted = [s.strip() for s in args.classes.split(",") if s.strip()]
        unknown = sorted(set(wanted) - set(categories.values()))
        if unknown:
            raise SystemExit(f"error: unknown classes: {', '.join(unknown)}")
        keep = [cid for cid in sorted(categories) if categories[cid] in wanted]
    else:
        keep = [cid for cid in sorted(categories) if per_class[cid] >= args.min_images]
    names = [categories[cid] for cid in keep]
    print(f"{len(images)} images from {len(sources)} files; {len(keep)} classes kept: "
          + ", ".join(f"{categories[c]} ({per_class[c]})" for c in keep))

    keys = {str(i): i for i in images}
    ids = image_ids(list(keys))
    for split, split_keys in split_names(list(keys), args.val_fraction, args.seed).items():
        out = CocoWriter(names, f"COCO 2017 subset, {split} (seed {args.seed})")
        for key in split_keys:
            e = images[keys[key]]
            image_id = out.add_image(ids[key], e["path"], args.dst / split, e["path"].name,
                                     e["h"], e["w"])
            for a in sorted(e["anns"].values(), key=lambda a: a["id"]):
                if a["category_id"] in keep:
                    m = _segmentation_mask(a["segmentation"], e["h"], e["w"])
                    out.add_mask(image_id, categories[a["category_id"]], m,
                                 bool(a.get("iscrowd", 0)))
        out.write(args.dst / "annotations" / f"instances_{split}.json")
        print(f"{split}: {out.summary()}")


if __name__ == "__main__":
    main()
