"""The built-in proposal generator, the Proposals type, mask encoding and quality metrics."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from wiseseg import rle
from wiseseg.errors import ConfigError
from wiseseg.proposals import Proposals, build_proposal_source, roc_auc
from wiseseg.proposals.builtin import QUALITIES, BuiltinSource, edge_map, superpixel_features
from wiseseg.proposals.dedup import common_refinement, suppress_duplicates, unique_rows
from wiseseg.proposals.grouping import Problem, Strategy, group
from wiseseg.proposals.masks import encode_regions, nearest_index
from wiseseg.proposals.objectness import FEATURES, score
from wiseseg.proposals.quality import mask_iou
from wiseseg.proposals.superpixels import describe


def scene(size: int = 96, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """A gradient background with a solid disk, a striped square and a checkered triangle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.stack([60 + 80 * xx / size, 90 + 40 * yy / size, np.full((size, size), 120.0)],
                   axis=-1)
    disk = (yy - 28) ** 2 + (xx - 26) ** 2 <= 14 ** 2
    square = (yy >= 50) & (yy < 82) & (xx >= 12) & (xx < 44)
    tri = (yy >= 40) & (yy < 88) & (xx >= 52 + (88 - yy) // 2) & (xx < 92 - (88 - yy) // 2)
    stripes = ((xx + yy) // 4) % 2 == 0
    checker = ((xx // 5) + (yy // 5)) % 2 == 0
    img[disk] = (220, 40, 40)
    img[square] = np.where(stripes[square][:, None], (30, 30, 200), (240, 220, 40))
    img[tri] = np.where(checker[tri][:, None], (20, 150, 40), (250, 250, 250))
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), [disk, square, tri]


@pytest.fixture(scope="module")
def scene_proposals():
    img, objects = scene()
    return img, objects, BuiltinSource().propose(img)


# ----------------------------------------------------------------------------- Proposals


def test_proposals_sorted_boxes_and_empty():
    a = np.zeros((6, 8), np.uint8)
    a[1:3, 2:5] = 1
    b = np.zeros((6, 8), np.uint8)
    b[4, 7] = 1
    p = Proposals.from_masks([rle.encode(a), rle.encode(b)], [0.2, 0.9], (6, 8))
    assert p.scores.tolist() == pytest.approx([0.9, 0.2])
    assert p.boxes.dtype == np.float32
    assert p.boxes.tolist() == [[7, 4, 8, 5], [2, 1, 5, 3]]  # xyxy, end exclusive
    assert len(p.top(1)) == 1 and p.top(None) is p
    again = Proposals.from_json(p.to_json())
    assert again.masks == p.masks and np.array_equal(again.boxes, p.boxes)

    empty = Proposals.from_masks([], [], (6, 8))
    assert len(empty) == 0 and empty.boxes.shape == (0, 4) and empty.decode().shape == (0, 6, 8)
    with pytest.raises(ValueError, match="descending"):
        Proposals([rle.encode(a), rle.encode(b)], np.zeros((2, 4)), [0.1, 0.5], (6, 8))
    with pytest.raises(ValueError, match="≥ 0"):
        Proposals([rle.encode(a)], np.zeros((1, 4)), [-0.1], (6, 8))


def test_encode_regions_matches_pixelwise_encoding():
    rng = np.random.default_rng(1)
    for _ in range(150):
        h, w = rng.integers(1, 8, 2)
        big_h, big_w = h + rng.integers(0, 10), w + rng.integers(0, 10)
        n_atoms = int(rng.integers(1, 6))
        atoms = rng.integers(0, n_atoms, (h, w))
        member = rng.random((int(rng.integers(1, 4)), n_atoms)) < rng.random()
        up = atoms[nearest_index(big_h, h)][:, nearest_index(big_w, w)]
        assert encode_regions(atoms, member, (big_h, big_w)) == [rle.encode(m[up])
                                                                 for m in member]


def test_grouping_merges_down_to_one_region_per_component():
    labels = np.array([[0, 0, 1], [2, 3, 1], [2, 3, 4]], np.int32)
    sp = describe(labels)
    hist = np.eye(5, 75, dtype=np.float32)
    tex = np.full((5, 240), 1 / 240, np.float32)
    (h,) = group([Problem(sp, hist, tex, Strategy())])
    assert h.member.shape == (9, 5)  # 5 superpixels + 4 merges
    assert h.member[-1].all()
    kids = h.children[5:]
    assert np.all(h.member[5:] == h.member[kids[:, 0]] | h.member[kids[:, 1]])


def test_suppression_matches_plain_greedy_nms():
    rng = np.random.default_rng(3)
    atoms = rng.integers(0, 40, (12, 12))
    area = np.bincount(atoms.ravel(), minlength=40).astype(float)
    area[area == 0] = 1
    member = rng.random((60, 40)) < 0.3
    member[10] = member[3]  # exact duplicates and near-duplicates too
    member[11] = member[3] ^ (np.arange(40) == 5)
    member = member[member.any(axis=1)]
    for t in (0.5, 0.8):
        inter = (member[:, None] & member[None]).astype(float) @ area
        sizes = member.astype(float) @ area
        iou = inter / (sizes[:, None] + sizes[None] - inter)
        kept: list[int] = []
        for i in range(len(member)):
            if all(iou[i, j] < t for j in kept):
                kept.append(i)
        assert suppress_duplicates(member, area, t).tolist() == kept


def test_atoms_and_unique_rows():
    a = np.array([[0, 0, 1], [0, 2, 2]])
    b = np.array([[5, 6, 6], [5, 5, 5]])
    atoms, to_label = common_refinement([a, b])
    assert atoms.max() + 1 == 4  # the pairs (0,5), (0,6), (1,6), (2,5)
    for lab, m in zip((a, b), to_label):
        assert np.array_equal(m[atoms], lab)
    rows = np.array([[1, 0], [0, 1], [1, 0], [0, 0]], bool)
    first, inverse = unique_rows(rows)
    assert first.tolist() == [0, 1, 3] and inverse.tolist() == [0, 1, 0, 2]


@pytest.mark.parametrize("top", [4, 50, 10**7])  # the last takes the sort, not the table
def test_atoms_number_the_label_tuples_in_order(top):
    rng = np.random.default_rng(top)
    maps = [rng.integers(0, top, (9, 11)) for _ in range(3)]
    # atoms are the distinct (label, label, label) tuples, numbered in lexicographic order
    _, want = np.unique(np.stack([m.ravel() for m in maps], 1), axis=0, return_inverse=True)
    atoms, to_label = common_refinement(maps)
    assert atoms.dtype == np.int32 and np.array_equal(atoms.ravel(), want.ravel())
    for lab, m in zip(maps, to_label):
        assert np.array_equal(m[atoms], lab)


# ----------------------------------------------------------------------------- generator


def test_objects_appear_among_the_proposals(scene_proposals):
    img, objects, props = scene_proposals
    assert props.size == img.shape[:2] and 0 < len(props) <= 300
    iou = rle.iou(props.masks, [rle.encode(o) for o in objects])
    assert np.all(iou.max(axis=0) >= 0.85), iou.max(axis=0)
    # Every object is among the best-ranked tenth of the proposals (the learned objectness
    # ranks natural objects; this synthetic scene only checks that it is not upside down).
    assert np.all(iou[:30].max(axis=0) >= 0.85), iou[:30].max(axis=0)
    # Objectness ranks object-like proposals above the rest.
    assert roc_auc(props.scores, iou.max(axis=1) >= 0.5) > 0.6
    assert np.all(props.scores >= 0) and np.all(props.scores <= 1)
    assert np.all(np.diff(props.scores) <= 0)


def test_near_duplicates_removed(scene_proposals):
    _, _, props = scene_proposals
    iou = rle.iou(props.masks, props.masks)
    np.fill_diagonal(iou, 0)
    assert iou.max() < BuiltinSource().config.nms_iou


def test_deterministic(scene_proposals):
    img, _, props = scene_proposals
    again = BuiltinSource().propose(img)
    assert again.masks == props.masks and np.array_equal(again.scores, props.scores)


def test_image_without_structure():
    props = BuiltinSource().propose(np.full((40, 50, 3), 128, np.uint8))
    assert props.size == (40, 50)
    assert len(props) <= 3 and np.all(props.scores >= 0)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1)])
