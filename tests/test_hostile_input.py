"""Hostile input (issue 19): each case is a one-line error naming the file and the problem,
exit 2, no traceback; where a user expects it, --skip-bad skips and counts instead.
The table of what is checked is docs/bad-input.md."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from .conftest import make_coco, make_voc, two_instance_item


def _one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in err


def _coco(tmp_path, mutate):
    root = make_coco(tmp_path / "coco")
    jf = root / "annotations" / "instances_val.json"
    data = json.loads(jf.read_text())
    out = mutate(data)
    if isinstance(out, bytes):
        jf.write_bytes(out)
    else:
        jf.write_text(json.dumps(data if out is None else out))
    return root, jf


def _poly(value):
    def mutate(d):
        d["annotations"][0]["segmentation"] = [[2, 2, 12, 2, value, 12, 2, 12]]
    return mutate


# ------------------------------------------------------------------ COCO polygons (case 1)
@pytest.mark.parametrize("mutate,needle", [
    (_poly(float("nan")), "not a finite number"),
    (_poly(float("inf")), "not a finite number"),
    (_poly(1e9), "far outside the 30×20 image"),
    (_poly(-1e9), "far outside the 30×20 image"),
    (_poly("12"), "is not a number"),
    (lambda d: d["annotations"][0].update(segmentation=[[40, 25, 50, 25, 50, 35]]),
     "entirely outside the 30×20 image"),
    (lambda d: d["annotations"][0].update(segmentation=[[0, 0, 29, 19] * 200]),
     "more than the 30×20 image can hold"),
], ids=["nan", "inf", "huge", "minus-huge", "string", "off-image", "too-long"])
def test_coco_polygon_checked_before_pycocotools(tmp_path, run_cli, mutate, needle):
    root, jf = _coco(tmp_path, mutate)
    code, _, err = run_cli("data-stats", "--data", root)
    _one_line_error(code, err, jf.name, "annotation 1", needle)
    code, out, err = run_cli("data-stats", "--data", root, "--skip-bad")
    assert code == 0 and "skipped 1 bad item" in err


# ------------------------------------------------------ COCO JSON types, duplicates (3, 4, 6)
@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["images"][0].update(height="20"), "'height' must be a whole number"),
    (lambda d: d["images"][0].update(id="7"), "needs a whole-number 'id'"),
    (lambda d: d["images"].append("b.jpg"), "image entry is not an object"),
    (lambda d: d["annotations"][0].update(image_id=[7]), "'image_id' must be a whole number"),
    (lambda d: d["annotations"].append(None), "annotation entry is not an object"),
    (lambda d: d["images"].append(dict(d["images"][0])), "image id 7 is listed twice"),
    (lambda d: d["images"].append({**d["images"][0], "id": 11, "file_name": "./a.jpg"}),
     "is listed twice (ids 7 and 11)"),
    (lambda d: d["images"][0].update(file_name="a\0.jpg"), "'file_name' must be"),
], ids=["height-str", "id-str", "non-object", "image_id-list", "ann-null", "image-twice",
        "file-alias", "nul-name"])
def test_coco_bad_entry_is_refused_or_skipped(tmp_path, run_cli, mutate, needle):
    root, jf = _coco(tmp_path, mutate)
    code, _, err = run_cli("data-stats", "--data", root)
    _one_line_error(code, err, jf.name, needle)
    code, out, err = run_cli("data-stats", "--data", root, "--skip-bad")
    assert code == 0 and "skipped" in err


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["categories"].append({"id": 5, "name": "cow"}), "category id 5 is used twice"),
    (lambda d: d["categories"].append({"id": 8, "name": "dog"}),
     "category name 'dog' is used twice"),
    (lambda d: d["categories"].append({"name": "cow"}), "needs a whole-number 'id'"),
    (lambda d: d["categories"].append({"id": 8}), "needs a non-empty 'name'"),
    (lambda d: [d], "must be an object"),
    (lambda d: b'{"images": [], "annotations": [], "categories": [\x00]}', "cannot read"),
], ids=["dup-id", "dup-name", "no-id", "no-name", "top-level-list", "nul-byte"])
def test_coco_bad_file_stops_even_with_skip_bad(tmp_path, run_cli, mutate, needle):
    root, jf = _coco(tmp_path, mutate)
    for extra in ((), ("--skip-bad",)):
        code, _, err = run_cli("data-stats", "--data", jf, *extra)
        _one_line_error(code, err, jf.name, needle)


def test_coco_utf8_bom_is_read(tmp_path, run_cli):
    root, jf = _coco(tmp_path, lambda d: None)
    jf.write_bytes(b"\xef\xbb\xbf" + jf.read_bytes())
    code, out, _ = run_cli("data-stats", "--data", root)
    assert code == 0 and "[val] 2 images" in out


# ------------------------------------------------------------------ VOC split lists (3, 6)
def _voc(tmp_path):
    items = {f"2007_00000{i}": two_instance_item(void=False) for i in range(1, 4)}
    return make_voc(tmp_path / "voc", items, {"train": list(items)})


def test_voc_id_listed_twice(tmp_path, run_cli):
    root = _voc(tmp_path)
    lst = root / "ImageSets" / "Segmentation" / "train.txt"
    lst.write_text(lst.read_text() + "2007_000002\n")
    code, _, err = run_cli("data-stats", "--data", root)
    _one_line_error(code, err, "train.txt", "line 4", "'2007_000002' is listed again")
    code, out, err = run_cli("data-stats", "--data", root, "--skip-bad")
    assert code == 0 and "skipped 1" in err and "[train] 3 images" in out


@pytest.mark.parametrize("rows,needle", [
    ("image,labels\n2007_000001\n", "line 2: needs two fields"),
    ("image,labels\n2007_000001,cat\n2007_000001,dog\n", "listed again"),
], ids=["no-labels", "twice"])
def test_voc_split_csv_rows(tmp_path, run_cli, rows, needle):
    items = {"2007_000001": {"size": (8, 8)}}
    root = make_voc(tmp_path / "voc", items, {}, classes=["cat", "dog"])
    (root / "ImageSets" / "Segmentation" / "train.csv").write_text(rows)
    code, _, err = run_cli("data-stats", "--data", root)
    _one_line_error(code, err, "train.csv", needle)


def test_voc_split_csv_with_bom(tmp_path, run_cli):
    items = {"2007_000001": {"size": (8, 8)}}
    root = make_voc(tmp_path / "voc", items, {}, classes=["cat", "dog"])
    (root / "ImageSets" / "Segmentation" / "train.csv").write_bytes(
        b"\xef\xbb\xbfimage,labels\n2007_000001,cat\n")
    code, out, _ = run_cli("data-stats", "--data", root)
    assert code == 0 and "[train] 1 images" in out


# --------------------------------------------------------- folder-per-class data (3, 8, 9)
def _folder(tmp_path, classes=("cat", "dog")):
    root = tmp_path / "f"
    for c in classes:
        (root / c).mkdir(parents=True)
        Image.new("RGB", (6, 6)).save(root / c / f"{c}1.jpg")
    return root


def test_csv_path_alias_is_the_same_image(tmp_path, run_cli):
    root = tmp_path / "f"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (6, 6)).save(root / "images" / "x.jpg")
    (root / "labels.csv").write_text("image,labels\nimages/x.jpg,cat\n"
                                     "images/../images/x.jpg,cat\n")
    code, _, err = run_cli("data-stats", "--data", root)
    _one_line_error(code, err, "labels.csv:3", "already listed as 'images/x.jpg'")
    code, out, err = run_cli("data-stats", "--data", root, "--skip-bad")
    assert code == 0 and "[train] 1 images" in out


def test_csv_with_bom_and_row_without_labels(tmp_path, run_cli):
    root = tmp_path / "f"
    root.mkdir()
    Image.new("RGB", (6, 6)).save(root / "a.jpg")
    (root / "labels.csv").write_bytes(b"\xef\xbb\xbfimage,labels\na.jpg,cat\n")
    code, out, _ = run_cli("data-stats", "--data", root)
    assert code == 0 and "[train] 1 images" in out
    (root / "labels.csv").write_bytes(b"\xef\xbb\xbfimage,labels\na.jpg,cat\na.jpg\n")
    code, _, err = run_cli("data-stats", "--data", root)
    _one_line_error(code, err, "labels.csv", "line 3: no labels field")


@pytest.mark.parametrize("what", ["image", "class-folder"])
def test_folder_link_out_of_the_root_is_refused(tmp_path, run_cli, what):
    root = _folder(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (6, 6)).save(outside / "secret.jpg")
    if what == "image":
        (root / "cat" / "secret.jpg").symlink_to(outside / "secret.jpg")
    else:
        (root / "bird").symlink_to(outside, target_is_directory=True)
        (root / "classes.txt").write_text("bird\ncat\ndog\n")
    code, _, err = run_cli("data-stats", "--data", root)
    _one_line_error(code, err, "escapes the dataset root")


def test_folder_nested_and_empty_class_folders_are_not_dropped(tmp_path, run_cli):
    root = _folder(tmp_path)
    (root / "cat" / "more").mkdir()
    Image.new("RGB", (6, 6)).save(root / "cat" / "more" / "c2.jpg")
    code, _, err = run_cli("data-stats", "--data", root)
    _one_line_error(code, err, "more", "sub-folder of a class folder")
    code, out, err = run_cli("data-stats", "--data", root, "--skip-bad")
    assert code == 0 and "skipped 1" in err and "more" in err

    root = _folder(tmp_path / "b")
    (root / "bird").mkdir()
    code, _, err = run_cli("data-stats", "--data", root)
    _one_line_error(code, err, "bird", "empty class folder")
    (root / "classes.txt").write_text("bird\ncat\ndog\n")  # named: the class is kept
    code, out, _ = run_cli("data-stats", "--data", root)
    assert code == 0
    assert "warning: class 'bird' has no image in split 'train'" in out
    assert json.loads(run_cli("data-stats", "--data", root, "--json")[1])["train"][
        "classes_without_images"] == ["bird"]


def test_voc_masks_unchanged(tmp_path):
    """The checks leave good data alone: the VOC reader still reads both instances."""
    from wiseseg.data import open_dataset

    ds = open_dataset(_voc(tmp_path))
    gt = ds.ground_truth("train")
    assert len(ds.records("train")) == 3
    assert all(len(g.instances) == 2 for g in gt.values())


# ------------------------------------------------------------------- disk full (case 6)
class _FullDisk:
    """A file object that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, b):
        import errno

        if len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("what", ["json", "torch"])
