"""Readers: VOC (palette PNGs, void), COCO (polygon, RLE, crowd), folder-per-class, shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from wiseseg import rle
from wiseseg.data import detect_layout, open_dataset
from wiseseg.data.dataset import WeakSplit, safe_join
from wiseseg.errors import DataError, WisesegError

from .conftest import make_voc, two_instance_item


def test_voc_instances_labels_and_void(voc_root):
    ds = open_dataset(voc_root)
    assert ds.layout == "voc" and len(ds.classes) == 20
    assert ds.splits == ["train", "val"]
    (rec,) = ds.records("train")
    assert rec.id == 2007000001 and (rec.height, rec.width) == (20, 30)
    assert rec.labels == frozenset({0, 2})  # class PNG values 1 and 3 → 0-based 0 and 2
    gt = ds.ground_truth("train")[rec.id]
    assert [i.category for i in gt.instances] == [0, 2]
    m0 = rle.decode(gt.instances[0].segmentation)
    assert m0.sum() == 64 and m0[2:10, 2:10].all()
    assert rle.decode(gt.instances[1].segmentation)[5:15, 15:25].all()
    void = rle.decode(gt.ignore)
    assert void.sum() == 8 and void[1, 2:10].all()
    assert ds.ground_truth("val")[2007000002].ignore is None


def test_weak_view_has_no_masks(voc_root):
    weak = open_dataset(voc_root).weak("train")
    assert isinstance(weak, WeakSplit)
    assert not hasattr(weak, "ground_truth") and not hasattr(weak[0], "segmentation")
    fields = {f for r in weak for f in vars(r)} | set(vars(weak))
    assert fields == {
        "id", "name", "path", "height", "width", "labels", "unknown", "split", "classes", "records",
    }


def test_voc_train_aug_labels_from_xml_and_csv(tmp_path):
    items = {"a1": two_instance_item(), "b2": {"size": (12, 16), "xml": ["dog", "cat", "dog"]}}
    root = make_voc(tmp_path / "v", items, {"train_aug": ["a1", "b2"], "val": ["a1"]})
    (root / "ImageSets/Segmentation/extra.csv").write_text("image,labels\nb2,person;car\n")
    ds = open_dataset(root)
    recs = {r.name: r for r in ds.records("train_aug")}
    assert recs["b2"].labels == frozenset({ds.classes.index("dog"), ds.classes.index("cat")})
    assert not ds.has_ground_truth("train_aug") and ds.has_ground_truth("val")
    (rec,) = ds.records("extra")
    assert rec.labels == frozenset({ds.classes.index("person"), ds.classes.index("car")})
    with pytest.raises(WisesegError, match="image-level labels only"):
        ds.ground_truth("train_aug")


def test_coco_polygon_rle_and_crowd(coco_root):
    ds = open_dataset(coco_root)
    assert ds.layout == "coco" and ds.classes == ("cat", "dog")  # ordered by COCO id (2, 5)
    assert ds.coco_category_ids == [2, 5]
    gts = ds.ground_truth("val")
    g = gts[7]
    assert [i.category for i in g.instances] == [0, 1]
    poly = rle.decode(g.instances[0].segmentation)
    assert poly[3:11, 3:11].all() and not poly[15:, :].any()
    assert rle.decode(g.instances[1].segmentation).sum() == 40
    assert rle.decode(g.ignore).sum() == 9  # the crowd region is ignored, not an instance
    recs = {r.id: r for r in ds.records("val")}
    assert recs[7].labels == frozenset({0, 1}) and recs[9].labels == frozenset()
    assert gts[9].instances == ()


def test_coco_single_json_file(coco_root):
    ds = open_dataset(coco_root / "annotations" / "instances_val.json")
    assert {r.id for r in ds.records("train")} == {7, 9}


def test_folder_per_class_and_csv(tmp_path):
    root = tmp_path / "web"
    for cls, n in (("car", 2), ("dog", 1)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (9, 7)).save(root / cls / f"{cls}{i}.jpg")
    ds = open_dataset(root)
    assert ds.layout == "folder" and ds.classes == ("car", "dog")
    labels = sorted((r.name, tuple(r.labels)) for r in ds.records("train"))
    assert labels == [("car/car0.jpg", (0,)), ("car/car1.jpg", (0,)), ("dog/dog0.jpg", (1,))]
    assert not ds.has_ground_truth("train")

    csv_root = tmp_path / "csv"
    (csv_root / "img").mkdir(parents=True)
    for n in ("a", "b", "c"):
        Image.new("RGB", (9, 7)).save(csv_root / "img" / f"{n}.png")
    (csv_root / "labels.csv").write_text("image,labels\nimg/a.png,cat;dog\nimg/b.png,dog\n"
                                         "img/c.png,\n")
    ds = open_dataset(csv_root)
    assert ds.classes == ("cat", "dog")
    by = {r.name: r.labels for r in ds.records("train")}
    assert by == {"img/a.png": {0, 1}, "img/b.png": {1}, "img/c.png": frozenset()}


def test_shapes_generated_once_and_deterministic(tmp_path):
    spec = "shapes:train=6,val=3,size=48,seed=3"
    ds = open_dataset(spec, progress=False)
    assert ds.layout == "shapes" and len(ds.classes) == 6
    assert len(ds.records("train")) == 6 and len(ds.records("val")) == 3
    stamp = (ds.root / "shapes.json").stat().st_mtime_ns
    ds2 = open_dataset(spec, progress=False)
    assert ds2.root == ds.root and (ds.root / "shapes.json").stat().st_mtime_ns == stamp
    from wiseseg.data.shapes import ShapesConfig, write_shapes

    other = write_shapes(tmp_path / "again", ShapesConfig(train=6, val=3, size=48, seed=3),
                         progress=False)
    for r in ds.records("train"):
        a = np.asarray(Image.open(r.path))
        b = np.asarray(Image.open(other / "JPEGImages" / r.path.name))
        assert np.array_equal(a, b)
    gts = ds.ground_truth("train")
    for r in ds.records("train"):
        g = gts[r.id]
        assert r.labels == {i.category for i in g.instances}
        masks = rle.decode_many([i.segmentation for i in g.instances], (48, 48))
        assert (masks.sum(0) <= 1).all()  # visible parts never overlap


def test_shapes_written_by_two_processes_are_the_same_bytes(tmp_path, monkeypatch):
    """From PARALLEL_MIN_IMAGES images on, two worker processes write the set: every file is
    the one a single process writes."""
    from wiseseg.data import shapes

    cfg = shapes.ShapesConfig(train=30, val=12, size=32, seed=5)
    monkeypatch.setattr(shapes, "PARALLEL_MIN_IMAGES", 10**9)
    one = shapes.write_shapes(tmp_path / "one", cfg, progress=False)
    monkeypatch.setattr(shapes, "PARALLEL_MIN_IMAGES", 1)
    monkeypatch.setattr(shapes, "_CHUNK", 5)  # several chunks per worker
    two = shapes.write_shapes(tmp_path / "two", cfg, progress=False)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert len(files) == 3 * 42 + 4  # images, 2 PNGs each, 2 lists, classes, shapes.json
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    for f in files:
        assert (one / f).read_bytes() == (two / f).read_bytes(), f


def test_shapes_class_is_not_colour():
    """The mean colour of an instance must not predict its class (weak association)."""
    ds = open_dataset("shapes:train=60,val=1,size=64,seed=1", progress=False)
    from wiseseg.data import load_image

    colours, classes = [], []
    gts = ds.ground_truth("train")
    for r in ds.records("train"):
        img = load_image(r.path).astype(float)
        for inst in gts[r.id].instances:
            m = rle.decode(inst.segmentation)
            colours.append(img[m].mean(0))
            classes.append(inst.category)
    colours, classes = np.array(colours), np.array(classes)
    means = np.array([colours[classes == c].mean(0) for c in np.unique(classes)])
    assert np.ptp(means, axis=0).max() < 60  # class means of colour stay close together


def test_layout_errors(tmp_path, voc_root, coco_root):
    assert detect_layout(voc_root) == "voc" and detect_layout(coco_root) == "coco"
    (tmp_path / "empty").mkdir()
    with pytest.raises(WisesegError, match="unknown dataset layout; accepted") as e:
        open_dataset(tmp_path / "empty")
    assert "\n" not in str(e.value)
    both = tmp_path / "both"
    make_voc(both, {"x": two_instance_item()}, {"val": ["x"]})
    (both / "annotations").mkdir()
    (both / "annotations" / "instances_val.json").write_text("{}")
    with pytest.raises(WisesegError, match="ambiguous"):
        open_dataset(both)


def test_safe_join_refuses_escapes(tmp_path):
    assert safe_join(tmp_path, "a/b.jpg", "list.txt") == (tmp_path / "a/b.jpg").resolve()
    for bad in ("../x.jpg", "a/../../x.jpg", "/etc/passwd"):
        with pytest.raises(DataError, match="escapes|absolute"):
            safe_join(tmp_path, bad, "list.txt")


def test_rle_roundtrip_and_iou():
    a = np.zeros((10, 12), bool)
    a[2:6, 3:9] = True
    b = np.zeros_like(a)
    b[4:8, 3:9] = True
    ra, rb = rle.encode(a), rle.encode(b)
    assert isinstance(ra["counts"], str) and json.dumps(ra)
    assert np.array_equal(rle.decode(ra), a)
    assert rle.iou([ra], [rb])[0, 0] == pytest.approx(12 / 36)
    assert rle.intersection_over_first([ra], [rb])[0, 0] == pytest.approx(0.5)
    assert rle.decode_many([], (10, 12)).shape == (0, 10, 12)
    assert rle.iou([], [rb]).shape == (0, 1)
    assert rle.to_bbox([ra]).tolist() == [[3, 2, 6, 4]]


def test_rle_area_of_many_masks():
    """pycocotools' area() overflows past 255 masks under NumPy 2; ours must not."""
    masks = np.zeros((300, 4, 5), bool)
    for i in range(300):
        masks[i].flat[: i % 20] = True
    assert rle.area(rle.encode_many(masks)).tolist() == [float(i % 20) for i in range(300)]


