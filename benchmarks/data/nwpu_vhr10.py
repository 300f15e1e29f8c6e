"""NWPU VHR-10 with instance masks → wiseseg's COCO layout (10 classes, with negatives).

NWPU VHR-10 (Cheng et al.) is 800 aerial / satellite images: ``positive image set/`` (650
images, each with at least one object of the 10 classes) and ``negative image set/`` (150
images without any). Its own ground truth is boxes only; the instance masks are the COCO
polygons of Su et al. (IGARSS 2019, "VHR-10_dataset_coco", ``annotations.json`` with
``file_name`` = the positive image's name).

SRC must hold the positive images in ``positive image set/`` or ``positive_image_set/``;
``negative image set/`` (or ``negative_image_set/``) is added as images without objects when
present. The annotation file is ``--annotations``, by default the first ``annotations.json``
found under SRC. Polygons become compressed RLE; images are copied unchanged. Usage::

    .venv/bin/python benchmarks/data/nwpu_vhr10.py SRC /data/nwpu_vhr10 [--seed 0]
"""

from __future__ import annotations

import json
from pathlib import Path

from _coco_out import CocoWriter, base_parser, check_args, image_ids, split_names
from PIL import Image
from pycocotools import mask as mask_utils


def _find_dir(src: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (src / n).is_dir():
            return src / n
    return None


def main() -> None:
    p = base_parser(__doc__.splitlines()[0], 0.25)
    p.add_argument("--annotations", type=Path, default=None,
                   help="the instance-mask COCO JSON (default: SRC/**/annotations.json)")
    args = p.parse_args()
    check_args(args)
    pos = _find_dir(args.src, ("positive image set", "positive_image_set"))
    if pos is None:
        raise SystemExit(f"error: {args.src}: no 'positive image set/' folder")
    neg = _find_dir(args.src, ("negative image set", "negative_image_set"))
    ann_path = args.annotations or next(iter(sorted(args.src.rglob("annotations.json"))), None)
    if ann_path is None:
        raise SystemExit(f"error: {args.src}: no annotations.json (give --annotations)")
    data = json.loads(Path(ann_path).read_text())
    categories = sorted(data["categories"], key=lambda c: c["id"])
    names = [c["name"] for c in categories]
    cat_name = {c["id"]: c["name"] for c in categories}
    anns_by_image: dict = {}
    for a in data["annotations"]:
        anns_by_image.setdefault(a["image_id"], []).append(a)

    # name -> (source path, annotations); negatives are prefixed so names stay unique
    items: dict[str, tuple[Path, list]] = {}
    for im in data["images"]:
        path = pos / im["file_name"]
        if not path.is_file():
            raise SystemExit(f"error: {path}: listed in {ann_path} but missing")
        items[f"pos_{im['file_name']}"] = (path, anns_by_image.get(im["id"], []))
    if neg is not None:
        for path in sorted(neg.glob("*.jpg")):
            items[f"neg_{path.name}"] = (path, [])
    ids = image_ids(list(items))
    splits = split_names(list(items), args.val_fraction, args.seed)
    dropped = 0
    for split, split_items in splits.items():
        out = CocoWriter(names, f"NWPU VHR-10 instance masks, {split} (seed {args.seed})")
        for name in split_items:
            src, anns = items[name]
            with Image.open(src) as im:
                w, h = im.size
            image_id = out.add_image(ids[name], src, args.dst / split, name, h, w)
            for a in anns:
                polys = [q for q in a["segmentation"] if len(q) >= 6 and len(q) % 2 == 0]
                if not polys:
                    dropped += 1
                    continue
                m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w)))
                out.add_mask(image_id, cat_name[a["category_id"]], m.astype(bool),
                             bool(a.get("iscrowd", 0)))
        out.write(args.dst / "annotations" / f"instances_{split}.json")
        print(f"{split}: {out.summary()}")
    if dropped:
        print(f"dropped {dropped} annotations without a usable polygon")
    if neg is None:
        print("note: no negative image set found; only the 650 positive images are used")


if __name__ == "__main__":
    main()
