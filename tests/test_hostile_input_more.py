"""Hostile input (issue 19), the cases "like them" that an audit found after the first round:
one-line errors naming the file and the offending value, exit 2, no traceback; --skip-bad
skips and counts where a user expects it. The table is docs/bad-input.md."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from .conftest import make_coco, make_voc, two_instance_item
from .test_hostile_input import _one_line_error


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