def test_degenerate_sizes(shape):
    props = BuiltinSource().propose(np.full((*shape, 3), 77, np.uint8))
    assert props.size == shape and len(props) >= 1
    assert rle.decode(props.masks[0]).shape == shape


def _peak_memory(img: np.ndarray):
    tracemalloc.start()
    try:
        props = BuiltinSource().propose(img)
        return props, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_large_image_bounded_memory():
    def rectangle(scale: int) -> np.ndarray:
        img = np.full((240 * scale, 320 * scale, 3), 60, np.uint8)
        img[80 * scale:160 * scale, 120 * scale:240 * scale] = (200, 40, 40)
        return img

    _, small_peak = _peak_memory(rectangle(1))
    props, big_peak = _peak_memory(rectangle(10))  # 7.7 megapixels, 100× the pixels
    # The grouping runs on at most work_pixels pixels and masks are run-length coded from
    # the small label map, so memory does not grow with the image.
    assert big_peak < 1.5 * small_peak + 8e6, (small_peak, big_peak)
    assert props.size == (2400, 3200)
    truth = np.zeros((2400, 3200), np.uint8)
    truth[800:1600, 1200:2400] = 1
    assert rle.iou(props.masks[:5], [rle.encode(truth)]).max() > 0.95


def test_settings_validated_and_fingerprinted():
    with pytest.raises(ConfigError):
        BuiltinSource(strategies=(("lab", "XY"),))
    with pytest.raises(ConfigError):
        BuiltinSource(segmentations=(("cmyk", 50),))
    with pytest.raises(ConfigError, match="no setting"):
        build_proposal_source("builtin", colour=3)
    with pytest.raises(ConfigError, match="unknown proposal method"):
        build_proposal_source("sharpmask")
    a, b = BuiltinSource(), build_proposal_source("builtin", top_k=300)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != BuiltinSource(nms_iou=0.7).fingerprint()
    for key, value in [("deep_layer", "c3"), ("min_size", 1e-3), ("work_pixels", 9999),
                       ("quality", "accurate"), ("strategies", (("lab", "BD"),)),
                       ("pool_factor", 5)]:
        assert a.fingerprint() != BuiltinSource(**{key: value}).fingerprint(), key


