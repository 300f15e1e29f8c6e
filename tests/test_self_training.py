"""Self-training's relabelling (wiseseg.pseudo.self_training): which predictions become
labels, which earlier pseudo masks stay, and which images are relabelled."""

from pathlib import Path

import numpy as np
import pytest

from wiseseg import rle
from wiseseg.data.dataset import ImageRecord
from wiseseg.pseudo.sampling import Candidate, PseudoImage, PseudoInstance
from wiseseg.pseudo.self_training import relabel, relabelled_records

H = W = 20
CATS = [1, 2, 3]  # COCO ids of classes 0, 1, 2


def _box(y0, x0, y1, x1) -> dict:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return rle.encode(m)


def _rec(i, labels, unknown=()) -> ImageRecord:
    return ImageRecord(i, f"im{i}", Path(f"/x/im{i}.png"), H, W, frozenset(labels),
                       frozenset(unknown))


def _old(image_id, *instances) -> PseudoImage:
    """Previous pseudo instances: (class, peak y, peak x, mask)."""
    return PseudoImage(image_id, H, W, [PseudoInstance(c, (y, x, 2.0), [Candidate(m, 1.0)])
                                        for c, y, x, m in instances])


def _pred(image_id, cat, mask, score) -> dict:
    return {"image_id": image_id, "category_id": cat, "segmentation": mask, "score": score}


def test_relabel_by_class():
    left, right = _box(0, 0, 10, 10), _box(10, 10, 20, 20)
    prev = {1: _old(1, (0, 5, 5, left), (0, 15, 15, right), (1, 2, 15, _box(0, 10, 5, 20)))}
    preds = [_pred(1, 1, left, 0.9),        # class 0, confident: replaces class 0's labels
             _pred(1, 1, right, 0.4),       # below min_score: dropped
             _pred(1, 3, right, 0.95)]      # class 2 is not in the image's label: dropped
    out, st = relabel(prev, preds, [_rec(1, {0, 1})], CATS, 0.5)
    got = [(i.category, i.candidates[0].segmentation == left) for i in out[1].instances]
    # class 0: the prediction only (the right-hand pseudo mask goes with the class);
    # class 1: not predicted, its pseudo mask stays
    assert got == [(0, True), (1, False)]
    assert out[1].instances[0].candidates[0].score == pytest.approx(0.9)
    assert (st.images, st.from_predictions, st.kept_previous) == (1, 1, 1)


def test_relabel_handles_empty_images():
    out, st = relabel({}, [], [_rec(1, {0}), _rec(2, ())], CATS, 0.5)
    assert [len(out[i].instances) for i in (1, 2)] == [0, 0] and st.images == 2
    assert (st.from_predictions, st.kept_previous) == (0, 0)


def test_every_labelled_image_is_relabelled():
    """Images with image-level labels only are relabelled like those with masks; negatives
    (no class, none unknown) are not."""
    recs = [_rec(1, {0}), _rec(2, {1, 2}), _rec(3, (), unknown={2}), _rec(4, ())]
    assert [r.id for r in relabelled_records(recs)] == [1, 2, 3]
