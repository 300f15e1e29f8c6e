"""Hostile input (issue 19), the cases "like them" that an audit found after the first round:
one-line errors naming the file and the offending value, exit 2, no traceback; --skip-bad
skips and counts where a user expects it. The table is docs/bad-input.md."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from .conftest import make_coco, make_voc, two_instance_item
from .test_hostile_input import _one_line_error, _record


# --------------------------------------------------- one file under two names (F1, F2)
@pytest.mark.parametrize("alias", ["dotdot", "symlink"])
def test_coco_same_file_under_two_names(tmp_path, run_cli, alias):
    root = make_coco(tmp_path / "coco")
    jf = root / "annotations" / "instances_val.json"
    data = json.loads(jf.read_text())
    if alias == "dotdot":
        name = "../val/a.jpg"
    else:
        name = "c.jpg"
        (root / "val" / "c.jpg").symlink_to("a.jpg")
    data["images"].append({"id": 11, "file_name": name, "height": 20, "width": 30})
    jf.write_text(json.dumps(data))
    code, _, err = run_cli("data-stats", "--data", root)
    _one_line_error(code, err, jf.name, f"image 11: {name!r} is the file already listed as "
                                        "'a.jpg' (image 7)")
    code, out, err = run_cli("data-stats", "--data", root, "--skip-bad")
    assert code == 0 and "skipped 1" in err and "[val] 2 images" in out


@pytest.mark.parametrize("alias", ["./2007_000002", "symlink"])
def test_voc_same_image_under_two_ids(tmp_path, run_cli, alias):
    items = {f"2007_00000{i}": two_instance_item(void=False) for i in range(1, 4)}
    root = make_voc(tmp_path / "voc", items, {"train": list(items)})
    lst = root / "ImageSets" / "Segmentation" / "train.txt"
    if alias == "symlink":
        (root / "JPEGImages" / "2007_000009.jpg").symlink_to("2007_000002.jpg")
        for d in ("SegmentationObject", "SegmentationClass"):
            (root / d / "2007_000009.png").symlink_to("2007_000002.png")
        alias, needle = "2007_000009", "id '2007_000009' is the image file of id '2007_000002'"
    else:
        needle = "line 4: id './2007_000002' is '2007_000002', listed again (first on line 2)"
    lst.write_text(lst.read_text() + alias + "\n")
    code, _, err = run_cli("data-stats", "--data", root)
    _one_line_error(code, err, "train.txt", needle)
    code, out, err = run_cli("data-stats", "--data", root, "--skip-bad")
    assert code == 0 and "skipped 1" in err and "[train] 3 images" in out


# ------------------------------------------------------- text files of a dataset (F4)
def _csv_root(tmp_path, content: bytes, classes: bytes | None = None):
    root = tmp_path / "f"
    (root / "images").mkdir(parents=True)
    for n in ("x", "y"):
        Image.new("RGB", (6, 6)).save(root / "images" / f"{n}.png")
    (root / "labels.csv").write_bytes(content)
    if classes is not None:
        (root / "classes.txt").write_bytes(classes)
    return root


@pytest.mark.parametrize("content,classes,needle", [
    (b"image,labels\nimages/x.png,c\xffat\n", None,
     "labels.csv: line 2: not UTF-8 text (byte 0xff)"),
    (b"image,labels\nimages/x.png,caf\xe9\n", None,
     "labels.csv: line 2: not UTF-8 text (byte 0xe9)"),
    ("image,labels\nimages/x.png,cat\n".encode("utf-16"), None, "labels.csv: is UTF-16 text"),
    (b"image,labels\nimages/x.png,cat\nimages/y.png\0,dog\n", None,
     "labels.csv: line 3: holds a NUL byte"),
    (b"image,labels\nimages/x.png,cat\0\n", None, "labels.csv: line 2: holds a NUL byte"),
    (b"image,labels\nimages/x.png,cat\nimages/y.png," + b"a" * 200_000 + b"\n", None,
     "labels.csv:3: bad CSV (field larger than field limit (131072))"),
    (b"image,labels\nimages/x.png,cat\n", b"cat\ndo\0g\n", "classes.txt: line 2: holds a NUL"),
    (b"image,labels\nimages/x.png,cat\n", b"cat\ndo\xffg\n", "classes.txt: line 2: not UTF-8"),
], ids=["bad-utf8", "latin1", "utf16", "nul-in-path", "nul-in-label", "huge-field",
        "classes-nul", "classes-bad-utf8"])
def test_folder_csv_text_is_checked(tmp_path, run_cli, content, classes, needle):
    root = _csv_root(tmp_path, content, classes)
    for extra in ((), ("--skip-bad",)):  # a broken file is not an item to skip
        code, _, err = run_cli("data-stats", "--data", root, *extra)
        _one_line_error(code, err, needle)


@pytest.mark.parametrize("name,content,needle", [
    ("train.txt", b"2007_000001\n2007_0\xff00002\n", "train.txt: line 2: not UTF-8 text"),
    ("train.txt", b"2007_000001\n2007_000\x0002\n", "train.txt: line 2: holds a NUL byte"),
    ("train.csv", b"image,labels\n2007_000001,ca\xfft\n", "train.csv: line 2: not UTF-8 text"),
    ("classes.txt", b"cat\ndo\xffg\n", "classes.txt: line 2: not UTF-8 text"),
    ("classes.txt", b"cat\ndog\ncat\n", "classes.txt: line 3: class 'cat' is listed again"),
], ids=["txt-bad-utf8", "txt-nul", "csv-bad-utf8", "classes-bad-utf8", "classes-twice"])
def test_voc_text_files_are_checked(tmp_path, run_cli, name, content, needle):
    items = {"2007_000001": {"size": (8, 8)}, "2007_000002": {"size": (8, 8)}}
    root = make_voc(tmp_path / "voc", items, {}, classes=["cat", "dog"])
    seg = root / "ImageSets" / "Segmentation"
    (seg / "train.csv").write_text("image,labels\n2007_000001,cat\n2007_000002,dog\n")
    if name == "train.txt":
        (seg / "train.csv").unlink()
    (root / name if name == "classes.txt" else seg / name).write_bytes(content)
    code, _, err = run_cli("data-stats", "--data", root)
    _one_line_error(code, err, needle)


# ------------------------------------------------------- COCO: ids, sizes, names (F14)
@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["images"][1].update(id=-5), "image id -5 is outside 0"),
    (lambda d: d["images"][1].update(id=10**20), "image id 100000000000000000000 is outside"),
    (lambda d: d["annotations"][1]["segmentation"].update(size=[20.5, 30]),
     "annotation 2: bad segmentation (RLE size [20.5, 30] must be two whole numbers"),
], ids=["negative-id", "id-over-int64", "rle-size-float"])
def test_coco_entry_values(tmp_path, run_cli, mutate, needle):
    root = make_coco(tmp_path / "coco")
    jf = root / "annotations" / "instances_val.json"
    data = json.loads(jf.read_text())
    mutate(data)
    jf.write_text(json.dumps(data))
    code, _, err = run_cli("data-stats", "--data", root)
    _one_line_error(code, err, jf.name, needle)


def test_coco_category_names_differing_by_spaces(tmp_path, run_cli):
    root = make_coco(tmp_path / "coco")
    jf = root / "annotations" / "instances_val.json"
    data = json.loads(jf.read_text())
    data["categories"].append({"id": 8, "name": "dog "})
    jf.write_text(json.dumps(data))
    for extra in ((), ("--skip-bad",)):
        code, _, err = run_cli("data-stats", "--data", root, *extra)
        _one_line_error(code, err, jf.name, "category names 'dog' (id 5) and 'dog ' (id 8) "
                                            "differ only by surrounding spaces")


def test_hidden_files_in_class_folders_are_not_images(tmp_path, run_cli):
    root = tmp_path / "f"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        Image.new("RGB", (6, 6)).save(root / c / f"{c}1.png")
    (root / "cat" / "._cat1.png").write_bytes(b"\0\5\26\7junk")  # macOS AppleDouble
    (root / "cat" / ".DS_Store").write_bytes(b"junk")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(b"junk")
    code, out, err = run_cli("data-stats", "--data", root)
    assert code == 0, err
    assert "[train] 2 images" in out


# --------------------------------------------------------------- a closed pipe (F15)
def test_closed_pipe_exits_quietly(monkeypatch, run_cli):
    """`wiseseg data-stats | head -1`: the reader closed the pipe; no traceback."""
    import wiseseg.commandline as cl
    from wiseseg.cli import build_parser

    def closed(args):
        print("dataset ...")
        raise BrokenPipeError(32, "Broken pipe")

    build_parser()  # registers the commands
    help_text, _, configure = cl.COMMANDS["data-stats"]
    monkeypatch.setitem(cl.COMMANDS, "data-stats", (help_text, closed, configure))
    code, _, err = run_cli("data-stats")
    assert code == 141 and err == ""


# ------------------------------------------- settings: checked before any work (F7, F8)
@pytest.mark.parametrize("overrides,needle", [
    (["proposals.method=bogus"], "proposals.method='bogus': not a proposal method"),
    (["proposals.method=json:/nonexistent"], "proposal folder '/nonexistent' does not exist"),
    (["proposals.method='mcg:'"], "needs the folder of the proposal files"),
    (["proposals.method=builtin:best"], "unknown builtin quality 'best'"),
    (["proposals.method=sam:/no/sam.pth"], "SAM checkpoint '/no/sam.pth' does not exist"),
    (["prm.score=bogus"], "prm.score='bogus' must be one of peak, class, retrieval"),
    (["classifier.optimizer=adam"], "must be one of sgd, adamw"),
    (["segmenter.roi_align_backward=dense"], "must be one of sparse, torchvision"),
    (["device=gpu"], "device='gpu' is not a device"),
    (["data.negatives=/no/negatives"], "the negatives folder does not exist"),
    (["evaluate.min_score=2"], "evaluate.min_score=2 must be within [0, 1]"),
    (["predict.min_score=1.5"], "predict.min_score=1.5 must be within [0, 1]"),
    (["segmenter.color_jitter=5"], "segmenter.color_jitter=5 must be within [0, 1]"),
    (["classifier.class_balance=2"], "classifier.class_balance=2 must be within [0, 1]"),
    (["auto.min_input=512", "auto.max_input=128"],
     "auto.min_input=512 is larger than auto.max_input=128"),
    (["auto.min_epochs=50"], "auto.min_epochs=50 is larger than auto.max_epochs=40"),
    (["segmenter.min_size=600", "segmenter.max_size=300"], "segmenter.min_size=600 is larger"),
    (["segmenter.anchor_sizes=[]"], "segmenter.anchor_sizes=[] needs exactly 5 entries, got 0"),
    (["segmenter.anchor_sizes=[16,32,64.5,128,256]"], "entry 64.5 is outside its range"),
    (["segmenter.mask_layers=[]"], "needs at least 1 entry"),
    (["peaks.scales=[]"], "peaks.scales=[] needs at least 1 entry"),
    (["peaks.scales=[100]"], "entry 100 is outside its range: numbers 0.1 … 4"),
    (["classifier.scale=[0.9,0.5]"], "smallest ≤ largest"),
    (["classifier.input_size=1000000"], "larger than 4096 px"),
    (["segmenter.min_size=100000", "segmenter.max_size=100000"],
     "segmenter.min_size=100000 is larger than 4096 px"),
    (["auto.max_input=10000"], "auto.max_input=10000 is larger than 4096 px"),
    (["pseudo.mode=argmax"], "pseudo.mode='argmax' differs from segmenter.mode='sample'"),
], ids=lambda v: v if isinstance(v, str) and "=" not in v else None)
def test_setting_refused_before_any_work(tmp_path, run_cli, overrides, needle):
    import sys

    had_torch = "torch" in sys.modules
    code, _, err = run_cli("run", "--data", tmp_path / "no-such-data", "--out", tmp_path / "r",
                           *overrides)  # --preset auto: checked before torch decides it
    _one_line_error(code, err, needle)
    assert not (tmp_path / "r").exists()
    assert had_torch or "torch" not in sys.modules


def test_device_option_is_checked_with_the_settings(tmp_path, run_cli):
    code, _, err = run_cli("run", "--data", tmp_path / "none", "--out", tmp_path / "r",
                           "--device", "foo")
    _one_line_error(code, err, "device='foo' is not a device (use auto, cpu or cuda[:N])")
    from wiseseg.config import apply_overrides, load_preset

    cfg = apply_overrides(load_preset("cpu"), ["device=cuda:1", "device=cpu"])
    assert cfg["device"] == "cpu"


def test_setting_choices_match_the_code():
    """config.CHOICES and the lists of the code that reads each setting agree."""
    from wiseseg import config
    from wiseseg.engine.trainer import warmup_schedule
    from wiseseg.inference.prm_baseline import SCORES
    from wiseseg.models.cam_geometry import CONVENTIONS
    from wiseseg.models.names import BACKBONE_NAMES
    from wiseseg.models.peak_ops import STIMULATION_GRADIENTS
    from wiseseg.proposals.builtin import QUALITIES
    from wiseseg.proposals.sam import MODEL_TYPES

    c = config.CHOICES
    assert c["classifier.backbone"] == c["segmenter.backbone"] == BACKBONE_NAMES
    assert c["prm.score"] == SCORES
    assert c["classifier.cam_geometry"] == CONVENTIONS
    assert c["classifier.stimulation"] == STIMULATION_GRADIENTS
    assert tuple(QUALITIES) == config._BUILTIN_QUALITIES
    assert config._SAM_MODEL_TYPES == MODEL_TYPES
    from wiseseg.pseudo.partial import MODES

    assert c["pseudo.partial_labels"] == MODES
    from wiseseg.classifier.train import UNLABELLED_MODES as STAGE1_MODES
    from wiseseg.segmenter.data import UNLABELLED_MODES as STAGE2_MODES

    assert c["classifier.unlabelled_classes"] == STAGE1_MODES
    assert c["segmenter.unlabelled_classes"] == STAGE2_MODES
    for kind in c["classifier.schedule"]:
        warmup_schedule(10, 1, kind)  # each known to the trainer
    for sec in ("classifier", "segmenter"):  # every word a built-in preset uses is a choice
        for name in config.preset_names():
            cfg = config.load_preset(name)
            for key in ("optimizer", "schedule", "pretrained", "backbone"):
                assert cfg[sec][key] in c[f"{sec}.{key}"] + ("auto",)
    # `auto` words resolve to choices (the classifier backbone: wiseseg.autoconfig)
    from wiseseg.autoconfig import PHOTO_BACKBONE, SMALL_IMAGE_BACKBONE
    assert {PHOTO_BACKBONE, SMALL_IMAGE_BACKBONE} <= set(c["classifier.backbone"])


# ----------------------------------------------------------- preset files (F5, F6, F16)
@pytest.mark.parametrize("content,needle", [
    (b"seed: 0\n\x80\x81\xfe binary\n", "mine.yaml: line 2: not UTF-8 text (byte 0x80)"),
    (b"seed: [1, 2\n", "mine.yaml: invalid YAML (line 2, column 1: expected ',' or ']'"),
    (b"seed: !!python/object/apply:os.system ['true']\n",
     "mine.yaml: invalid YAML (line 1, column 7: could not determine a constructor"),
    (b"seed: 0\n\tdevice: cpu\n", "mine.yaml: invalid YAML (line 2, column 1:"),
], ids=["binary", "syntax", "python-tag", "tab"])
def test_preset_file_errors_are_one_line(tmp_path, run_cli, content, needle):
    preset = tmp_path / "mine.yaml"
    preset.write_bytes(content)
    code, _, err = run_cli("run", "--data", "shapes", "--out", tmp_path / "r", "--preset",
                           preset)
    _one_line_error(code, err, needle)


@pytest.mark.parametrize("edit,needle", [
    (lambda c: c["classifier"].update(lrr=0.1),
     "unknown setting 'classifier.lrr': no 'lrr' under classifier (known: "),
    (lambda c: c.update(extra={"a": 1}), "unknown setting 'extra': no 'extra' under the top"),
    (lambda c: c["proposals"].update(method="json:/no/such/dir"),
     "proposals.method='json:/no/such/dir': proposal folder"),
], ids=["typo", "section", "method"])
def test_preset_file_settings_are_checked(tmp_path, run_cli, edit, needle):
    import yaml

    from wiseseg.config import load_preset

    cfg = load_preset("cpu")
    cfg.pop("preset")
    edit(cfg)
    preset = tmp_path / "mine.yaml"
    preset.write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli("run", "--data", tmp_path / "none", "--out", tmp_path / "r",
                           "--preset", preset)
    _one_line_error(code, err, needle)
    assert not (tmp_path / "r").exists()


def test_a_runs_config_yaml_serves_as_preset(tmp_path):
    """A run's config.yaml records `preset` and `data.spec` besides the settings."""
    import yaml

    from wiseseg.config import load_preset

    cfg = load_preset("cpu")
    cfg["data"]["spec"] = "shapes"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert load_preset(str(tmp_path / "config.yaml"))["data"]["spec"] == "shapes"