def test_disk_full_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, what):
    import os

    from wiseseg import io
    from wiseseg.errors import WisesegError

    target = tmp_path / ("out.json" if what == "json" else "last.pt")
    target.write_text("old")
    real = os.fdopen
    monkeypatch.setattr(io.os, "fdopen", lambda fd, mode: _FullDisk(real(fd, mode), 100))
    with pytest.raises(WisesegError, match="no space left on the device") as e:
        if what == "json":
            io.atomic_write_json(target, {"x": "y" * 1000})
        else:
            import torch

            from wiseseg.engine.checkpoint import save_checkpoint

            save_checkpoint(target, {"w": torch.zeros(1000)})
    assert str(target) in str(e.value) and "\n" not in str(e.value)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temp file left


def test_disk_full_elsewhere_is_one_line_in_the_cli(monkeypatch, run_cli):
    import errno

    import wiseseg.commandline as cl
    from wiseseg.cli import build_parser

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "metrics.jsonl")

    build_parser()  # registers the commands
    help_text, _, configure = cl.COMMANDS["data-stats"]
    monkeypatch.setitem(cl.COMMANDS, "data-stats", (help_text, full, configure))
    code, _, err = run_cli("data-stats")
    _one_line_error(code, err, "metrics.jsonl", "no space left")


