"""2018 Data Science Bowl nuclei (BBBC038) → wiseseg's COCO layout (one class, ``nucleus``).

SRC is a DSB2018 folder in the Kaggle layout — ``stage1_train/`` or ``stage1_test/`` (with
the released solution masks) or any folder holding ``<id>/images/<id>.png`` and
``<id>/masks/*.png`` (one binary PNG per nucleus). Each mask PNG becomes one instance
(compressed RLE); images are copied unchanged (many are RGBA, which wiseseg reads as RGB).
Every image holds nuclei, so there are no negative images. Usage::

    .venv/bin/python benchmarks/data/dsb2018.py stage1_train /data/dsb2018 [--seed 0]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _coco_out import CocoWriter, base_parser, check_args, image_ids, split_names
from PIL import Image


def _image_folders(src: Path) -> dict[str, Path]:
    for root in (src, src / "stage1_train", src / "stage1_test"):
        if not root.is_dir():
            continue
        found = {d.name: d for d in sorted(root.iterdir())
                 if d.is_dir() and (d / "images" / f"{d.name}.png").is_file()}
        if found:
            return found
    raise SystemExit(f"error: {src}: no <id>/images/<id>.png folders")


def main() -> None:
    args = base_parser(__doc__.splitlines()[0], 0.25).parse_args()
    check_args(args)
    folders = _image_folders(args.src)
    ids = image_ids(list(folders))
    for split, names in split_names(list(folders), args.val_fraction, args.seed).items():
        out = CocoWriter(["nucleus"], f"DSB2018 nuclei, {split} (seed {args.seed})")
        for name in names:
            img = folders[name] / "images" / f"{name}.png"
            with Image.open(img) as im:
                w, h = im.size
            image_id = out.add_image(ids[name], img, args.dst / split, f"{name}.png", h, w)
            for mp in sorted((folders[name] / "masks").glob("*.png")):
                m = np.asarray(Image.open(mp))
                if m.ndim == 3:
                    m = m[..., 0]
                if m.shape != (h, w):
                    raise SystemExit(f"error: {mp}: mask {m.shape} differs from image {(h, w)}")
                out.add_mask(image_id, "nucleus", m > 0)
        out.write(args.dst / "annotations" / f"instances_{split}.json")
        print(f"{split}: {out.summary()}")


if __name__ == "__main__":
    main()