# --------------------------------------------- --set values of proposal sources (F9)
@pytest.mark.parametrize("setting,needle", [
    ("nms_iou=abc", "builtin proposals: nms_iou='abc' must be a finite number"),
    ("sigma=.nan", "sigma=nan must be a finite number"),
    ("pool_factor=2.5", "pool_factor=2.5 must be a whole number"),
    ("work_pixels=1000000000000", "work_pixels=1000000000000 is more than 16777216"),
    ("deep_layer=[1]", "deep_layer=[1] must be a word"),
    ("segmentations=[1,2]", "segmentations must be [colour space, scale] pairs"),
], ids=["str", "nan", "float-for-int", "huge", "list-for-str", "pairs"])
def test_proposal_set_values_are_typed(tmp_path, run_cli, setting, needle):
    code, _, err = run_cli("proposals", "--data", tmp_path / "none", "--out", tmp_path / "p",
                           "--workers", "1", "--set", setting)
    _one_line_error(code, err, needle)
    code, _, err = run_cli("proposals", "--data", tmp_path / "none", "--out", tmp_path / "p",
                           "--top-k", "0")
    _one_line_error(code, err, "--top-k=0 must be ≥ 1")
    assert not (tmp_path / "p").exists()


# ------------------------------------------------------- a failed start leaves nothing
def test_failed_start_removes_the_run_directory_it_made(tmp_path):
    from wiseseg.errors import WisesegError
    from wiseseg.io import atomic_write_json
    from wiseseg.runlock import run_lock

    run = tmp_path / "new" / "R"
    with pytest.raises(WisesegError, match="bad device"), run_lock(run):
        atomic_write_json(run / "auto.json", {})
        raise WisesegError("bad device")
    assert not run.exists() and (tmp_path / "new").exists()
    run.mkdir()
    (run / "classifier").mkdir()  # work done: kept, also when the directory was made anew
    with pytest.raises(WisesegError), run_lock(run):
        raise WisesegError("later failure")
    assert (run / "classifier").exists()
    other = tmp_path / "other"
    with pytest.raises(WisesegError), run_lock(other):
        (other / "classifier").mkdir()
        raise WisesegError("a stage failed")
    assert (other / "classifier").is_dir()  # a started stage is kept for the resume