# --------------------------------------------------------- settings checked first (case 6)
@pytest.mark.parametrize("override,needle", [
    ("segmenter.epochs=abc", "segmenter.epochs='abc' must be auto or a whole number"),
    ("classifier.lr=-0.5", "classifier.lr=-0.5 must be > 0"),
    ("classifier.batch_size=0", "classifier.batch_size=0 must be > 0"),
    ("classifier=5", "classifier=5 must be a mapping"),
    ("segmenter.epochs=-1", "segmenter.epochs=-1 must be ≥ 0"),
    ("segmenter.reference_epochs=-1", "segmenter.reference_epochs=-1 must be ≥ 0"),
    ("pseudo.partial_labels=maybe", "pseudo.partial_labels='maybe' must be one of predict, skip"),
    ("pseudo.max_area_frac=2", "must be within [0, 1]"),
    ("pseudo.cam_overlap=-1", "pseudo.cam_overlap=-1 must be ≥ 0"),
    ("pseudo.cam_threshold=1.5", "pseudo.cam_threshold=1.5 must be within [0, 1]"),
    ("segmenter.frozen_stages=7", "segmenter.frozen_stages=7 must be at most 4"),
    ("segmenter.frozen_stages=abc", "segmenter.frozen_stages='abc' must be auto or a whole"),
    ("segmenter.backbone_lr_mult=-1", "segmenter.backbone_lr_mult=-1 must be ≥ 0"),
    ("classifier.lr=.nan", "must be a finite number"),
    ("classifier.amp=3", "must be true or false"),
    ("classifier.epochs=0", "classifier.epochs=0 with classifier.steps=0 trains nothing"),
])
def test_bad_override_fails_before_any_work(tmp_path, run_cli, override, needle):
    code, _, err = run_cli("run", "--data", tmp_path / "no-such-data", "--out", tmp_path / "r",
                           "--preset", "cpu", override)
    _one_line_error(code, err, needle)  # the (missing) data was not even opened
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("text,needle", [
    ("", "preset lacks"),
    ("seed: 0\nclassifier:\n  lr: 0.1\n",
     "preset lacks deterministic, device, data, auto, classifier.backbone"),
    ("- 1\n- 2\n", "must be a mapping"),
])
def test_partial_or_empty_preset_file(tmp_path, run_cli, text, needle):
    preset = tmp_path / "mine.yaml"
    preset.write_text(text)
    code, _, err = run_cli("run", "--data", "shapes", "--out", tmp_path / "r", "--preset",
                           preset)
    _one_line_error(code, err, "mine.yaml", needle)


