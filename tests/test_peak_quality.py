"""Peak recall, precision and count error (wiseseg.classifier.metrics.peak_quality)."""

import numpy as np
import pytest

from wiseseg import rle
from wiseseg.classifier.metrics import peak_quality
from wiseseg.data.dataset import GroundTruth, ImageRecord, Instance


def _record(i, labels, h=20, w=30):
    return ImageRecord(id=i, name=str(i), path=f"/x/{i}.png", height=h, width=w,
                       labels=frozenset(labels))


def _box(y0, y1, x0, x1, h=20, w=30):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return rle.encode(m)


def test_counts_by_hand():
    # image 1: a class-0 object left, a class-1 object right overlapping it at column 10
    recs = [_record(1, [0, 1]), _record(2, [0]), _record(3, [])]
    gts = {1: GroundTruth(1, (Instance(0, _box(2, 12, 0, 11)), Instance(1, _box(2, 12, 10, 20)))),
           2: GroundTruth(2, (Instance(0, _box(0, 5, 0, 5)), Instance(0, _box(10, 15, 10, 15)))),
           3: GroundTruth(3, ())}
    peaks = {1: [{"class": 0, "y": 5, "x": 10},   # in both objects, right class for the left
                 {"class": 0, "y": 5, "x": 3},    # the same object again
                 {"class": 1, "y": 5, "x": 3},    # on the class-0 object: false
                 {"class": 1, "y": 19, "x": 29}],  # background, last pixel: false
             2: [{"class": 0, "y": 12, "x": 12}],  # finds the second object only
             3: [{"class": 0, "y": 0, "x": 0}]}    # a negative image: false
    q = peak_quality(peaks, gts, recs)
    assert q["peaks"] == 6 and q["instances"] == 4
    assert q["peak_precision"] == pytest.approx(3 / 6)
    assert q["peak_recall"] == pytest.approx(2 / 4)
    # (1, class 0): 2 peaks / 1 object; (1, class 1): 2 / 1; (2, class 0): 1 / 2
    assert q["count_mae"] == pytest.approx((1 + 1 + 1) / 3)


def test_matches_decoded_masks_on_random_images():
    rng = np.random.default_rng(0)
    recs, gts, peaks = [], {}, {}
    for i in range(12):
        h, w = int(rng.integers(5, 40)), int(rng.integers(5, 40))
        inst = tuple(Instance(int(rng.integers(0, 3)), rle.encode(
            (rng.random((h, w)) < 0.3).astype(np.uint8))) for _ in range(rng.integers(0, 4)))
        recs.append(_record(i, sorted({x.category for x in inst}), h, w))
        gts[i] = GroundTruth(i, inst)
        peaks[i] = [{"class": int(rng.integers(0, 3)), "y": int(rng.integers(0, h)),
                     "x": int(rng.integers(0, w))} for _ in range(rng.integers(0, 6))]
    good = hits = n_inst = n_peaks = 0
    for r in recs:  # the definition, on decoded masks
        masks = [rle.decode(x.segmentation).astype(bool) for x in gts[r.id].instances]
        cats = [x.category for x in gts[r.id].instances]
        hit = [False] * len(masks)
        for p in peaks[r.id]:
            inside = [m[p["y"], p["x"]] and c == p["class"] for m, c in zip(masks, cats)]
            good += any(inside)
            hit = [a or b for a, b in zip(hit, inside)]
        hits, n_inst, n_peaks = hits + sum(hit), n_inst + len(masks), n_peaks + len(peaks[r.id])
    q = peak_quality(peaks, gts, recs)
    assert q["peaks"] == n_peaks and q["instances"] == n_inst
    assert q["peak_precision"] == pytest.approx(good / n_peaks)
    assert q["peak_recall"] == pytest.approx(hits / n_inst)


def test_peak_outside_the_image_is_an_error():
    recs = [_record(1, [0])]
    gts = {1: GroundTruth(1, (Instance(0, _box(0, 5, 0, 5)),))}
    with pytest.raises(ValueError, match=r"\(20, 0\) is outside the 20×30 image"):
        peak_quality({1: [{"class": 0, "y": 20, "x": 0}]}, gts, recs)
