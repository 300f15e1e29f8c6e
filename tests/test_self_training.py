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


def test_the_round_predicts_on_image_level_only_images(tmp_path, monkeypatch):
    """In a run, round 2 relabels the images with image-level labels only as well as those
    with masks (on the VOC sample they are three images in four)."""
    import json

    from PIL import Image

    from wiseseg import api, stages
    from wiseseg.pipeline import RunContext
    from wiseseg.pseudo.labels import to_coco, write_pseudo
    from wiseseg.pseudo.sampling import CandidateStats

    (tmp_path / "train").mkdir()
    for n in ("a.png", "b.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / n)
    m = np.zeros((8, 8), np.uint8)
    m[2:5, 2:5] = 1
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8},
                   {"id": 2, "file_name": "b.png", "height": 8, "width": 8,
                    "image_labels": ["dog"]}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                         "segmentation": rle.encode(m), "iscrowd": 0}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}))
    ds = api.open_dataset(str(tmp_path), progress=False)
    assert [r.id for r in ds.weak_only("train")] == [2]
    cfg = api.load_config("cpu", ["segmenter.rounds=2"])
    ctx = RunContext(cfg=cfg, dataset=ds, data_spec=str(tmp_path), run_dir=tmp_path / "run",
                     progress=False)
    split = ds.segmenter_view("train", "pseudo")
    write_pseudo(ctx.stage_dir("pseudo") / "pseudo.json",
                 to_coco([PseudoImage(r.id, r.height, r.width) for r in split], split,
                         ds.category_ids, CandidateStats(), {"dup_iou": 0.8}))
    predicted = []
    monkeypatch.setattr(stages, "_train_segmenter", lambda *a, **k: {})
    monkeypatch.setattr(stages, "_predict", lambda ctx, d, s, records, **k:
                        predicted.extend(r.id for r in records) or [])
    summary = stages.run_wise(ctx, tmp_path / "run" / "wise")
    assert sorted(predicted) == [1, 2]
    assert summary["rounds"][0]["images"] == 2