# ------------------------------------------------ precomputed proposals (cases 6, 7, 9)
def _record(name="img1", h=6, w=8):
    from pathlib import Path

    from wiseseg.data.dataset import ImageRecord

    return ImageRecord(id=1, name=name, path=Path("/nonexistent.jpg"), height=h, width=w,
                       labels=frozenset())


@pytest.mark.parametrize("value,needle", [
    (3e9, "superpixel id 3000000000 exceeds the number of pixels"),
    (np.inf, "whole ids ≥ 1"),
    (np.nan, "whole ids ≥ 1"),
])
def test_mcg_superpixel_ids_are_bounded_before_allocating(tmp_path, value, needle):
    from scipy.io import savemat

    from wiseseg.errors import DataError
    from wiseseg.proposals import build_proposal_source

    sp = np.ones((6, 8))
    sp[0, 0] = value
    labels = np.empty((1, 1), dtype=object)
    labels[0, 0] = np.asarray([[1.0]])
    savemat(str(tmp_path / "img1.mat"), {"superpixels": sp, "labels": labels,
                                         "scores": np.asarray([[1.0]])})
    src = build_proposal_source(f"mcg:{tmp_path}")
    with pytest.raises(DataError, match=needle) as e:
        src.propose(np.zeros((6, 8, 3), np.uint8), _record())
    assert "img1.mat" in str(e.value)


