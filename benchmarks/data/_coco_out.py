"""Shared by the converters in this folder: a seeded split and a COCO instances writer.

Every converter writes the same layout, which ``wiseseg`` reads as COCO::

    DST/annotations/instances_train.json
    DST/annotations/instances_val.json
    DST/train/<images>
    DST/val/<images>

Masks are stored as compressed RLE (``counts`` a string), one annotation per instance, with
``area``, ``bbox`` (xywh) and ``iscrowd``. Images are copied unchanged.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wiseseg import rle


def base_parser(description: str, default_val_fraction: float) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("src", type=Path, help="the dataset as obtained (see README.md here)")
    p.add_argument("dst", type=Path, help="output folder (COCO layout); must not exist or be empty")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split (default 0)")
    p.add_argument("--val-fraction", type=float, default=default_val_fraction,
                   help=f"share of images in val (default {default_val_fraction})")
    return p


def check_args(args: argparse.Namespace) -> None:
    if not args.src.is_dir():
        sys.exit(f"error: {args.src}: not a folder")
    if not 0.0 < args.val_fraction < 1.0:
        sys.exit("error: --val-fraction must be between 0 and 1")
    if args.dst.exists() and any(args.dst.iterdir()):
        sys.exit(f"error: {args.dst}: exists and is not empty")


def image_ids(names: Sequence[str]) -> dict[str, int]:
    """Stable image ids over all splits: 1 + position in the sorted list."""
    return {n: i + 1 for i, n in enumerate(sorted(names))}


def split_names(names: Sequence[str], val_fraction: float, seed: int) -> dict[str, list[str]]:
    """Deterministic split: sort, shuffle with ``random.Random(seed)``, the first
    ``round(n * val_fraction)`` go to val. Both lists come back sorted."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n_val = round(len(order) * val_fraction)
    return {"train": sorted(order[n_val:]), "val": sorted(order[:n_val])}


def masks_from_label_map(label_map: np.ndarray, ignore: Sequence[int] = ()) -> list[np.ndarray]:
    """One boolean mask per distinct non-zero value (ascending), skipping ``ignore`` values."""
    values = [int(v) for v in np.unique(label_map) if v != 0 and int(v) not in ignore]
    return [label_map == v for v in values]


class CocoWriter:
    """Builds one COCO instances file; ``add_image`` copies the image into the split folder."""

    def __init__(self, categories: Sequence[str], description: str):
        self.categories = [{"id": i + 1, "name": n, "supercategory": n}
                           for i, n in enumerate(categories)]
        self._cat_id = {n: i + 1 for i, n in enumerate(categories)}
        self.info = {"description": description}
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add_image(self, image_id: int, src: Path, image_dir: Path, file_name: str, height: int,
                  width: int) -> int:
        """Copy ``src`` to ``image_dir/file_name`` and list it. Image ids must be unique over
        all splits (wiseseg checks): pass e.g. the position in the sorted list of all images."""
        image_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, image_dir / file_name)
        self.images.append({"id": image_id, "file_name": file_name, "height": height,
                            "width": width})
        return image_id

    def add_mask(self, image_id: int, category: str, mask: np.ndarray,
                 iscrowd: bool = False) -> None:
        if not mask.any():
            return
        r = rle.encode(mask)
        x, y, w, h = (float(v) for v in rle.to_bbox([r])[0])
        self.annotations.append({
            "id": len(self.annotations) + 1, "image_id": image_id,
            "category_id": self._cat_id[category], "segmentation": r,
            "area": float(rle.area([r])[0]), "bbox": [x, y, w, h],
            "iscrowd": int(iscrowd)})

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        obj = {"info": self.info, "images": self.images, "annotations": self.annotations,
               "categories": self.categories}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(obj, separators=(",", ":")))
        tmp.replace(path)

    def summary(self) -> str:
        names = {c["id"]: c["name"] for c in self.categories}
        per_class = Counter(names[a["category_id"]] for a in self.annotations if not a["iscrowd"])
        with_ann = {a["image_id"] for a in self.annotations}
        crowd = sum(a["iscrowd"] for a in self.annotations)
        return (f"{len(self.images)} images ({len(self.images) - len(with_ann)} without "
                f"objects), {sum(per_class.values())} instances"
                + (f" + {crowd} crowd regions" if crowd else "") + ": "
                + ", ".join(f"{k}={v}" for k, v in sorted(per_class.items())))