# ------------------------------------------------- .mat decompression bomb (F10)
def _mat_bomb(path, name=b"superpixels", dims=(30000, 30000)):
    """A level-5 .mat file whose compressed variable declares ``dims`` uint8 (only its header
    and a few bytes of data are there: the header is what must be refused)."""
    import struct
    import zlib

    def element(mdtype, data):
        return struct.pack("<II", mdtype, len(data)) + data + b"\0" * (-len(data) % 8)

    body = (element(6, struct.pack("<II", 9, 0))  # array flags: mxUINT8_CLASS
            + element(5, struct.pack(f"<{len(dims)}i", *dims)) + element(1, name)
            + element(2, b"\0" * 64))
    matrix = struct.pack("<II", 14, len(body)) + body
    packed = zlib.compress(matrix)
    head = b"MATLAB 5.0 MAT-file, hostile".ljust(116) + b"\0" * 8 + b"\x00\x01IM"
    path.write_bytes(head + struct.pack("<II", 15, len(packed)) + packed)


def test_mat_header_is_read_without_inflating(tmp_path):
    from scipy.io import savemat, whosmat

    from wiseseg.proposals.loaders import mat_variables

    cells = np.empty((3, 1), dtype=object)
    for i in range(3):
        cells[i, 0] = np.arange(i + 1.0)
    data = {"superpixels": np.ones((6, 8)), "labels": cells, "a_rather_long_name": 1.0,
            "maskmat": np.zeros((6, 8, 5), bool), "v": np.arange(7)}
    for compress in (False, True):
        f = tmp_path / f"m{compress}.mat"
        savemat(str(f), data, do_compression=compress)
        assert mat_variables(f) == [(n, tuple(s)) for n, s, _ in whosmat(str(f))]
    _mat_bomb(tmp_path / "bomb.mat")
    assert mat_variables(tmp_path / "bomb.mat") == [("superpixels", (30000, 30000))]


