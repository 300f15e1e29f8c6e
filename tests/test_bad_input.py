"""Every bad input: a one-line error naming the file, exit 2; with --skip-bad, skipped + counted."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from .conftest import make_voc, raw_png, two_instance_item


def _one_line_error(code, err, *needles):
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in err


def _voc_with(tmp_path, mutate):
    items = {f"2007_00000{i}": two_instance_item(void=False) for i in range(1, 4)}
    root = make_voc(tmp_path / "voc", items, {"train": list(items)})
    target = mutate(root)
    return root, target


def _break_jpeg(root):
    p = root / "JPEGImages" / "2007_000002.jpg"
    p.write_bytes(p.read_bytes()[:200])
    return p


def _not_image(root):
    p = root / "JPEGImages" / "2007_000002.jpg"
    p.write_text("just text")
    return p


def _missing(root):
    p = root / "JPEGImages" / "2007_000002.jpg"
    p.unlink()
    return p


def _zero(root):
    p = root / "JPEGImages" / "2007_000002.jpg"
    p.unlink()
    q = p.with_suffix(".png")
    raw_png(q, 0, 5)
    return q


def _bomb(root):
    p = root / "JPEGImages" / "2007_000002.jpg"
    p.unlink()
    q = p.with_suffix(".png")
    raw_png(q, 30000, 30000)
    return q


def _mask_size(root):
    p = root / "SegmentationObject" / "2007_000002.png"
    Image.open(p).resize((7, 7)).save(p)
    return p


def _class_out_of_range(root):
    p = root / "SegmentationClass" / "2007_000002.png"
    arr = np.asarray(Image.open(p)).copy()
    arr[arr == 3] = 42
    img = Image.fromarray(arr, mode="P")
    img.putpalette(Image.open(p).getpalette())
    img.save(p)
    return p


@pytest.mark.parametrize("mutate,needle", [
    (_break_jpeg, "truncated"),
    (_not_image, "not an image"),
    (_missing, "not found"),
    (_zero, "zero size"),
    (_bomb, "too large"),
    (_mask_size, "mask is 7×7"),
    (_class_out_of_range, "class id 42"),
])
def test_bad_item_errors_then_skips(tmp_path, run_cli, mutate, needle):
    root, target = _voc_with(tmp_path, mutate)
    code, out, err = run_cli("data-stats", "--data", root)
    _one_line_error(code, err, target.name, needle)
    code, out, err = run_cli("data-stats", "--data", root, "--skip-bad")
    assert code == 0
    assert "skipped 1 bad item" in err and target.name in err
    assert "[train] 2 images" in out


def test_list_entry_escaping_root(tmp_path, run_cli):
    root, _ = _voc_with(tmp_path, lambda r: None)
    (tmp_path / "secret.jpg").write_bytes(b"x")
    lst = root / "ImageSets" / "Segmentation" / "train.txt"
    lst.write_text(lst.read_text() + "../../../secret\n")
    code, _, err = run_cli("data-stats", "--data", root)
    _one_line_error(code, err, "train.txt", "escapes the dataset root")
    code, out, err = run_cli("data-stats", "--data", root, "--skip-bad")
    assert code == 0 and "skipped 1" in err and "[train] 3 images" in out


def test_empty_dataset(tmp_path, run_cli):
    root = make_voc(tmp_path / "voc", {}, {"train": []})
    code, _, err = run_cli("data-stats", "--data", root)
    _one_line_error(code, err, "train", "no usable images")


def test_csv_unknown_class(tmp_path, run_cli):
    root = tmp_path / "f"
    root.mkdir()
    Image.new("RGB", (5, 5)).save(root / "a.jpg")
    (root / "classes.txt").write_text("cat\ndog\n")
    (root / "labels.csv").write_text("image,labels\na.jpg,cat;zebra\n")
    code, _, err = run_cli("data-stats", "--data", root)
    _one_line_error(code, err, "labels.csv", "unknown class 'zebra'")


def test_folder_dataset_has_no_ground_truth_message(tmp_path):
    from wiseseg.data import open_dataset
    from wiseseg.errors import WisesegError

    root = tmp_path / "f"
    (root / "cat").mkdir(parents=True)
    Image.new("RGB", (5, 5)).save(root / "cat" / "a.jpg")
    with pytest.raises(WisesegError, match="no ground-truth masks"):
        open_dataset(root).ground_truth("train")


def test_data_stats_shapes(run_cli):
    code, out, _ = run_cli("data-stats", "--data", "shapes:train=8,val=4,size=48", "-q")
    assert code == 0
    assert "[train] 8 images" in out and "instances per image" in out and "object size" in out
