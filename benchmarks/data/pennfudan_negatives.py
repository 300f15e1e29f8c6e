"""Person-free PASCAL VOC 2012 images → ``DST/negatives/``, the negatives of a Penn-Fudan set.

Penn-Fudan (``pennfudan.py``) has one class, ``person``, and it is in every image, so stage 1
cannot learn it from image-level labels without images that lack it. This script copies every
image of SRC whose annotation has no ``person`` object into ``DST/negatives/<id>.jpg``;
``benchmarks/real.py`` passes that folder as ``--negatives`` when it exists.

SRC is a checkout of ``supervisely-ecosystem/pascal_sample_gt`` (``fetch
github:supervisely-ecosystem/pascal_sample_gt``): about 1,000 VOC 2012 train/val images,
``project/<set>/img/<id>.jpg`` with ``project/<set>/ann/<id>.jpg.json`` (boxes of 15 of VOC's
20 classes, ``person`` among them). An id found in several sets counts as person if any copy
has a person. Images whose annotation has no object at all (they hold only the five classes
that copy leaves out, e.g. aeroplane) have no person either and are kept; images whose
annotation is missing or unreadable are skipped and counted. The copy states no licence (VOC
images keep their Flickr owners' rights), so the images are never committed. Usage::

    .venv/bin/python benchmarks/data/pennfudan_negatives.py pascal_sample_gt DST [--link]

DST is normally the output of ``pennfudan.py``; ``DST/negatives`` must be new or empty.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from PIL import Image

PERSON = "person"


def project_dir(src: Path) -> Path:
    proj = src / "project" if (src / "project").is_dir() else src
    meta = proj / "meta.json"
    try:
        classes = {c["title"] for c in json.loads(meta.read_text())["classes"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"error: {meta}: not a readable Supervisely meta.json ({e.__class__.__name__})")
    if PERSON not in classes:
        sys.exit(f"error: {meta}: no class {PERSON!r}, so its absence cannot be told")
    return proj


def read_classes(ann: Path) -> set[str] | None:
    """Class titles of the annotation's objects; None when it is missing or unreadable."""
    try:
        objects = json.loads(ann.read_text())["objects"]
        return {str(o["classTitle"]) for o in objects}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="pascal_sample_gt checkout (Supervisely project)")
    p.add_argument("dst", type=Path, help="dataset folder; images go to DST/negatives/")
    p.add_argument("--link", action="store_true",
                   help="hard-link the images instead of copying them (same file system)")
    args = p.parse_args()
    if not args.src.is_dir():
        sys.exit(f"error: {args.src}: not a folder")
    out = args.dst / "negatives"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        sys.exit(f"error: {out}: exists and is not an empty folder")
    proj = project_dir(args.src)
    images = sorted(proj.glob("*/img/*.jpg"))
    if not images:
        sys.exit(f"error: {proj}: no */img/*.jpg (a Supervisely project checkout?)")

    first: dict[str, Path] = {}  # VOC id → first image seen (sorted order)
    person: set[str] = set()
    empty: set[str] = set()
    seen_with_ann: set[str] = set()
    skipped = []
    for img in images:
        vid = img.stem
        ann = img.parent.parent / "ann" / f"{img.name}.json"
        classes = read_classes(ann)
        if classes is None:
            skipped.append(ann)
            continue
        seen_with_ann.add(vid)
        first.setdefault(vid, img)
        if PERSON in classes:
            person.add(vid)
        elif not classes:
            empty.add(vid)
    empty -= person
    keep = sorted(v for v in first if v not in person)

    out.mkdir(parents=True, exist_ok=True)
    for vid in keep:
        img = first[vid]
        try:
            with Image.open(img) as im:
                im.verify()
        except Exception as e:  # any decoder failure is bad input
            sys.exit(f"error: {img}: not a readable image ({e.__class__.__name__})")
        if args.link:
            os.link(img, out / f"{vid}.jpg")
        else:
            shutil.copyfile(img, out / f"{vid}.jpg")

    print(f"{len(images)} image files, {len(seen_with_ann)} distinct ids: {len(person)} with "
          f"a person, {len(keep)} without ({len(empty)} of them with no object at all)")
    if skipped:
        print(f"skipped {len(skipped)} image files with a missing or unreadable annotation, "
              f"e.g. {skipped[0]}")
    print(f"{out}: {len(keep)} negatives ({'hard-linked' if args.link else 'copied'})")


if __name__ == "__main__":
    main()