@pytest.mark.parametrize("method", ["mcg", "cob"])
def test_mat_decompression_bomb_is_refused_before_loadmat(tmp_path, monkeypatch, method):
    import scipy.io

    from wiseseg.errors import DataError
    from wiseseg.proposals import build_proposal_source

    _mat_bomb(tmp_path / "img1.mat", b"superpixels" if method == "mcg" else b"maskmat")
    monkeypatch.setattr(scipy.io, "loadmat", lambda *a, **k: pytest.fail("loadmat called"))
    src = build_proposal_source(f"{method}:{tmp_path}")
    with pytest.raises(DataError, match="is declared 30000×30000 .900000000 elements.") as e:
        src.propose(np.zeros((6, 8, 3), np.uint8), _record())
    assert "img1.mat" in str(e.value)


# ------------------------------------- precomputed proposal files re-exported (F3)
def _export(kind, folder, records, value):
    """One proposal file per record: a mask of the top-left corner, score ``value``."""
    from pycocotools import mask as mask_utils
    from scipy.io import savemat

    folder.mkdir(exist_ok=True)
    for r in records:
        m = np.zeros((r.height, r.width), np.uint8)
        m[: r.height // 2, : r.width // 2] = 1
        if kind == "json":
            seg = mask_utils.encode(np.asfortranarray(m))
            seg["counts"] = seg["counts"].decode()
            (folder / f"{r.name}.json").write_text(json.dumps([{"segmentation": seg,
                                                                "score": value}]))
        else:
            labels = np.empty((1, 1), dtype=object)
            labels[0, 0] = np.asarray([[2.0]])
            savemat(str(folder / f"{r.name}.mat"), {"superpixels": m.astype(float) + 1,
                                                    "labels": labels,
                                                    "scores": np.asarray([[value]])})


@pytest.mark.parametrize("kind", ["json", "mcg"])
def test_reexported_proposal_files_are_not_reused(tmp_path, kind):
    import os

    from wiseseg.data import open_dataset
    from wiseseg.errors import DataError
    from wiseseg.proposals import build_proposal_source, compute_proposals

    records = open_dataset("shapes:train=2,val=2,size=32,seed=3", progress=False).records("val")
    src_dir, out = tmp_path / "exported", tmp_path / "store"
    _export(kind, src_dir, records, 0.5)
    source = build_proposal_source(f"{kind}:{src_dir}")
    first = compute_proposals(records, source, out, progress=False)
    assert first.manifest["counts"]["computed"] == 2
    changed = src_dir / f"{records[1].name}.{'json' if kind == 'json' else 'mat'}"
    stat = changed.stat()
    _export(kind, src_dir, records[1:], 0.25)  # re-exported: other scores
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match="is not the proposal file .* it changed since "
                                        ".*--overwrite to recompute") as e:
        compute_proposals(records, source, out, progress=False)
    assert changed.name in str(e.value)
    again = compute_proposals(records, source, out, progress=False, overwrite=True)
    assert again.manifest["counts"]["computed"] == 1
    assert again.get(records[1].id).scores[0] < first.get(records[0].id).scores[0]
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5 * 10**9))  # touched only
    assert compute_proposals(records, source, out, progress=False).manifest["counts"][
        "reused"] == 2
    changed.unlink()  # gone: the store cannot say what it was read from
    with pytest.raises(DataError, match="holds proposals read from it"):
        compute_proposals(records, source, out, progress=False)