def test_calibration_part_is_carved_from_train():
    from wiseseg.data import open_dataset

    ds = open_dataset("shapes:train=20,val=4,size=48,seed=2", progress=False)
    assert "train-calib" not in ds.splits and ds.has_split("train-calib")
    fit, calib = ds.records("train-fit"), ds.records("train-calib")
    assert len(calib) == 3 and len(fit) == 17  # 15 % of 20
    assert not {r.id for r in fit} & {r.id for r in calib}
    assert {r.id for r in fit} | {r.id for r in calib} == {r.id for r in ds.records("train")}
    assert set(ds.ground_truth("train-calib")) == {r.id for r in calib}
    again = open_dataset("shapes:train=20,val=4,size=48,seed=2", progress=False)
    assert again.records("train-calib") == calib  # seeded: the same images every time
    assert not ds.has_split("test-calib") and not ds.has_split("val-other")


def test_calibration_folds_are_disjoint():
    from wiseseg.data import open_dataset
    from wiseseg.errors import WisesegError

    ds = open_dataset("shapes:train=20,val=4,size=48,seed=2", progress=False)
    calibs = [{r.id for r in ds.records(f"train-calib{k}")} for k in ("", 1, 2, 3, 4, 5)]
    assert calibs[0] == {r.id for r in ds.records("train-calib")}  # fold 0 is train-calib
    assert all(len(c) == 3 for c in calibs)
    assert len(set.union(*calibs)) == 18  # six disjoint folds of 3
    for k in (1, 5):
        fit = {r.id for r in ds.records(f"train-fit{k}")}
        assert not fit & calibs[k] and len(fit) == 17
    assert set(ds.ground_truth("train-calib2")) == calibs[2]
    with pytest.raises(WisesegError, match="'train-calib6': calibration fold 6: .*0 to 5 of 3"):
        ds.has_split("train-calib6")