@pytest.mark.parametrize("counts", ["\x7f\x7f\x7f", "Z" * 40, "0" * 3])
def test_json_proposals_with_bad_rle_are_refused_when_read(tmp_path, run_cli, counts):
    """The error comes from the proposal file (not the store), before the image counts as
    done: nothing for it is stored."""
    from wiseseg.data import open_dataset

    ds = open_dataset("shapes:train=2,val=1,size=32,seed=3", progress=False)
    props = tmp_path / "json"
    for r in ds.records("val"):
        (props / r.name).parent.mkdir(parents=True, exist_ok=True)
        seg = {"size": [r.height, r.width], "counts": counts}
        (props / f"{r.name}.json").write_text(json.dumps([{"segmentation": seg, "score": 1}]))
    out = tmp_path / "store"
    code, _, err = run_cli("proposals", "--data", "shapes:train=2,val=1,size=32,seed=3",
                           "--method", f"json:{props}", "--out", out, "--workers", "1", "-q")
    _one_line_error(code, err, ".json: item 0: invalid RLE", "re-export this proposal file")
    assert not [p for p in out.glob("items-*/*.json")]


def test_sam_checkpoint_with_nan_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("segment_anything")
    from wiseseg.errors import DataError
    from wiseseg.proposals.sam import load_sam

    from .test_proposals_sam import tiny_sam

    state = tiny_sam().state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key].view(-1)[0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(DataError, match=f"nan.pth: tensor '{key}' holds NaN"):
        load_sam(tmp_path / "nan.pth")


# ----------------------------------------------------------------- checkpoints (6, 10)
def test_checkpoint_without_its_config(tmp_path):
    import torch

    from wiseseg.classifier.model_io import load_classifier
    from wiseseg.errors import WisesegError

    torch.save({"kind": "wiseseg.peakcam", "model": {}, "classes": ["a"]}, tmp_path / "m.pt")
    with pytest.raises(WisesegError, match="m.pt: classifier checkpoint lacks its config"):
        load_classifier(tmp_path / "m.pt")


def test_pickled_objects_refused_without_weights_only_advice(tmp_path, recwarn):
    import os

    import torch

    from wiseseg.engine.checkpoint import load_checkpoint
    from wiseseg.errors import WisesegError

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(WisesegError) as e:
        load_checkpoint(tmp_path / "evil.pt")
    msg = str(e.value)
    assert "evil.pt: not a checkpoint: it holds pickled Python objects" in msg
    assert "weights_only" not in msg and "\n" not in msg
    assert not [w for w in recwarn if "torch" in str(w.filename)]


def test_predict_names_the_model_whose_classes_differ():
    from wiseseg.classifier.model_io import check_classes
    from wiseseg.errors import WisesegError

    with pytest.raises(WisesegError, match="the Mask R-CNN was trained on 2 classes"):
        check_classes("wise/model.pt", ["a", "b"], ("a", "b", "c"), what="Mask R-CNN")


# ------------------------------------------------------ metrics.jsonl cut short (case 10)
def test_metrics_log_with_a_cut_short_last_line(tmp_path, caplog):
    from wiseseg.errors import DataError
    from wiseseg.io import read_jsonl

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    assert [r["step"] for r in read_jsonl(log)] == [1, 2]
    assert "warning: " in caplog.text and "cut short" in caplog.text
    log.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(DataError, match="metrics.jsonl: line 2 is not a JSON object"):
        read_jsonl(log)


def test_null_accepted_where_it_means_none():
    from wiseseg.config import apply_overrides, load_preset
    from wiseseg.errors import ConfigError

    cfg = apply_overrides(load_preset("cpu"), ["peaks.min_score=null", "peaks.window=null"])
    assert cfg["peaks"]["min_score"] is None and cfg["peaks"]["window"] is None
    with pytest.raises(ConfigError, match="classifier.lr=None"):
        apply_overrides(load_preset("cpu"), ["classifier.lr=null"])