# ------------------------------------------------------- a hostile peaks.json (F13)
def _peaks_file(tmp_path, mutate):
    data = {"classes": ["cat", "dog"], "split": "train", "images": [
        {"image_id": 1, "height": 6, "width": 8, "labels": [0],
         "peaks": [{"class": 0, "y": 2, "x": 3, "score": 1.5}]},
        {"image_id": 2, "height": 6, "width": 8, "labels": [], "peaks": []}]}
    mutate(data)
    path = tmp_path / "peaks.json"
    path.write_text(json.dumps(data))
    return path


def _peak(**kw):
    return lambda d: d["images"][0]["peaks"][0].update(kw)


@pytest.mark.parametrize("mutate,needle", [
    (_peak(y=float("nan")), "image 1, peak 0: 'y' must be a finite number, got nan"),
    (_peak(score="high"), "image 1, peak 0: 'score' must be a finite number, got 'high'"),
    (_peak(**{"class": "cat"}), "image 1, peak 0: 'class' must be a whole number"),
    (lambda d: d["images"].append(5), "image entry 2 is not an object: 5"),
    (lambda d: d["images"][0].update(image_id="abc"), "'image_id' must be a whole number"),
    (lambda d: d["images"][1].update(image_id=1), "image 1 is listed twice"),
    (lambda d: d["images"][0].update(peaks=None), "image 1: 'peaks' must be a list"),
    (lambda d: d.pop("classes"), "not a wiseseg peaks file"),
    (_peak(x=1e9), "image 1, peak 0: (y, x) = (2, 1e+09) is outside the 8×6 image"),
    (_peak(x=-5), "(y, x) = (2, -5) is outside the 8×6 image"),
    (_peak(**{"class": 99}), "image 1, peak 0: class 99 is not a class index 0 … 1"),
    (lambda d: d["images"][1].update(image_id=7), "image 7 is not an image of the split"),
    (lambda d: d.update(classes=["a", "b"]),
     "the peaks file lists 2 classes (a, b) but the dataset has 2 (cat, dog)"),
], ids=["nan", "score-str", "class-str", "entry-number", "id-str", "id-twice", "peaks-null",
        "no-classes", "huge", "negative", "class-99", "other-image", "other-classes"])
