"""PRM's instance retrieval on hand-made maps: the proposal that matches the response beats a
larger one holding the same mass; the background is PRM's min–max scaled one; the constants
mean the same at any resolution; zero peaks and zero proposals."""

from __future__ import annotations

import numpy as np
import pytest

from wiseseg import rle
from wiseseg.inference.prm_baseline import (
    PRM_SIDE,
    RetrievalSettings,
    background,
    contours,
    retrieve,
)
from wiseseg.models.peak_ops import Peak


def _box(size, y0, y1, x0, x1):
    m = np.zeros(size, bool)
    m[y0:y1, x0:x1] = True
    return m


def _scene(size=(60, 80)):
    """One object (rows 20–40, cols 30–50) with its response inside it, a CAM that is high
    on it, and two proposals: the object and a much larger box around it."""
    obj = _box(size, 20, 40, 30, 50)
    prm = obj.astype(np.float32)
    prm /= prm.sum()
    cam = np.where(obj, 5.0, -2.0).astype(np.float32)[None]
    big = _box(size, 5, 55, 10, 75)
    return obj, prm, cam, big


def test_matching_proposal_beats_a_larger_one_with_the_same_mass():
    size = (60, 80)
    obj, prm, cam, big = _scene(size)
    peak = Peak(0, 30, 40, 3.0)
    # the larger proposal comes first (higher objectness) and holds all of the response
    out = retrieve(prm[None], [peak], cam, [rle.encode(big), rle.encode(obj)], size)
    assert len(out) == 1 and out[0]["category"] == 0
    assert np.array_equal(rle.decode(out[0]["segmentation"]), obj)
    assert out[0]["score"] == 3.0  # the peak's CAM value is the confidence by default
    s = RetrievalSettings()
    inner = s.balance * 1.0
    assert out[0]["retrieval"] == pytest.approx(inner + float(
        prm[contours(obj[None], s.contour_side(size))[0]].sum()), abs=1e-6)
    # the larger box scores the same inner mass, no contour mass, and the penalty of its
    # background pixels
    big_score = s.balance - s.image_penalty() / (size[0] * size[1]) * float(
        (big & ~obj).sum())
    assert out[0]["retrieval"] > big_score
    by_class = retrieve(prm[None], [peak], cam, [rle.encode(obj)], size,
                        RetrievalSettings(score="class"), class_probs=[0.7])
    assert by_class[0]["score"] == pytest.approx(0.7)


def test_background_is_min_max_scaled():
    cam = np.array([[10.0, 10.0, 10.0, 40.0]])
    # raw: mean 17.5 → 0.95·mean = 16.6: the three 10s are background either way, but a
    # constant offset must not matter after min–max scaling
    assert background(cam, 0.95).tolist() == background(cam + 1000.0, 0.95).tolist()
    assert background(cam, 0.95).tolist() == [[True, True, True, False]]
    assert not background(np.zeros((2, 2)), 0.95).any()


def test_constants_mean_the_same_at_any_resolution():
    s = RetrievalSettings()
    assert s.image_penalty() == pytest.approx(1e-5 * PRM_SIDE**2)
    assert s.contour_side((448, 448)) == 5
    assert s.contour_side((896, 896)) == 11  # 10, made odd
    assert s.contour_side((64, 64)) == 3  # never thinner than a 3-pixel square


def test_contour_skips_the_image_border():
    m = _box((10, 10), 0, 5, 0, 10)  # touches the top, left and right borders
    band = contours(m[None], 3)[0]
    assert not band[0].any()  # no outline along the image border (OpenCV's rule)
    assert band[4:6].any()


@pytest.mark.parametrize("width", [3, 5, 7, 4])
def test_contour_equals_scipy_morphology(width):
    """The running max / min filters give the pixels of binary dilation minus erosion with
    the square (even squares go to scipy itself)."""
    from scipy import ndimage

    rng = np.random.default_rng(width)
    masks = rng.random((6, 23, 31)) < 0.3
    masks[0] = False
    masks[1] = True
    masks[2, 5:15, 0:20] = True
    st = np.ones((1, width, width), bool)
    want = ndimage.binary_dilation(masks, st) & ~ndimage.binary_erosion(masks, st,
                                                                        border_value=1)
    got = contours(masks, width)
    assert got.dtype == bool and np.array_equal(got, want)


def test_zero_peaks_and_zero_proposals():
    size = (60, 80)
    obj, prm, cam, big = _scene(size)
    peak = Peak(0, 30, 40, 3.0)
    assert retrieve(np.zeros((0, *size)), [], cam, [rle.encode(obj)], size) == []
    assert retrieve(prm[None], [peak], cam, [], size) == []
    # every proposal outside the area limits: nothing to retrieve
    whole = np.ones(size, bool)
    assert retrieve(prm[None], [peak], cam, [rle.encode(whole)], size) == []


def test_nms_keeps_the_better_of_two_peaks_on_one_object():
    size = (60, 80)
    obj, prm, cam, big = _scene(size)
    peaks = [Peak(0, 30, 40, 3.0), Peak(0, 25, 45, 2.0)]
    out = retrieve(np.stack([prm, prm]), peaks, cam, [rle.encode(obj)], size)
    assert len(out) == 1
    with pytest.raises(ValueError, match="score"):
        RetrievalSettings(score="logit")


def test_workers_give_the_results_of_one_process(tiny_run, monkeypatch):
    """prm.workers > 1: the images are shared among spawned single-threaded processes; the
    results are those of one process, in the same order."""
    import json

    import wiseseg.inference.prm_baseline as prm
    from wiseseg import api
    from wiseseg.classifier.model_io import load_classifier
    from wiseseg.config import load_config
    from wiseseg.proposals import ProposalStore

    cfg = load_config(tiny_run / "config.yaml")
    assert cfg["prm"]["workers"] == 2  # the run's own PRM stage went through the pool too
    assert json.loads((tiny_run / "prm" / "prm.json").read_text()) is not None
    ds = api.open_dataset(cfg["data"]["spec"], progress=False)
    path = tiny_run / "classifier" / "model.pt"
    model, ccfg, _ = load_classifier(path)
    store = ProposalStore.open(tiny_run / "proposals")
    # every class predicted and every local maximum a peak: every image has peaks to
    # backpropagate (the two-step model's CAMs are weak)
    s = prm.RetrievalSettings.from_config({**cfg["prm"], "class_threshold": 0.0})
    peak_cfg = {**cfg["peaks"], "min_score": None, "relative": 0.0}
    args = (ds.records("val"), store, ccfg["input_size"], peak_cfg, ds.category_ids, s)
    one = prm.prm_baseline(model, *args, progress=False)
    monkeypatch.setattr(prm, "_PRM_CHUNK", 1)  # four tasks for two processes
    two = prm.prm_baseline(model, *args, progress=False, workers=2, model_path=path)
    assert len(one) >= len(ds.records("val"))
    assert [(r["image_id"], r["category_id"], r["segmentation"]) for r in two] == \
        [(r["image_id"], r["category_id"], r["segmentation"]) for r in one]
    assert np.allclose([r["score"] for r in two], [r["score"] for r in one], atol=1e-5)