def test_quality_presets_and_specs():
    fast, accurate = BuiltinSource(), build_proposal_source("builtin:accurate")
    assert fast.config.quality == "fast" and accurate.config.quality == "accurate"
    for key, value in QUALITIES["accurate"].items():
        assert getattr(accurate.config, key) == value
    assert fast.fingerprint() == build_proposal_source("builtin:fast").fingerprint()
    assert fast.fingerprint() != accurate.fingerprint()
    # A setting given beside the quality overrides the preset's value, and is fingerprinted.
    tuned = build_proposal_source("builtin:accurate", top_k=1000, work_pixels=90_000)
    assert tuned.config.work_pixels == 90_000 and tuned.config.min_size == accurate.config.min_size
    assert BuiltinSource(quality="accurate").settings() == accurate.settings()
    with pytest.raises(ConfigError, match="unknown quality"):
        build_proposal_source("builtin:best")
    with pytest.raises(ConfigError, match="disagree"):
        build_proposal_source("builtin:fast", quality="accurate")
    with pytest.raises(ConfigError, match="deep_layer"):
        BuiltinSource(deep_layer="c5")
    with pytest.raises(ConfigError, match="quality"):
        BuiltinSource(quality="slow")


def test_objectness_model_shape_and_range():
    from wiseseg.proposals.objectness_model import MODEL

    assert tuple(MODEL["features"]) == FEATURES
    hidden = len(MODEL["b1"])
    assert len(MODEL["w1"]) == hidden and all(len(r) == len(FEATURES) for r in MODEL["w1"])
    x = np.random.default_rng(0).normal(size=(50, len(FEATURES))).astype(np.float32)
    s = score(x)
    assert s.shape == (50,) and s.dtype == np.float32 and np.all((s >= 0) & (s <= 1))
    with pytest.raises(ValueError, match="features"):
        score(x, {**MODEL, "features": list(FEATURES[::-1])})