def test_peaks_file_is_checked(tmp_path, mutate, needle):
    from wiseseg.classifier.peaks import read_peaks
    from wiseseg.errors import DataError
    from wiseseg.peaks_file import check_peaks_for

    path = _peaks_file(tmp_path, mutate)
    records = [replace(_record(), id=i) for i in (1, 2)]
    with pytest.raises(DataError) as e:
        check_peaks_for(path, read_peaks(path), ("cat", "dog"), records)
    assert needle in str(e.value) and str(path) in str(e.value)
    assert "classifier" not in str(e.value)


def test_good_peaks_file_passes(tmp_path):
    from wiseseg.classifier.peaks import read_peaks
    from wiseseg.peaks_file import check_peaks_for

    path = _peaks_file(tmp_path, lambda d: None)
    records = [replace(_record(), id=i) for i in (1, 2)]
    data = read_peaks(path)
    check_peaks_for(path, data, ("cat", "dog"), records)
    assert data["by_id"] == {1: [{"class": 0, "y": 2, "x": 3, "score": 1.5}], 2: []}


# ---------------------------------------------------- disk full in make-shapes (minor)
def test_make_shapes_disk_full_names_the_folder(tmp_path, monkeypatch, run_cli):
    import errno

    from PIL import Image as PILImage

    def full(self, fp, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PILImage.Image, "save", full)
    code, _, err = run_cli("make-shapes", tmp_path / "S", "--train", "2", "--val", "1",
                           "--size", "32")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and lines[-1].startswith(f"error: {tmp_path / 'S'}: no space left")
    assert not any(p.name.startswith(".S-") for p in tmp_path.iterdir())  # nothing kept
    code, _, err = run_cli("make-shapes", "-q", tmp_path / "S", "--train", "2", "--val", "1",
                           "--size", "32")
    _one_line_error(code, err, str(tmp_path / "S"), "no space left on the device")


