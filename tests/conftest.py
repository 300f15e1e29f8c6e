"""Shared fixtures: tiny datasets written by the tests themselves, and a CLI runner."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wiseseg.data.shapes import voc_palette


def _session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "wiseseg-cache"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Generated data go to a per-session temp cache, never the user's ~/.cache."""
    monkeypatch.setenv("WISESEG_CACHE", str(_session_cache(tmp_path_factory)))


#: The shared tiny run: every stage (PRM, WISE, WISE+Refine, reference) in seconds.
TINY_SPEC = "shapes:train=8,val=4,size=48,seed=1"
TINY_OVERRIDES = (
    "classifier.steps=2", "classifier.batch_size=4", "classifier.input_size=48",
    "classifier.log_every=1", "segmenter.steps=2", "segmenter.batch_size=2",
    "segmenter.min_size=48", "segmenter.max_size=48", "segmenter.log_every=1",
    "proposals.workers=1", "report.gallery=4",
)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The directory of one full ``api.run_pipeline`` run on tiny shapes data, made once per
    session (about 20 s). Shared: tests that change it must restore it or work on a copy."""
    import torch

    from wiseseg import api

    out = tmp_path_factory.mktemp("tiny_run")
    threads = torch.get_num_threads()
    # One thread: on a busy 2-core machine OpenMP's threads fight over the cores and a 48-px
    # forward pass takes seconds instead of milliseconds; tensors this small gain nothing.
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:  # the autouse cache fixture is per test
            mp.setenv("WISESEG_CACHE", str(_session_cache(tmp_path_factory)))
            api.run_pipeline(TINY_SPEC, api.load_config("cpu", TINY_OVERRIDES), out,
                             progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def save_palette_png(path: Path, arr: np.ndarray) -> None:
    img = Image.fromarray(arr.astype(np.uint8), mode="P")
    img.putpalette(voc_palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def raw_png(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width×height (pixel data need not match)."""
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8))
    path.write_bytes(data + chunk(b"IEND", b""))


def make_voc(root: Path, items: dict[str, dict], splits: dict[str, list[str]],
             classes: list[str] | None = None) -> Path:
    """Write a VOC-layout dataset.

    ``items[name] = {"obj": HxW object indices, "cls": HxW class indices}`` (or ``{"size": (h, w)}``
    with ``"xml": [names]`` for an image-level-only item).
    """
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    rng = np.random.default_rng(0)
    for name, it in items.items():
        h, w = it["obj"].shape if "obj" in it else it["size"]
        img = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "JPEGImages" / f"{name}.jpg", quality=90)
        if "obj" in it:
            save_palette_png(root / "SegmentationObject" / f"{name}.png", it["obj"])
            save_palette_png(root / "SegmentationClass" / f"{name}.png", it["cls"])
        if "xml" in it:
            (root / "Annotations").mkdir(exist_ok=True)
            objs = "".join(f"<object><name>{n}</name></object>" for n in it["xml"])
            (root / "Annotations" / f"{name}.xml").write_text(
                f"<annotation><filename>{name}.jpg</filename>{objs}</annotation>")
    for split, names in splits.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def two_instance_item(h: int = 20, w: int = 30, void: bool = True) -> dict:
    """Instance 1 (class 1) on the left, instance 2 (class 3) on the right, a void border."""
    obj = np.zeros((h, w), np.uint8)
    cls = np.zeros((h, w), np.uint8)
    obj[2:10, 2:10], cls[2:10, 2:10] = 1, 1
    obj[5:15, 15:25], cls[5:15, 15:25] = 2, 3
    if void:
        obj[1, 2:10], cls[1, 2:10] = 255, 255
    return {"obj": obj, "cls": cls}


@pytest.fixture
def voc_root(tmp_path) -> Path:
    items = {"2007_000001": two_instance_item(), "2007_000002": two_instance_item(void=False)}
    return make_voc(tmp_path / "voc", items, {"train": ["2007_000001"], "val": ["2007_000002"]})


def make_coco(root: Path) -> Path:
    """A COCO root with one split 'val': a polygon, an RLE instance and a crowd region."""
    from pycocotools import mask as mask_utils

    (root / "val").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "val" / "a.jpg")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "val" / "b.jpg")
    m = np.zeros((20, 30), np.uint8)
    m[5:10, 20:28] = 1
    r = mask_utils.encode(np.asfortranarray(m))
    r["counts"] = r["counts"].decode()
    crowd = mask_utils.encode(np.asfortranarray(np.pad(np.ones((3, 3), np.uint8),
                                                       ((15, 2), (0, 27)))))
    crowd["counts"] = crowd["counts"].decode()
    data = {
        "images": [{"id": 7, "file_name": "a.jpg", "height": 20, "width": 30},
                   {"id": 9, "file_name": "b.jpg", "height": 20, "width": 30}],
        "categories": [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 2, "iscrowd": 0,
             "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]},
            {"id": 2, "image_id": 7, "category_id": 5, "iscrowd": 0, "segmentation": r},
            {"id": 3, "image_id": 7, "category_id": 5, "iscrowd": 1, "segmentation": crowd},
        ],
    }
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    return root


@pytest.fixture
def coco_root(tmp_path) -> Path:
    return make_coco(tmp_path / "coco")


@pytest.fixture
def run_cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from wiseseg.cli import main

    def _run(*argv: str) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return _run