def test_edge_map_and_superpixel_features():
    img = np.zeros((20, 30, 3), np.float32)
    img[:, 15:] = 1.0
    e = edge_map(img)
    assert e.shape == (20, 30) and e.max() == pytest.approx(1.0) and e[:, :5].max() < 0.01
    assert np.all(edge_map(np.zeros((4, 4, 3), np.float32)) == 0)
    labels = np.zeros((9, 9), np.int32)
    labels[4, 4] = 1  # one pixel, no 4×4 sample of its own: takes the cell under it
    sp = describe(labels)
    feat = np.arange(3 * 3 * 2, dtype=np.float32).reshape(3, 3, 2)
    f = superpixel_features(sp, feat)
    assert f.shape == (2, 2)
    assert f[1].tolist() == feat[1, 1].tolist()


def test_boundary_similarity_follows_edges():
    # Four superpixels in a row, identical colour; the edge between 1 and 2 is strong, so
    # with the boundary term alone {0, 1} and {2, 3} form before everything merges.
    labels = np.repeat(np.arange(4, dtype=np.int32)[None], 4, axis=0).repeat(3, axis=1)
    edges = np.zeros(labels.shape, np.float32)
    edges[:, 5:7] = 1.0
    sp = describe(labels, edges)
    assert sp.pair_edge.tolist() == pytest.approx([0.0, 4.0, 0.0])
    hist = np.full((4, 75), 1 / 75, np.float32)
    tex = np.full((4, 240), 1 / 240, np.float32)
    (h,) = group([Problem(sp, hist, tex, Strategy(0, 0, 0, 0, boundary=1.0))])
    regions = {tuple(np.flatnonzero(r)) for r in h.member[4:]}
    assert {(0, 1), (2, 3), (0, 1, 2, 3)} == regions


def test_deep_similarity_merges_alike_features():
    labels = np.repeat(np.arange(4, dtype=np.int32)[None], 4, axis=0).repeat(3, axis=1)
    sp = describe(labels)
    hist = np.full((4, 75), 1 / 75, np.float32)
    tex = np.full((4, 240), 1 / 240, np.float32)
    feats = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]], np.float32)
    (h,) = group([Problem(sp, hist, tex, Strategy(0, 0, 0, 0, deep=1.0), feats)])
    assert {tuple(np.flatnonzero(r)) for r in h.member[4:]} == {(0, 1), (2, 3), (0, 1, 2, 3)}


def test_grouping_ends_when_every_similarity_ties():
    # A ring of equal similarities: per-region tie breaking could leave a cycle a → b → c → a
    # without a mutual pair; the total order on edges always merges, and the loop ends.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 30, (24, 24)).astype(np.int32)
    _, labels = np.unique(labels, return_inverse=True)
    sp = describe(labels.reshape(24, 24).astype(np.int32))
    hist = np.full((sp.n, 75), 1 / 75, np.float32)
    tex = np.full((sp.n, 240), 1 / 240, np.float32)
    (h,) = group([Problem(sp, hist, tex, Strategy(1, 1, 0, 0))])
    assert h.member[-1].all() and len(h.member) == 2 * sp.n - 1


# ----------------------------------------------------------------------------- metrics


def test_roc_auc_rank_formula():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert roc_auc([1, 1, 1], [True, False, True]) == pytest.approx(0.5)  # ties count half
    assert roc_auc([0.3, 0.2], [True, True]) is None


def test_mask_iou_removes_ignore_pixels():
    gt = np.zeros((10, 10), np.uint8)
    gt[2:6, 2:6] = 1
    prop = np.zeros((10, 10), np.uint8)
    prop[2:6, 2:8] = 1  # 8 extra pixels, all in the ignore region
    void = np.zeros((10, 10), np.uint8)
    void[:, 6:] = 1
    plain = mask_iou([rle.encode(prop)], [rle.encode(gt)], None)
    assert plain[0, 0] == pytest.approx(16 / 24)
    assert mask_iou([rle.encode(prop)], [rle.encode(gt)], rle.encode(void))[0, 0] == 1.0
    # Ground truth that overlaps its own ignore region loses those pixels too.
    gt2 = gt.copy()
    gt2[2:6, 6] = 1
    got = mask_iou([rle.encode(prop)], [rle.encode(gt2)], rle.encode(void))[0, 0]
    assert got == pytest.approx(1.0)