@pytest.mark.parametrize("argv,needle", [
    (["predict", "--checkpoint", "none.pt", "--out", "o.json", "predict.batch_size=0"],
     "predict.batch_size=0 must be > 0"),
    (["predict", "--checkpoint", "none.pt", "--out", "o.json", "segmenter.min_size=100000"],
     "segmenter.min_size=100000 is larger than 4096 px"),
    (["train-segmenter", "--masks", "gt", "--out", "ts", "segmenter.lr=-1"],
     "segmenter.lr=-1 must be > 0"),
    (["prm-baseline", "--classifier", "c.pt", "--proposals", "p", "--out", "o.json",
      "prm.score=bogus"], "prm.score='bogus' must be one of"),
    (["train-classifier", "--out", "tc", "classifier.epochs=abc"],
     "classifier.epochs='abc' must be auto or a whole number"),
    (["peaks", "--checkpoint", "c.pt", "--out", "p.json", "peaks.relative=-1"],
     "peaks.relative=-1"),
    (["pseudo-masks", "--classifier", "c.pt", "--proposals", "p", "--out", "o.json",
      "pseudo.dup_iou=-0.1"], "pseudo.dup_iou=-0.1 must be ≥ 0"),
], ids=["predict", "predict-size", "train-segmenter", "prm-baseline", "train-classifier",
        "peaks", "pseudo-masks"])
def test_stage_commands_check_settings_first(tmp_path, monkeypatch, run_cli, argv, needle):
    monkeypatch.chdir(tmp_path)  # the checkpoint, data and outputs do not exist
    code, _, err = run_cli(*argv[:1], "--data", "no-such-data", *argv[1:])
    _one_line_error(code, err, needle)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------ model checkpoints: config and weights (F11, F12)
def _checkpoint(tmp_path, kind, section, cfg_edit=None, model=None):
    import torch

    from wiseseg.config import load_preset

    cfg = dict(load_preset("cpu")[section])
    cfg.update({"input_size": 64} if section == "classifier" else
               {"min_size": 64, "max_size": 64, "anchor_sizes": [8, 16, 32, 64, 128],
                "epochs": 1})
    if cfg_edit:
        cfg_edit(cfg)
    path = tmp_path / "model.pt"
    torch.save({"kind": kind, "model": model if model is not None else {}, "config": cfg,
                "classes": ["a", "b"]}, path)
    return path


