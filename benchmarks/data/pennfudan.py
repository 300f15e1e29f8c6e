"""Penn-Fudan pedestrians → wiseseg's COCO layout (one class, ``person``).

SRC is the unzipped ``PennFudanPed/`` folder (``PNGImages/<name>.png`` and
``PedMasks/<name>_mask.png``, where pixel value k > 0 is pedestrian k). Every image holds at
least one pedestrian, so this set has no negative images. Usage::

    .venv/bin/python benchmarks/data/pennfudan.py PennFudanPed /data/pennfudan [--seed 0]
"""

from __future__ import annotations

import numpy as np
from _coco_out import (
    CocoWriter,
    base_parser,
    check_args,
    image_ids,
    masks_from_label_map,
    split_names,
)
from PIL import Image


def main() -> None:
    args = base_parser(__doc__.splitlines()[0], 0.25).parse_args()
    check_args(args)
    src = args.src
    if not (src / "PNGImages").is_dir() and (src / "PennFudanPed" / "PNGImages").is_dir():
        src = src / "PennFudanPed"
    images = {p.stem: p for p in sorted((src / "PNGImages").glob("*.png"))}
    if not images:
        raise SystemExit(f"error: {src / 'PNGImages'}: no PNG images")
    missing = [n for n in images if not (src / "PedMasks" / f"{n}_mask.png").is_file()]
    if missing:
        raise SystemExit(f"error: no mask for {len(missing)} images, e.g. {missing[0]}")
    ids = image_ids(list(images))
    splits = split_names(list(images), args.val_fraction, args.seed)
    for split, names in splits.items():
        out = CocoWriter(["person"], f"Penn-Fudan pedestrians, {split} (seed {args.seed})")
        for name in names:
            with Image.open(images[name]) as im:
                w, h = im.size
            label_map = np.asarray(Image.open(src / "PedMasks" / f"{name}_mask.png"))
            if label_map.shape != (h, w):
                raise SystemExit(f"error: {name}: mask {label_map.shape} differs from image "
                                 f"{(h, w)}")
            image_id = out.add_image(ids[name], images[name], args.dst / split, f"{name}.png", h, w)
            for mask in masks_from_label_map(label_map):
                out.add_mask(image_id, "person", mask)
        out.write(args.dst / "annotations" / f"instances_{split}.json")
        print(f"{split}: {out.summary()}")


if __name__ == "__main__":
    main()
