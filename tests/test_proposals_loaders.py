"""Loaders of precomputed proposals (MCG/SCG .mat, COB .mat, SharpMask-style JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from wiseseg import rle
from wiseseg.data.dataset import ImageRecord
from wiseseg.errors import ConfigError, DataError
from wiseseg.proposals import build_proposal_source
from wiseseg.proposals.loaders import map_scores

H, W = 6, 8
IMAGE = np.zeros((H, W, 3), np.uint8)
# Superpixel ids 1..3 (MATLAB's 1-based): left block, top right, bottom right.
SUPERPIXELS = np.ones((H, W), np.uint16)
SUPERPIXELS[:3, 4:] = 2
SUPERPIXELS[3:, 4:] = 3


def record(name: str = "img1") -> ImageRecord:
    return ImageRecord(id=1, name=name, path=Path("/nonexistent.jpg"), height=H, width=W,
                       labels=frozenset())


def cell(items: list, column: bool = True) -> np.ndarray:
    """A MATLAB cell array (N×1 or 1×N object array) as scipy.io.savemat writes it."""
    out = np.empty((len(items), 1) if column else (1, len(items)), dtype=object)
    for i, it in enumerate(items):
        out.flat[i] = it
    return out


def sigmoid(x: float) -> float:
    return 1 / (1 + np.exp(-x))


def write_mcg(path: Path, labels, scores, bboxes=None, superpixels=SUPERPIXELS,
              column=True) -> None:
    data = {"superpixels": superpixels,
            "labels": cell([np.asarray(lab, np.float64).reshape(1, -1) for lab in labels],
                           column),
            "scores": np.asarray(scores, np.float64).reshape(-1, 1)}
    if bboxes is not None:
        data["bboxes"] = np.asarray(bboxes, np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), data)


# MCG boxes are [y1 x1 y2 x2], 1-based and inclusive.
MCG_BOXES = [[1, 1, 6, 4], [1, 5, 6, 8], [1, 1, 6, 8]]


@pytest.mark.parametrize("column", [True, False])
def test_mcg_one_based_ids_cells_and_negative_scores(tmp_path, column):
    write_mcg(tmp_path / "img1.mat", [[1], [2, 3], [1, 3]], [-1.5, 2.0, 0.3], MCG_BOXES,
              column=column)
    props = build_proposal_source(f"mcg:{tmp_path}").propose(IMAGE, record())
    assert len(props) == 3
    assert props.scores.tolist() == pytest.approx([sigmoid(2.0), sigmoid(0.3), sigmoid(-1.5)])
    masks = props.decode()
    assert np.array_equal(masks[0], np.isin(SUPERPIXELS, [2, 3]))
    assert np.array_equal(masks[1], np.isin(SUPERPIXELS, [1, 3]))
    assert np.array_equal(masks[2], SUPERPIXELS == 1)
    assert props.boxes.tolist() == [[4, 0, 8, 6], [0, 0, 8, 6], [0, 0, 4, 6]]


def test_mcg_top_k_and_score_maps(tmp_path):
    write_mcg(tmp_path / "img1.mat", [[1], [2, 3], [1, 3]], [-1.5, 2.0, 0.3])
    top = build_proposal_source(f"mcg:{tmp_path}", top_k=2, score_map="minmax")
    props = top.propose(IMAGE, record())
    assert len(props) == 2 and props.scores.tolist() == pytest.approx([1.0, 1.8 / 3.5])
    with pytest.raises(DataError, match="negative score"):
        build_proposal_source(f"mcg:{tmp_path}", score_map="identity").propose(IMAGE, record())


def test_mcg_bad_files(tmp_path):
    src = build_proposal_source(f"mcg:{tmp_path}")
    with pytest.raises(DataError, match="img1.mat"):
        src.propose(IMAGE, record())  # missing file, named
    write_mcg(tmp_path / "img1.mat", [[0, 1]], [1.0])
    with pytest.raises(DataError, match="1-based"):
        src.propose(IMAGE, record())
    write_mcg(tmp_path / "img1.mat", [[1]], [1.0], superpixels=SUPERPIXELS.T.copy())
    with pytest.raises(DataError, match="transposed"):
        src.propose(IMAGE, record())
    write_mcg(tmp_path / "img1.mat", [[1], [2, 3], [1, 3]], [1, 2, 3],
              [[0, 0, 5, 3], [0, 4, 5, 7], [0, 0, 5, 7]])  # 0-based boxes
    with pytest.raises(DataError, match="bboxes"):
        src.propose(IMAGE, record())
    write_mcg(tmp_path / "img1.mat", [[1], [2]], [1.0])
    with pytest.raises(DataError, match="2 labels but 1 scores"):
        src.propose(IMAGE, record())
    (tmp_path / "img1.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DataError, match="img1.mat"):
        src.propose(IMAGE, record())


def test_mcg_sub_paths_are_joined_safely(tmp_path):
    write_mcg(tmp_path / "cat" / "a.mat", [[1]], [0.5])
    src = build_proposal_source(f"mcg:{tmp_path}")
    assert len(src.propose(IMAGE, record("cat/a"))) == 1
    with pytest.raises(DataError, match="escapes"):
        src.propose(IMAGE, record("../a"))


def test_cob_cells_with_and_without_scores(tmp_path):
    masks = [SUPERPIXELS == 1, SUPERPIXELS >= 2, SUPERPIXELS == 3]
    savemat(str(tmp_path / "img1.mat"),
            {"maskmat": cell([m for m in masks]), "scores": np.array([[-0.5], [1.5], [0.0]])})
    props = build_proposal_source(f"cob:{tmp_path}").propose(IMAGE, record())
    assert props.scores.tolist() == pytest.approx([sigmoid(1.5), sigmoid(0.0), sigmoid(-0.5)])
    assert np.array_equal(props.decode(), np.stack([masks[1], masks[2], masks[0]]))

    savemat(str(tmp_path / "img1.mat"), {"maskmat": cell(masks)})
    props = build_proposal_source(f"cob:{tmp_path}").propose(IMAGE, record())
    assert props.scores.tolist() == pytest.approx([1.0, 2 / 3, 1 / 3])  # file order is rank
    assert np.array_equal(props.decode(), np.stack(masks))

    savemat(str(tmp_path / "img1.mat"), {"maskmat": cell([np.ones((W, H), bool)])})
    with pytest.raises(DataError, match="maskmat"):
        build_proposal_source(f"cob:{tmp_path}").propose(IMAGE, record())
    savemat(str(tmp_path / "img1.mat"), {"other": np.zeros(2)})
    with pytest.raises(DataError, match="maskmat"):
        build_proposal_source(f"cob:{tmp_path}").propose(IMAGE, record())


def write_json(path: Path, items: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items))


def test_json_sharpmask_format(tmp_path):
    a, b = rle.encode(SUPERPIXELS == 1), rle.encode(SUPERPIXELS == 2)
    write_json(tmp_path / "img1.jpg.json",  # the official WISE release's naming
               [{"segmentation": a, "score": 0.25}, {"segmentation": b, "score": 0.75}])
    props = build_proposal_source(f"json:{tmp_path}").propose(IMAGE, record())
    assert props.scores.tolist() == pytest.approx([0.75, 0.25])
    assert props.masks == [b, a]

    write_json(tmp_path / "img1.json", [{"segmentation": a, "score": -2.0}])
    with pytest.raises(DataError, match="negative score"):
        build_proposal_source(f"json:{tmp_path}").propose(IMAGE, record())
    logits = build_proposal_source(f"json:{tmp_path}", score_map="sigmoid")
    assert logits.propose(IMAGE, record()).scores.tolist() == pytest.approx([sigmoid(-2.0)])

    write_json(tmp_path / "img1.json",
               [{"segmentation": rle.encode(np.ones((W, H), bool)), "score": 1.0}])
    with pytest.raises(DataError, match="is 8×6 but the image is 6×8"):
        build_proposal_source(f"json:{tmp_path}").propose(IMAGE, record())
    write_json(tmp_path / "img1.json", [{"score": 1.0}])
    with pytest.raises(DataError, match="item 0"):
        build_proposal_source(f"json:{tmp_path}").propose(IMAGE, record())
    (tmp_path / "img1.json").write_text("{broken")
    with pytest.raises(DataError, match="unreadable JSON"):
        build_proposal_source(f"json:{tmp_path}").propose(IMAGE, record())


def test_empty_proposal_files(tmp_path):
    write_json(tmp_path / "img1.json", [])
    props = build_proposal_source(f"json:{tmp_path}").propose(IMAGE, record())
    assert len(props) == 0 and props.size == (H, W)
    (tmp_path / "m").mkdir()
    savemat(str(tmp_path / "m" / "img1.mat"), {"superpixels": SUPERPIXELS,
                                               "labels": np.empty((0, 0), object),
                                               "scores": np.zeros((0, 1))})
    assert len(build_proposal_source(f"mcg:{tmp_path / 'm'}").propose(IMAGE, record())) == 0


def test_score_maps():
    raw = np.array([-3.0, 0.0, 5.0])
    assert map_scores(raw, "sigmoid", "f").tolist() == pytest.approx(
        [sigmoid(-3), 0.5, sigmoid(5)])
    assert map_scores(raw, "minmax", "f").tolist() == pytest.approx([0, 3 / 8, 1])
    assert map_scores(raw, "rank", "f").tolist() == pytest.approx([1 / 3, 2 / 3, 1])
    assert map_scores(np.array([1e4, -1e4]), "sigmoid", "f").tolist() == [1.0, 0.0]
    with pytest.raises(DataError, match="NaN"):
        map_scores(np.array([np.nan]), "sigmoid", "f")


def test_registry_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        build_proposal_source(f"mcg:{tmp_path / 'missing'}")
    with pytest.raises(ConfigError, match="accepted"):
        build_proposal_source("mcg:")
    with pytest.raises(ConfigError, match="score_map"):
        build_proposal_source(f"json:{tmp_path}", score_map="softmax")
    with pytest.raises(ConfigError, match="no setting"):
        build_proposal_source(f"cob:{tmp_path}", nms_iou=0.5)


@pytest.mark.parametrize("score,size,needle", [
    (float("nan"), (32, 32), "scores contain NaN or infinite values"),
    (float("inf"), (32, 32), "scores contain NaN or infinite values"),
    (-0.25, (32, 32), "negative score -0.25"),
    (0.5, (32, 31), "item 0's mask is 32×31 but the image is 32×32"),
])
def test_bad_proposal_files_are_one_line_cli_errors(tmp_path, run_cli, score, size, needle):
    from wiseseg.data import open_dataset

    spec = "shapes:train=2,val=2,size=32"
    records = open_dataset(spec, progress=False).records("val")
    good = [{"segmentation": rle.encode(np.ones((32, 32), np.uint8)), "score": 0.9}]
    for r in records:
        write_json(tmp_path / "json" / f"{r.name}.json", good)
    bad = tmp_path / "json" / f"{records[1].name}.json"
    write_json(bad, [{"segmentation": rle.encode(np.ones(size, np.uint8)), "score": score}])
    code, _, err = run_cli("proposals", "--data", spec, "--out", tmp_path / "out", "-q",
                           "--method", f"json:{tmp_path / 'json'}", "--workers", "1")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {bad}: ") and needle in err, err