@pytest.mark.parametrize("edit,needle", [
    (lambda c: c.update(min_size=30000, max_size=30000),
     "setting segmenter.min_size=30000 is larger than 4096 px"),
    (lambda c: c.update(box_score_thresh=float("nan")),
     "segmenter.box_score_thresh=nan must be a finite number"),
    (lambda c: c.update(box_detections_per_img=-1), "box_detections_per_img=-1 must be > 0"),
    (lambda c: c.update(min_size="abc"), "segmenter.min_size='abc' must be"),
    (lambda c: c.update(roi_align_backward="fast"), "must be one of sparse, torchvision"),
    (lambda c: c.update(anchor_sizes=[8, 16]), "anchor_sizes=[8, 16] needs exactly 5 entries"),
    (lambda c: c.update(secret=1), "config has an unknown setting 'secret'"),
], ids=["huge", "nan", "negative", "string", "choice", "anchors", "unknown"])
def test_segmenter_checkpoint_config_is_checked(tmp_path, edit, needle):
    from wiseseg.errors import WisesegError
    from wiseseg.segmenter.model_io import load_segmenter

    path = _checkpoint(tmp_path, "wiseseg.maskrcnn", "segmenter", edit)
    with pytest.raises(WisesegError) as e:
        load_segmenter(path)
    assert str(e.value).startswith(f"{path}: the segmenter checkpoint's config")
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kind,section", [("wiseseg.maskrcnn", "segmenter"),
                                          ("wiseseg.peakcam", "classifier")])
@pytest.mark.parametrize("value,word", [(float("nan"), "NaN"), (float("inf"), "infinite")])
def test_checkpoint_with_non_finite_weights_is_refused(tmp_path, kind, section, value, word):
    import torch

    from wiseseg.classifier.model_io import load_classifier
    from wiseseg.errors import WisesegError
    from wiseseg.segmenter.model_io import load_segmenter

    weights = {"head.weight": torch.ones(3, 3), "head.bias": torch.tensor([0.0, value]),
               "steps": torch.tensor(5)}
    path = _checkpoint(tmp_path, kind, section, model=weights)
    load = load_segmenter if section == "segmenter" else load_classifier
    with pytest.raises(WisesegError, match=f"{section} checkpoint's tensor 'head.bias' holds "
                                           f"{word} values"):
        load(path)


def test_classifier_checkpoint_config_is_checked(tmp_path):
    from wiseseg.classifier.model_io import load_classifier
    from wiseseg.errors import WisesegError

    path = _checkpoint(tmp_path, "wiseseg.peakcam", "classifier",
                       lambda c: c.update(input_size=1000000))
    with pytest.raises(WisesegError, match="classifier.input_size=1000000 is larger than 4096"):
        load_classifier(path)


def test_a_bad_setting_fails_before_torch_is_imported(tmp_path):
    """A fresh interpreter: every stage command refuses a bad override without importing
    torch (seconds of imports on a CPU machine)."""
    import subprocess
    import sys

    code = ("import sys\nfrom wiseseg.cli import main\nrcs = []\n"
            "for argv in ([['train-classifier', '--out', 'a', 'classifier.epochs=abc'],"
            " ['peaks', '--checkpoint', 'c.pt', '--out', 'p.json', 'peaks.relative=-1'],"
            " ['pseudo-masks', '--classifier', 'c.pt', '--proposals', 'p', '--out', 'o.json',"
            " 'pseudo.dup_iou=-0.1'], ['train-segmenter', '--masks', 'gt', '--out', 'b',"
            " 'segmenter.lr=-1']]):\n"
            "    rcs.append(main([argv[0], '--data', 'nothing', *argv[1:]]))\n"
            "print(rcs, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[2, 2, 2, 2] False", out.stderr[-2000:]


def test_the_draw_mode_is_segmenter_mode():
    """segmenter.mode alone, or both modes alike, are accepted (pseudo.mode's default
    ``sample`` is only recorded)."""
    from wiseseg.api import load_config

    for overrides in (["segmenter.mode=argmax"], ["segmenter.mode=argmax", "pseudo.mode=argmax"],
                      ["segmenter.mode=fixed"]):
        assert load_config("cpu", overrides)["segmenter"]["mode"] == overrides[0].split("=")[1]
