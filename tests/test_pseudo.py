"""Pseudo masks: candidates on a hand-made image, Eq. 1 frequencies, the duplicate rule,
the COCO file, re-drawing per use."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from wiseseg import rle
from wiseseg.data.dataset import ImageRecord, WeakSplit
from wiseseg.pseudo.labels import read_pseudo, to_coco, write_pseudo
from wiseseg.pseudo.sampling import (
    Candidate,
    CandidateStats,
    PseudoImage,
    PseudoInstance,
    build_candidates,
    draw_instances,
    eq1_probabilities,
    fix_draws,
)

H, W = 40, 60


def _box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return rle.encode(m)


# Proposals: two around the left object, one around the right, one tiny, one nearly the image.
PROPS = [_box(5, 20, 5, 20), _box(3, 25, 3, 25), _box(10, 30, 35, 55), _box(0, 2, 0, 2),
         _box(0, 40, 0, 58)]
SCORES = np.array([0.6, 0.2, 0.9, 0.99, 0.95])


def _peaks():
    return [{"class": 0, "y": 10, "x": 10, "score": 2.0},   # inside proposals 0 and 1
            {"class": 1, "y": 20, "x": 45, "score": 1.5},   # inside proposal 2
            {"class": 0, "y": 35, "x": 30, "score": 1.0},   # inside no kept proposal
            {"class": 2, "y": 12, "x": 12, "score": 3.0}]   # class absent from the label


def test_candidates_on_a_hand_made_image():
    st = CandidateStats()
    img = build_candidates(7, (H, W), _peaks(), labels={0, 1}, proposal_masks=PROPS,
                           proposal_scores=SCORES, min_area_px=16, max_area_frac=0.9,
                           stats=st)
    assert [i.category for i in img.instances] == [0, 1]
    left, right = img.instances
    assert [c.score for c in left.candidates] == [0.6, 0.2]  # sorted by objectness
    assert left.candidates[0].segmentation is PROPS[0]
    assert [c.segmentation for c in right.candidates] == [PROPS[2]]
    assert st.as_dict() == {"peaks": 4, "dropped_absent_class": 1, "without_candidate": 1}
    assert st.without_candidate[0]["y"] == 35  # the lost peak is reported, not dropped silently


def test_prm_candidates_join_the_containing_ones():
    """``prm_candidates`` adds the best proposals by retrieval value that do not contain the
    peak; a peak no proposal contains gets candidates that way (a ring's peak in its hole)."""
    nan = float("nan")
    retrieval = [np.array([0.5, 0.4, 0.9, nan, 0.1]),   # peak 0: proposal 2 is the best other
                 np.array([0.2, 0.3, 0.8, nan, 0.1]),   # peak 1: proposal 1 is the best other
                 np.array([0.7, 0.1, 0.2, nan, 0.0]),   # peak 2 (contained by none): 0
                 np.array([nan] * 5)]
    st = CandidateStats()
    img = build_candidates(7, (H, W), _peaks(), labels={0, 1}, proposal_masks=PROPS,
                           proposal_scores=SCORES, min_area_px=16, max_area_frac=0.9,
                           stats=st, retrieval=retrieval, prm_candidates=1)
    left, right, lost = img.instances
    assert [c.segmentation for c in left.candidates] == [PROPS[2], PROPS[0], PROPS[1]]
    assert [c.segmentation for c in right.candidates] == [PROPS[2], PROPS[1]]
    assert [c.segmentation for c in lost.candidates] == [PROPS[0]]
    assert st.as_dict()["without_candidate"] == 0
    # the paper's rule: nothing added
    plain = build_candidates(7, (H, W), _peaks(), labels={0, 1}, proposal_masks=PROPS,
                             proposal_scores=SCORES, min_area_px=16, max_area_frac=0.9,
                             retrieval=retrieval, prm_candidates=0)
    assert [len(i.candidates) for i in plain.instances] == [2, 1]


def test_no_peaks_or_no_proposals():
    assert build_candidates(1, (H, W), [], {0}, PROPS, SCORES).instances == []
    st = CandidateStats()
    img = build_candidates(1, (H, W), _peaks()[:1], {0}, [], np.zeros(0), stats=st)
    assert img.instances == [] and st.as_dict()["without_candidate"] == 1


def test_eq1_probabilities():
    assert eq1_probabilities(np.array([1.0, 3.0])).tolist() == [0.25, 0.75]
    assert eq1_probabilities(np.zeros(4)).tolist() == [0.25] * 4
    assert eq1_probabilities(np.zeros(0)).size == 0
    with pytest.raises(ValueError):
        eq1_probabilities(np.array([1.0, -0.5]))


def test_eq1_frequencies_chi_square():
    """Over many draws each candidate is picked with frequency b_k / Σ b_j."""
    scores = [0.5, 0.3, 0.15, 0.05]
    masks = [_box(0, 10 + 5 * k, 0, 10 + 5 * k) for k in range(4)]
    img = PseudoImage(1, H, W, [PseudoInstance(0, (5, 5, 1.0),
                                               [Candidate(m, s) for m, s in zip(masks, scores)])])
    rng = np.random.default_rng(0)
    n = 4000
    counts = np.bincount([draw_instances(img, rng)[0].candidate for _ in range(n)], minlength=4)
    expected = np.array(scores) / sum(scores) * n
    _, p = stats.chisquare(counts, expected)
    assert p > 0.001, (counts, expected)
    # argmax always takes the best; a uniform sampler would fail the same test
    assert {draw_instances(img, rng, mode="argmax")[0].candidate for _ in range(20)} == {0}
    _, p_uniform = stats.chisquare(counts, np.full(4, n / 4))
    assert p_uniform < 1e-6


def test_duplicate_rule_keeps_the_stronger_peak():
    same = _box(5, 20, 5, 20)
    near = _box(5, 20, 5, 21)  # IoU 15/16 with `same`
    img = PseudoImage(1, H, W, [
        PseudoInstance(1, (10, 10, 3.0), [Candidate(same, 1.0)]),
        PseudoInstance(0, (12, 12, 1.0), [Candidate(near, 1.0)]),
        PseudoInstance(0, (20, 45, 0.5), [Candidate(PROPS[2], 1.0)]),
    ])
    drawn = draw_instances(img, np.random.default_rng(0), mode="argmax", dup_iou=0.8)
    assert [(d.instance, d.category) for d in drawn] == [(0, 1), (2, 0)]
    drawn = draw_instances(img, np.random.default_rng(0), mode="argmax", dup_iou=0.99)
    assert len(drawn) == 3


def test_modes_redraw_and_fixed():
    cands = [Candidate(_box(0, 10 + k, 0, 10 + k), 1.0) for k in range(10)]
    img = PseudoImage(3, H, W, [PseudoInstance(0, (2, 2, 1.0), cands)])
    rng = np.random.default_rng(1)
    picks = {draw_instances(img, rng, dup_iou=1.1)[0].candidate for _ in range(50)}
    assert len(picks) > 5  # re-drawn on every use
    fix_draws([img], seed=4)
    fixed = {draw_instances(img, rng, mode="fixed")[0].candidate for _ in range(20)}
    assert fixed == {img.instances[0].fixed}
    with pytest.raises(ValueError, match="mode"):
        draw_instances(img, rng, mode="best")


def test_coco_file_roundtrip_and_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    rec = ImageRecord(7, "a", tmp_path / "a.jpg", H, W, frozenset({0, 1}))
    split = WeakSplit("train", ("cat", "dog", "cow"), (rec,))
    st = CandidateStats()
    img = build_candidates(7, (H, W), _peaks(), rec.labels, PROPS, SCORES, stats=st)
    coco = to_coco([img], split, [1, 2, 3], st, {"dup_iou": 0.8})
    path = write_pseudo(tmp_path / "pseudo.json", coco)
    api = COCO(str(path))
    assert len(api.getAnnIds()) == 2 and api.loadCats([1])[0]["name"] == "cat"
    ann = api.loadAnns(api.getAnnIds(catIds=[1]))[0]
    assert np.array_equal(api.annToMask(ann).astype(bool), rle.decode(PROPS[0]))  # arg-max
    assert len(ann["candidates"]) == 2 and ann["peak"] == {"y": 10, "x": 10, "score": 2.0}
    assert coco["wiseseg"]["without_candidate"] == 1
    back = read_pseudo(path, split, [1, 2, 3])[7]
    assert [(i.category, len(i.candidates)) for i in back.instances] == [(0, 2), (1, 1)]
    assert back.instances[0].candidates[0].score == 0.6


def test_cam_agreement_is_the_iou_with_the_cam_region():
    from wiseseg.pseudo.sampling import cam_agreement

    cam = np.zeros((H, W), np.float32)
    cam[5:20, 5:20] = 1.0       # the class is here
    cam[10, 10] = 2.0           # the peak
    masks = rle.decode_many([PROPS[0], PROPS[1]], (H, W)).astype(bool)
    # region {cam ≥ 0.3 × 2.0} = the 15×15 square = proposal 0; proposal 1 is 22×22
    got = cam_agreement(masks, cam, 10, 10, 0.3)
    np.testing.assert_allclose(got, [1.0, 225 / 484])
    assert cam_agreement(masks, cam, 10, 10, 0.6).tolist() == [1 / 225, 1 / 484]
    assert cam_agreement(masks, -cam, 10, 10, 0.3).tolist() == [0.0, 0.0]  # no activation
    assert cam_agreement(np.zeros((0, H, W), bool), cam, 10, 10, 0.3).shape == (0,)
    with pytest.raises(ValueError, match="CAM of"):
        cam_agreement(masks, cam[:10], 10, 10, 0.3)


def test_cam_overlap_reorders_and_reweighs_the_candidates():
    # the CAM covers the larger proposal 1, whose objectness (0.2) is below proposal 0's (0.6)
    cam = np.zeros((H, W), np.float32)
    cam[3:25, 3:25] = 1.0
    peaks = [{"class": 0, "y": 10, "x": 10, "score": 2.0}]
    kw = dict(labels={0}, proposal_masks=PROPS, proposal_scores=SCORES, min_area_px=16,
              max_area_frac=0.9)
    plain = build_candidates(1, (H, W), peaks, **kw).instances[0].candidates
    assert [c.segmentation for c in plain] == [PROPS[0], PROPS[1]]
    weighted = build_candidates(1, (H, W), peaks, cams={0: cam}, cam_overlap=2.0,
                                cam_threshold=0.3, **kw).instances[0].candidates
    assert [c.segmentation for c in weighted] == [PROPS[1], PROPS[0]]
    np.testing.assert_allclose([c.score for c in weighted], [0.2, 0.6 * (225 / 484) ** 2])
    with pytest.raises(ValueError, match="CAM of class 0"):
        build_candidates(1, (H, W), peaks, cam_overlap=2.0, **kw)
    with pytest.raises(ValueError, match="cam_overlap"):
        build_candidates(1, (H, W), peaks, cams={0: cam}, cam_overlap=-1.0, **kw)


def test_cam_overlap_without_activation_falls_back_to_objectness():
    peaks = [{"class": 0, "y": 10, "x": 10, "score": 2.0}]
    img = build_candidates(1, (H, W), peaks, labels={0}, proposal_masks=PROPS,
                           proposal_scores=SCORES, min_area_px=16, max_area_frac=0.9,
                           cams={0: np.zeros((H, W), np.float32)}, cam_overlap=2.0)
    cands = img.instances[0].candidates
    assert [c.segmentation for c in cands] == [PROPS[0], PROPS[1]]  # objectness order
    assert [c.score for c in cands] == [0.0, 0.0]  # Eq. 1 is then uniform


def test_cam_overlap_also_weighs_prm_candidates():
    """An extra candidate by PRM retrieval (not containing the peak) is weighed by the same
    CAM region, not left at weight 0 (which Eq. 1 would never draw)."""
    nan = float("nan")
    retrieval = [np.array([0.5, 0.4, 0.9, nan, 0.1]), np.array([0.2, 0.3, 0.8, nan, 0.1]),
                 np.array([0.7, 0.1, 0.2, nan, 0.0]), np.array([nan] * 5)]
    cam = np.ones((H, W), np.float32)  # the region is the whole image: agreement = area share
    img = build_candidates(7, (H, W), _peaks(), labels={0, 1}, proposal_masks=PROPS,
                           proposal_scores=SCORES, min_area_px=16, max_area_frac=0.9,
                           retrieval=retrieval, prm_candidates=1, cams={0: cam, 1: cam},
                           cam_overlap=1.0)
    left = img.instances[0]
    assert {c.segmentation["counts"] for c in left.candidates} == \
        {PROPS[i]["counts"] for i in (0, 1, 2)}
    areas = {PROPS[0]["counts"]: 225, PROPS[1]["counts"]: 484, PROPS[2]["counts"]: 400}
    for c, b in zip(left.candidates, [c.score for c in left.candidates]):
        obj = SCORES[[p["counts"] for p in PROPS].index(c.segmentation["counts"])]
        assert b == pytest.approx(obj * areas[c.segmentation["counts"]] / (H * W))


def test_candidates_on_rles_equal_the_dense_computation():
    # build_candidates finds the containing proposals and their CAM agreement on the RLEs;
    # the same from decoded masks (cam_agreement) must give the same order and weights
    from wiseseg.pseudo.sampling import cam_agreement

    rng = np.random.default_rng(3)
    h, w = 40, 50
    masks = np.zeros((60, h, w), bool)
    for k in range(60):
        y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        masks[k, y0:y0 + rng.integers(4, h), x0:x0 + rng.integers(4, w)] = True
    props, scores = rle.encode_many(masks), rng.random(60)
    yy, xx = np.mgrid[:h, :w]
    cam = np.exp(-((yy - 20) ** 2 + (xx - 25) ** 2) / 200.0).astype(np.float32)
    peaks = [{"class": 0, "y": 20, "x": 25, "score": 3.0},
             {"class": 0, "y": 5, "x": 40, "score": 1.0}]
    img = build_candidates(1, (h, w), peaks, {0}, props, scores, min_area_px=1,
                           max_area_frac=1.0, cam_overlap=2.0, cam_threshold=0.3,
                           cams={0: cam})
    assert [len(i.candidates) > 3 for i in img.instances] == [True, True]
    for inst, p in zip(img.instances, peaks):
        inside = np.nonzero(masks[:, p["y"], p["x"]])[0]
        weight = scores[inside] * cam_agreement(masks[inside], cam, p["y"], p["x"], 0.3) ** 2
        order = inside[np.lexsort((-scores[inside], -weight))][:100]
        assert [c.segmentation for c in inst.candidates] == [props[i] for i in order]
        np.testing.assert_allclose([c.score for c in inst.candidates],
                                   weight[np.lexsort((-scores[inside], -weight))][:100])
