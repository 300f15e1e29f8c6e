"""Negatives (``--negatives DIR``) and the warning for a class present in every training image."""

import json

import numpy as np
import pytest
from PIL import Image

from wiseseg import rle
from wiseseg.data.coco import read_coco
from wiseseg.data.dataset import ImageRecord
from wiseseg.data.negatives import add_negatives, read_negatives
from wiseseg.data.stats import classes_everywhere
from wiseseg.errors import DataError


def _people(root):
    """A COCO root whose split 'train' has a 'person' in each of its two images."""
    (root / "train").mkdir(parents=True)
    (root / "annotations").mkdir()
    anns = []
    for i, n in enumerate(("a.png", "b.png"), start=1):
        Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(root / "train" / n)
        m = np.zeros((10, 12), bool)
        m[2:6, 3:7] = True
        anns.append({"id": i, "image_id": i, "category_id": 1, "segmentation": rle.encode(m),
                     "iscrowd": 0})
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 12},
                       {"id": 2, "file_name": "b.png", "height": 10, "width": 12}],
            "annotations": anns, "categories": [{"id": 1, "name": "person"}]}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(data))
    return root


def _negatives(folder, n=2):
    (folder / "sub").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((9, 7, 3), 40 * i, np.uint8)).save(
            folder / ("sub" if i else ".") / f"street{i}.jpg")
    return folder


def _rec(i, labels):
    return ImageRecord(id=i, name=str(i), path=None, height=1, width=1, labels=frozenset(labels))


def test_classes_everywhere():
    assert classes_everywhere([], ("a", "b")) == []
    assert classes_everywhere([_rec(1, {0, 1}), _rec(2, {1})], ("a", "b")) == ["b"]
    assert classes_everywhere([_rec(1, {0}), _rec(2, {1})], ("a", "b")) == []
    assert classes_everywhere([_rec(1, {0}), _rec(2, set())], ("a", "b")) == []  # a negative


def test_negatives_join_the_weak_view_with_new_ids(tmp_path):
    ds = read_coco(_people(tmp_path / "pf"))
    n = add_negatives(ds, _negatives(tmp_path / "neg"), "train")
    assert n == 2
    weak = ds.weak("train").records
    assert [r.id for r in weak] == [1, 2, 3, 4]
    assert all(not r.labels and not r.unknown for r in weak[2:])
    assert {r.name for r in weak[2:]} == {"negatives/street0.jpg", "negatives/sub/street1.jpg"}
    assert len(ds.records("train")) == 2 and set(ds.ground_truth("train")) == {1, 2}
    assert classes_everywhere(weak, ds.classes) == []
    # both Mask R-CNNs train on the negatives as background; the carved fit part keeps them
    assert len(ds.segmenter_view("train", "gt").records) == 4
    assert len(ds.weak("train-fit").records) == len(ds.records("train-fit")) + 2


def test_image_with_unlabelled_classes_trains_stage_1_only(tmp_path):
    root = _people(tmp_path / "pf")
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(root / "train" / "c.png")
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(root / "train" / "d.png")
    data["categories"].append({"id": 2, "name": "dog"})
    data["images"] += [{"id": 3, "file_name": "c.png", "height": 10, "width": 12,
                        "image_labels": ["dog"], "unlabelled_classes": ["person"]},
                       {"id": 4, "file_name": "d.png", "height": 10, "width": 12,
                        "image_labels": ["dog"]}]
    (root / "annotations" / "instances_train.json").write_text(json.dumps(data))
    ds = read_coco(root)
    assert [r.id for r in ds.weak("train").records] == [1, 2, 3, 4]
    assert [r.id for r in ds.segmenter_view("train", "pseudo").records] == [1, 2, 4]
    assert [r.id for r in ds.segmenter_view("train", "gt").records] == [1, 2]


@pytest.mark.parametrize("case, problem", [
    ("missing", "negatives folder does not exist"),
    ("file", "needs a folder of images"),
    ("empty", "holds no image"),
    ("corrupt", "truncated"),
])
def test_bad_negatives_folder_is_one_line(tmp_path, case, problem):
    folder = tmp_path / "neg"
    if case == "file":
        folder.write_text("x")
    elif case == "empty":
        folder.mkdir()
        (folder / "notes.txt").write_text("no images here")
    elif case == "corrupt":
        _negatives(folder)
        data = (folder / "street0.jpg").read_bytes()
        (folder / "street0.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        read_negatives(folder, 100)
    msg = str(e.value)
    assert problem in msg and "\n" not in msg
    assert str(folder) in msg


def test_negative_id_clash_is_refused(tmp_path):
    ds = read_coco(_people(tmp_path / "pf"))
    recs, _ = read_negatives(_negatives(tmp_path / "neg"), first_id=2)
    with pytest.raises(DataError, match="image id 2"):
        ds.add_weak_only("train", recs, tmp_path / "neg")


def test_data_stats_warns_and_negatives_fix_it(tmp_path, run_cli):
    root = _people(tmp_path / "pf")
    code, out, err = run_cli("data-stats", "--data", root, "-q")
    assert code == 0
    assert "class 'person' is in every one of the 2 images of split 'train'" in out
    assert "--negatives" in out
    code, out, err = run_cli("data-stats", "--data", root, "--json", "-q")
    assert json.loads(out)["train"]["classes_in_every_image"] == ["person"]
    assert "class 'person' is in every one" in err
    code, out, err = run_cli("data-stats", "--data", root, "-q", "--negatives",
                             _negatives(tmp_path / "neg"))
    assert code == 0 and "in every one" not in out and ", 2 negative" in out
    code, out, err = run_cli("data-stats", "--data", root, "-q", "--negatives",
                             tmp_path / "nowhere")
    assert code != 0 and "negatives folder does not exist" in err


def test_run_warns_and_records_negatives_once(tmp_path, capsys):
    from wiseseg.api import _add_negatives, _data_warnings

    ds = read_coco(_people(tmp_path / "pf"))
    cfg = {"data": {"train_split": "train", "negatives": None}}
    warnings = _data_warnings(ds, cfg)
    assert len(warnings) == 1 and "'person'" in warnings[0]
    assert "'person'" in capsys.readouterr().err
    cfg["data"]["negatives"] = str(_negatives(tmp_path / "neg"))
    _add_negatives(ds, cfg)
    _add_negatives(ds, cfg)  # a resumed run on the same dataset object adds nothing twice
    assert len(ds.weak_only("train")) == 2
    assert _data_warnings(ds, cfg) == []


def test_segmenter_takes_at_most_a_share_of_negatives(tmp_path):
    ds = read_coco(_people(tmp_path / "pf"))
    add_negatives(ds, _negatives(tmp_path / "neg", n=5), "train")
    ids = lambda recs: [r.id for r in recs]  # noqa: E731
    assert ids(ds.segmenter_records("train", "gt", 0.0)) == [1, 2]
    one = ds.segmenter_records("train", "pseudo", 1.0)
    assert ids(one)[:2] == [1, 2] and len(one) == 4  # 2 of the 5 negatives
    assert one == ds.segmenter_records("train", "pseudo", 1.0)  # the same choice every time
    assert len(ds.segmenter_records("train", "gt", 10.0)) == 7
