"""Predictions input: every malformed entry is a one-line error naming the file and the entry;
RLE count strings are checked before pycocotools sees them; the ``evaluate`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wiseseg import rle, rle_check
from wiseseg.data import open_dataset
from wiseseg.errors import DataError
from wiseseg.evaluation import evaluate_predictions, load_predictions
from wiseseg.rle_check import rle_counts_problems

TRAIN_ID, VAL_ID = 2007000001, 2007000002  # voc_root: one image per split, 20×30


def _good(image_id=VAL_ID, category_id=1, **over):
    m = np.zeros((20, 30), bool)
    m[2:10, 2:10] = True
    entry = {"image_id": image_id, "category_id": category_id, "segmentation": rle.encode(m),
             "bbox": [2, 2, 8, 8], "score": 0.9}
    entry.update(over)
    return entry


def _write(tmp_path, entries, name="preds.json"):
    p = tmp_path / name
    p.write_text(json.dumps(entries) if not isinstance(entries, str) else entries)
    return p


def _one_line_error(code, err, *needles):
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_good_file_loads_grouped_by_image(tmp_path, voc_root):
    ds = open_dataset(voc_root)
    by_image = load_predictions(_write(tmp_path, [_good(), _good(score=0.5)]), ds, "val")
    assert list(by_image) == [VAL_ID]
    a, b = by_image[VAL_ID]
    assert (a.category, a.score, a.index, b.index) == (0, 0.9, 0, 1)
    assert isinstance(a.segmentation["counts"], str)
    assert load_predictions(_write(tmp_path, []), ds, "val") == {VAL_ID: []}


def _truncated():
    seg = _good()["segmentation"]
    return {**seg, "counts": seg["counts"][:-1] + "P"}  # last group says "more follows"


@pytest.mark.parametrize("entry,needle", [
    (_good(image_id=12345), "entry 1: image_id 12345 is not an image of split 'val'"),
    (_good(image_id=TRAIN_ID), f"image_id {TRAIN_ID} is not an image of split 'val'"),
    (_good(image_id="2007_000002"), "image_id '2007_000002'"),
    (_good(category_id=21), "entry 1: unknown category_id 21 (known: 1..20)"),
    (_good(category_id=0), "unknown category_id 0"),
    (_good(score=float("nan")), "entry 1: score nan is not a finite number"),
    (_good(score="high"), "score 'high'"),
    (_good(score=True), "score True"),
    (_good(bbox=[1, 2, 3]), "bbox [1, 2, 3]"),
    (_good(segmentation=[[1, 1, 5, 1, 5, 5]]), "got a polygon list"),
    (_good(segmentation={"size": [20, 30], "counts": [600]}), "uncompressed RLE"),
    (_good(segmentation=rle.encode(np.ones((10, 30), bool))),
     "entry 1: mask size 10×30 (h×w) differs from image 2007_000002 (20×30)"),
    (_good(segmentation={"size": [20, 30], "counts": "!!!"}), "character outside"),
    (_good(segmentation={"size": [20, 30], "counts": "52"}), "counts covers 7 pixels"),
    (_good(segmentation=_truncated()), "entry 1 (image_id 2007000002): bad RLE segmentation: "
                                       "counts is truncated"),
    ({k: v for k, v in _good().items() if k != "score"}, "entry 1: missing 'score'"),
    ([1, 2], "entry 1: expected an object"),
])
def test_malformed_entry_names_file_and_entry(tmp_path, voc_root, run_cli, entry, needle):
    path = _write(tmp_path, [_good(), entry])
    ds = open_dataset(voc_root)
    with pytest.raises(DataError) as e:
        load_predictions(path, ds, "val")
    assert str(path) in str(e.value) and needle in str(e.value), str(e.value)
    code, _, err = run_cli("evaluate", "--data", voc_root, "--split", "val", "--pred", path)
    _one_line_error(code, err, str(path), needle)


@pytest.mark.parametrize("text,needle", [
    ("{not json", "not valid predictions JSON"),
    ('{"annotations": []}', "expected a JSON list of COCO results, got dict"),
])
def test_unreadable_file(tmp_path, voc_root, run_cli, text, needle):
    path = _write(tmp_path, text)
    code, _, err = run_cli("evaluate", "--data", voc_root, "--pred", path)
    _one_line_error(code, err, str(path), needle)
    code, _, err = run_cli("evaluate", "--data", voc_root, "--pred", tmp_path / "missing.json")
    _one_line_error(code, err, "missing.json", "predictions JSON file not found")


def test_in_memory_predictions_are_checked_too(voc_root):
    ds = open_dataset(voc_root)
    with pytest.raises(DataError, match=r"^<predictions>: entry 0: unknown category_id 99"):
        evaluate_predictions([_good(category_id=99)], ds, "val")
    bytes_counts = _good()
    bytes_counts["segmentation"] = {**bytes_counts["segmentation"],
                                    "counts": bytes_counts["segmentation"]["counts"].encode()}
    assert evaluate_predictions([bytes_counts], ds, "val")["counts"]["predictions"] == 1
    # numpy scalars, as results built from tensors carry them, are numbers too
    np_scalars = _good(image_id=np.int64(VAL_ID), category_id=np.int32(1),
                       score=np.float32(0.5))
    m = evaluate_predictions([np_scalars], ds, "val")
    assert m["mAP50"] == 0.5 and m["per_class"]["aeroplane"]["n_pred"] == 1
    with pytest.raises(DataError, match="score np.True_ is not a finite number"):
        evaluate_predictions([_good(score=np.bool_(True))], ds, "val")


def test_rle_check_accepts_what_pycocotools_writes():
    rng = np.random.default_rng(0)
    masks = [rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.random()
             for _ in range(200)]
    masks += [np.ones((300, 400), bool), np.zeros((300, 400), bool)]
    big = np.zeros((300, 400), bool)
    big[7:290, 3:397] = True  # long first runs, then large negative deltas
    masks += [big, ~big]
    rles = [rle.encode(m) for m in masks]
    assert rle_counts_problems([r["counts"] for r in rles],
                               [tuple(r["size"]) for r in rles]) == [None] * len(rles)
    assert rle_counts_problems([], []) == []


def test_rle_check_problems(monkeypatch):
    good = rle.encode(np.eye(6, dtype=bool))["counts"]
    cases = {
        good: None,
        good[:-1] + "P": "truncated",
        "": "empty",
        "0": "covers 0 pixels",
        good + "1": "covers 43 pixels",
        "é": "character outside",
        "!" + good: "character outside",
        "o" * 6 + "0": "too long",
        "70": "empty run after the first",
        "0" + "9": "covers 9 pixels",
        "2@": "negative run length",
    }
    got = rle_counts_problems(list(cases), [(6, 6)] * len(cases))
    for (counts, want), problem in zip(cases.items(), got):
        if want is None:
            assert problem is None
        else:
            assert problem is not None and want in problem, (counts, problem)
    # Batches split the input; a bad string in the middle is still found.
    monkeypatch.setattr(rle_check, "_BATCH_CHARS", 16)
    many = [good] * 20 + [good[:-1] + "P"] + [good] * 20
    got = rle_counts_problems(many, [(6, 6)] * len(many))
    assert [i for i, p in enumerate(got) if p] == [20]


def test_evaluate_command_table_json_and_plots(tmp_path, voc_root, run_cli):
    ds = open_dataset(voc_root)
    g = ds.ground_truth("val")[VAL_ID]
    preds = [{"image_id": VAL_ID, "category_id": 1 + i.category,
              "segmentation": i.segmentation, "score": 0.9} for i in g.instances]
    path = _write(tmp_path, preds)
    out = tmp_path / "res" / "metrics.json"
    code, stdout, err = run_cli("evaluate", "--data", voc_root, "--split", "val", "--pred", path,
                                "--out", out, "--coco")
    assert code == 0, err
    assert "aeroplane" in stdout and "mean" in stdout and "COCOeval segm" in stdout
    m = json.loads(out.read_text())
    assert m["mAP50"] == 1.0 and m["coco"]["AP50"] == pytest.approx(1.0) and m["split"] == "val"
    assert m["per_class"]["aeroplane"]["AP50"] == 1.0 and m["per_class"]["cat"]["AP50"] is None
    assert m["predictions_file"] == str(path.resolve())
    assert (tmp_path / "res" / "metrics_ap50_by_size.png").stat().st_size > 1000
    assert (tmp_path / "res" / "metrics_ap50_by_count.png").exists()
    assert not [p for p in (tmp_path / "res").iterdir() if p.name.startswith(".")]

    code, stdout, _ = run_cli("evaluate", "--data", voc_root, "--split", "val", "--pred",
                              _write(tmp_path, [], "empty.json"), "--json", "--plots",
                              tmp_path / "plots")
    assert code == 0 and json.loads(stdout)["mAP50"] == 0.0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "ap50_by_count.png", "ap50_by_size.png"]


def test_evaluate_needs_masks(tmp_path, run_cli):
    from PIL import Image

    root = tmp_path / "f"
    (root / "cat").mkdir(parents=True)
    Image.new("RGB", (5, 5)).save(root / "cat" / "a.jpg")
    code, _, err = run_cli("evaluate", "--data", root, "--split", "train", "--pred",
                           _write(tmp_path, []))
    _one_line_error(code, err, "no ground-truth masks")
