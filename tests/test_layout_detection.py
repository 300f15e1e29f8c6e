"""Layout detection: one COCO instances JSON of any name beside its images is COCO; a folder
that reads several ways is a one-line error that says what was found and how to choose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from wiseseg.data import coco as coco_mod
from wiseseg.data import detect_layout, open_dataset
from wiseseg.data.coco import is_instances_json, peek_instances_json
from wiseseg.errors import WisesegError


def _coco(file_names: list[str]) -> dict:
    return {
        "info": {"description": "test"},
        "images": [{"id": i + 1, "file_name": f, "height": 12, "width": 16}
                   for i, f in enumerate(file_names)],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0,
                         "segmentation": [[2, 2, 9, 2, 9, 9, 2, 9]]}],
        "categories": [{"id": 3, "name": "boat"}],
    }


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12)).save(path)


def _json_beside_images(root: Path, name: str = "labels_v2.json") -> Path:
    """``root/<name>`` (COCO instances) with its two images in ``root/images/``."""
    for f in ("a.png", "b.png"):
        _image(root / "images" / f)
    (root / name).write_text(json.dumps(_coco(["a.png", "b.png"])))
    return root


def test_one_json_of_any_name_beside_images_is_coco(tmp_path):
    root = _json_beside_images(tmp_path / "mine")
    assert detect_layout(root) == "coco"
    ds = open_dataset(root)
    assert ds.layout == "coco" and ds.classes == ("boat",)
    recs = {r.name: r for r in ds.records("train")}  # a lone file also serves as 'train'
    assert set(recs) == {"a.png", "b.png"}
    assert recs["a.png"].path == (root / "images" / "a.png")
    assert recs["a.png"].labels == frozenset({0}) and recs["b.png"].labels == frozenset()
    assert len(ds.ground_truth("train")[1].instances) == 1


def test_images_beside_the_json_and_in_named_sub_folders(tmp_path):
    flat = tmp_path / "flat"  # a Roboflow-style export: the JSON among its images
    for f in ("a.png", "b.png"):
        _image(flat / f)
    (flat / "_annotations.coco.json").write_text(json.dumps(_coco(["a.png", "b.png"])))
    assert detect_layout(flat) == "coco"
    assert {r.name for r in open_dataset(flat).records("train")} == {"a.png", "b.png"}

    nested = tmp_path / "nested"  # file_name "JPEGImages/a.png": that folder is no class
    for f in ("a.png", "b.png"):
        _image(nested / "JPEGImages" / f)
    (nested / "annotations.json").write_text(
        json.dumps(_coco(["JPEGImages/a.png", "JPEGImages/b.png"])))
    assert peek_instances_json(nested / "annotations.json") == frozenset({"JPEGImages"})
    assert detect_layout(nested) == "coco"


def test_two_instance_jsons_is_an_error_naming_both(tmp_path):
    root = _json_beside_images(tmp_path / "two")
    (root / "older.json").write_text(json.dumps(_coco(["a.png"])))
    with pytest.raises(WisesegError, match="ambiguous") as e:
        detect_layout(root)
    msg = str(e.value)
    assert "labels_v2.json" in msg and "older.json" in msg and "\n" not in msg
    assert "point --data at one of the JSON files" in msg
    # choosing one by pointing at it works
    assert {r.name for r in open_dataset(root / "older.json").records("train")} == {"a.png"}


def test_json_and_class_folders_is_ambiguous(tmp_path):
    root = _json_beside_images(tmp_path / "mixed")
    _image(root / "cat" / "c.jpg")
    _image(root / "dog" / "d.jpg")
    with pytest.raises(WisesegError, match="ambiguous") as e:
        open_dataset(root)
    msg = str(e.value)
    assert "labels_v2.json" in msg and "cat/, dog/" in msg and "\n" not in msg
    assert "point --data at the JSON file" in msg and "move the JSON out" in msg
    assert "images/" not in msg.split("found", 1)[1].split(";")[1]  # images/ is not a class
    assert open_dataset(root / "labels_v2.json").layout == "coco"

    csv = _json_beside_images(tmp_path / "with_csv")  # labels.csv is the other layout too
    (csv / "labels.csv").write_text("image,labels\nimages/a.png,boat\n")
    with pytest.raises(WisesegError, match="ambiguous.*labels.csv"):
        detect_layout(csv)


def test_non_coco_json_does_not_count(tmp_path):
    root = tmp_path / "web"
    for cls in ("car", "dog"):
        _image(root / cls / f"{cls}0.jpg")
    (root / "config.json").write_text(json.dumps({"lr": 0.1, "images": "car/"}))
    (root / "predictions.json").write_text(json.dumps(
        [{"image_id": 1, "category_id": 1, "score": 0.5}]))
    (root / "partial.json").write_text(json.dumps({"images": [], "categories": []}))
    (root / "broken.json").write_text('{"images": [')
    (root / "latin1.json").write_bytes(b'{"images": "\xe9"}')
    for f in root.glob("*.json"):
        assert not is_instances_json(f), f.name
    assert detect_layout(root) == "folder"
    assert open_dataset(root).classes == ("car", "dog")


def test_large_files_are_scanned_not_parsed(tmp_path, monkeypatch):
    monkeypatch.setattr(coco_mod, "_PARSE_LIMIT", 10)  # every file counts as large here
    big = tmp_path / "big.json"
    big.write_text(json.dumps(_coco(["sub\\a.png", "other/b.png", "c.png"]), indent=1))
    assert peek_instances_json(big) == frozenset({"sub", "other"})
    fake = tmp_path / "fake.json"  # the key names appear, but not as lists
    fake.write_text(json.dumps({"images": "x", "annotations": "y", "categories": "z"}))
    assert peek_instances_json(fake) is None
    root = _json_beside_images(tmp_path / "large")
    assert detect_layout(root) == "coco"


def test_existing_layouts_still_win(tmp_path, coco_root):
    # a COCO root keeps reading annotations/instances_<split>.json; its split folders are
    # not class folders
    assert detect_layout(coco_root) == "coco"
    assert set(open_dataset(coco_root).splits) >= {"val"}
    # a stray instances JSON at the top of a COCO root makes it ambiguous, with both named
    (coco_root / "extra.json").write_text(json.dumps(_coco(["val/a.jpg"])))
    with pytest.raises(WisesegError, match=r"ambiguous.*instances_val\.json.*extra\.json"):
        detect_layout(coco_root)
