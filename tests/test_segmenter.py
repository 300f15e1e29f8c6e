"""Stage 2 at toy scale: Mask R-CNN on pseudo masks and on GT, empty targets, resume,
predictions and refinement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wiseseg import rle
from wiseseg.config import apply_overrides, load_preset
from wiseseg.data import open_dataset
from wiseseg.data.dataset import ImageRecord
from wiseseg.inference.predict import (
    body_cache,
    detections_to_results,
    predict,
    predict_from_body,
    records_as_items,
    uniform_size,
)
from wiseseg.inference.refine import refine_predictions
from wiseseg.pseudo.sampling import Candidate, PseudoImage, PseudoInstance
from wiseseg.segmenter.data import SegmenterData, build_target
from wiseseg.segmenter.model_io import load_segmenter
from wiseseg.segmenter.train import train_segmenter

SPEC = "shapes:train=6,val=3,size=48,seed=4"
TINY = ["segmenter.backbone=efficientnet_lite0", "segmenter.frozen_stages=4", "segmenter.steps=2",
        "segmenter.batch_size=2",
        "segmenter.min_size=48", "segmenter.max_size=48",
        "segmenter.anchor_sizes=[16,32,64,128,256]",
        "segmenter.checkpoint_every=1", "segmenter.warmup_steps=1"]


def _cfg(*extra):
    return apply_overrides(load_preset("cpu"), [*TINY, *extra])["segmenter"]


def _pseudo_from_gt(ds, split):
    """Pseudo images whose candidates are the GT mask and a dilated copy of it."""
    out = {}
    for r in ds.records(split):
        img = PseudoImage(r.id, r.height, r.width)
        for k, inst in enumerate(ds.ground_truth(split)[r.id].instances):
            m = rle.decode(inst.segmentation)
            big = m | np.roll(m, 2, axis=0)
            img.instances.append(PseudoInstance(inst.category, (0, 0, 1.0 - 0.01 * k), [
                Candidate(inst.segmentation, 0.7), Candidate(rle.encode(big), 0.3)]))
        out[r.id] = img
    return out


@pytest.fixture(scope="module")
def ds():
    return open_dataset(SPEC, progress=False)


def test_build_target_and_empty():
    m = np.zeros((2, 10, 12), bool)
    m[0, 2:5, 3:9] = True
    t = build_target(m, [4, 1])  # the second mask is empty: dropped
    assert t["boxes"].tolist() == [[3, 2, 9, 5]] and t["labels"].tolist() == [5]
    empty = build_target(np.zeros((0, 10, 12), bool), [])
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 10, 12)


def test_pseudo_samples_are_redrawn_per_use(ds):
    recs = ds.records("train")
    data = SegmenterData(recs, _pseudo_from_gt(ds, "train"), 48, 48, hflip=False,
                         dup_iou=1.1)
    i = next(k for k, r in enumerate(recs) if ds.ground_truth("train")[r.id].instances)
    areas = {float(data.load(i, np.random.default_rng(s))[1]["masks"].sum()) for s in range(12)}
    assert len(areas) > 1  # different candidates on different draws
    argmax = SegmenterData(recs, _pseudo_from_gt(ds, "train"), 48, 48, hflip=False,
                           mode="argmax")
    a = {float(argmax.load(i, np.random.default_rng(s))[1]["masks"].sum()) for s in range(5)}
    assert len(a) == 1


def test_train_on_pseudo_and_gt_then_predict(ds, tmp_path):
    recs = list(ds.records("train"))
    pseudo = _pseudo_from_gt(ds, "train")
    pseudo[recs[0].id] = PseudoImage(recs[0].id, 48, 48)  # no instance: trains as background
    p1 = train_segmenter(recs, pseudo, ds.classes, _cfg(), tmp_path / "p", masks="pseudo",
                         progress=False)
    p2 = train_segmenter(recs, dict(ds.ground_truth("train")), ds.classes, _cfg(),
                         tmp_path / "g", masks="gt", progress=False)
    for p, masks in ((p1, "pseudo"), (p2, "gt")):
        model, cfg, classes, extra = load_segmenter(p)
        assert classes == list(ds.classes) and extra["masks"] == masks and extra["steps"] == 2
    model, _, _, _ = load_segmenter(p2)
    preds = predict(model, records_as_items(ds.records("val")), ds.category_ids,
                    progress=False)
    for q in preds:
        assert q["category_id"] in ds.category_ids and 0 <= q["score"] <= 1
        assert q["segmentation"]["size"] == [48, 48] and len(q["bbox"]) == 4
    # from the body's maps kept in a file (what a run shares between its Mask R-CNNs): the
    # same predictions, and the file serves a second model with the same body
    val = list(ds.records("val"))
    assert uniform_size(val)
    cache = body_cache(model, val, "cpu", tmp_path / "body.pt", progress=False)
    again = predict_from_body(model, val, cache, ds.category_ids, progress=False)
    assert [(q["image_id"], q["category_id"], q["segmentation"]) for q in again] == \
        [(q["image_id"], q["category_id"], q["segmentation"]) for q in preds]
    assert np.allclose([q["score"] for q in again], [q["score"] for q in preds], atol=1e-5)
    other, _, _, _ = load_segmenter(p1)
    loaded = body_cache(other, val, "cpu", tmp_path / "body.pt", progress=False)
    assert torch.equal(loaded.get(0)["c2"], cache.get(0)["c2"])
    # a model loaded to predict with its fixed body's BatchNorms folded (what a run does for
    # images of several sizes): the same predictions
    from wiseseg.models.freezing import fold_batchnorm

    folded, _, _, _ = load_segmenter(p2)
    folded.backbone.body = fold_batchnorm(folded.backbone.body)
    same = predict(folded, records_as_items(val), ds.category_ids, progress=False)
    assert [(q["image_id"], q["category_id"], q["segmentation"]) for q in same] == \
        [(q["image_id"], q["category_id"], q["segmentation"]) for q in preds]
    assert np.allclose([q["score"] for q in same], [q["score"] for q in preds], atol=1e-5)


def test_upper_stages_trained_on_cached_lower_levels_predict_from_a_shared_cache(ds, tmp_path):
    """frozen_stages 3: training caches c2–c4 and trains c5's stages; two such Mask R-CNNs
    share one prediction cache of c2–c4, and predicting from it equals predicting from the
    images."""
    from wiseseg.models.maskrcnn import fixed_levels

    recs, val = list(ds.records("train")), list(ds.records("val"))
    cfg = _cfg("segmenter.frozen_stages=3")
    paths = [train_segmenter(recs, dict(ds.ground_truth("train")), ds.classes, cfg,
                             tmp_path / name, masks="gt", seed=seed, progress=False)
             for name, seed in (("a", 0), ("b", 1))]
    a, b = (load_segmenter(p)[0] for p in paths)
    assert fixed_levels(a) == ("c2", "c3", "c4")
    upper = lambda m: m.backbone.body.body.head.conv.weight  # noqa: E731
    assert not torch.equal(upper(a), upper(b))  # trained, and differently
    cache = body_cache(a, val, "cpu", tmp_path / "body", progress=False)
    assert sorted(k for k in cache.get(0) if k != "size") == ["c2", "c3", "c4"]

    def boom(*args, **kwargs):
        raise AssertionError("recomputed")

    from unittest import mock

    with mock.patch("wiseseg.models.maskrcnn.body_features_sized", boom):
        shared = body_cache(b, val, "cpu", tmp_path / "body", progress=False)
    for m, c in ((a, cache), (b, shared)):
        want = predict(m, records_as_items(val), ds.category_ids, progress=False)
        assert want  # something to compare
        got = predict_from_body(m, val, c, ds.category_ids, progress=False)
        assert [(q["image_id"], q["category_id"], q["segmentation"]) for q in got] == \
            [(q["image_id"], q["category_id"], q["segmentation"]) for q in want]
        assert np.allclose([q["score"] for q in got], [q["score"] for q in want], atol=1e-5)


def test_trained_backbone_stages_learn_at_their_own_rate(ds):
    from wiseseg.engine.optim import build_optimizer
    from wiseseg.segmenter.model_io import build_segmenter
    from wiseseg.segmenter.train import segmenter_param_groups

    cfg = _cfg("segmenter.frozen_stages=3", "segmenter.backbone_lr_mult=0.01")
    model = build_segmenter(cfg, len(ds.classes), pretrained=False)
    opt = build_optimizer(segmenter_param_groups(model, cfg), cfg)
    upper = {id(p) for m in model.backbone.body.level_modules("c5") for p in m.parameters()}
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert upper and all(lrs[i] == pytest.approx(cfg["lr"] * 0.01) for i in upper)
    heads = [p for p in model.roi_heads.parameters()]
    assert all(lrs[id(p)] == pytest.approx(cfg["lr"]) for p in heads)
    fixed = build_segmenter(_cfg(), len(ds.classes), pretrained=False)  # frozen_stages 4
    assert len(build_optimizer(segmenter_param_groups(fixed, cfg), cfg).param_groups) == 1


def test_all_empty_targets_train(ds, tmp_path):
    recs = list(ds.records("train"))[:2]
    empty = {r.id: PseudoImage(r.id, r.height, r.width) for r in recs}
    path = train_segmenter(recs, empty, ds.classes, _cfg(), tmp_path, progress=False)
    assert path.exists()


def test_resume_continues_from_checkpoint(ds, tmp_path, monkeypatch):
    from wiseseg.engine.trainer import Trainer

    recs = list(ds.records("train"))
    gt = dict(ds.ground_truth("train"))
    cfg = _cfg("segmenter.steps=3")
    full = train_segmenter(recs, gt, ds.classes, cfg, tmp_path / "a", masks="gt",
                           progress=False, deterministic=True)
    real_step = Trainer._train_step

    def crash_on_third(self, batch):
        if self.step == 2:
            raise KeyboardInterrupt  # the run dies after two steps were checkpointed
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        train_segmenter(recs, gt, ds.classes, cfg, tmp_path / "b", masks="gt", progress=False,
                        deterministic=True)
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    resumed = train_segmenter(recs, gt, ds.classes, cfg, tmp_path / "b", masks="gt",
                              progress=False, deterministic=True)
    a = torch.load(full, weights_only=True)["model"]
    b = torch.load(resumed, weights_only=True)["model"]
    assert torch.load(resumed, weights_only=True)["steps"] == 3
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_detections_to_results_drops_vanishing_masks():
    out = {"scores": torch.tensor([0.9, 0.4]), "labels": torch.tensor([2, 1]),
           "masks": torch.zeros(2, 1, 8, 8)}
    out["masks"][0, 0, 2:4, 2:6] = 0.8
    res = detections_to_results(out, 5, [10, 20, 30])
    assert len(res) == 1 and res[0]["category_id"] == 20 and res[0]["bbox"] == [2, 2, 4, 2]


def test_refinement_rule():
    def box(y0, y1, x0, x1):
        m = np.zeros((20, 20), bool)
        m[y0:y1, x0:x1] = True
        return rle.encode(m)

    pred = [{"image_id": 1, "category_id": 3, "score": 0.8, "segmentation": box(2, 10, 2, 10),
             "bbox": [2, 2, 8, 8]},
            {"image_id": 1, "category_id": 1, "score": 0.5, "segmentation": box(15, 19, 15, 19),
             "bbox": [15, 15, 4, 4]}]
    props = [box(0, 5, 0, 5), box(2, 11, 2, 11)]
    out = refine_predictions(pred, props, min_iou=0.5)
    assert out[0]["refined"] and out[0]["segmentation"] == props[1]
    assert out[0]["category_id"] == 3 and out[0]["score"] == 0.8
    assert not out[1]["refined"] and out[1]["segmentation"] == pred[1]["segmentation"]
    assert refine_predictions(pred, props, min_iou=0.0)[1]["refined"] is False  # IoU 0
    assert refine_predictions([], props) == []
    assert refine_predictions(pred, [])[0]["refined"] is False


def test_images_with_a_label_but_no_pseudo_mask_can_be_skipped(ds):
    from wiseseg.errors import ConfigError
    from wiseseg.segmenter.train import without_pseudo_masks

    recs = list(ds.records("train"))
    pseudo = _pseudo_from_gt(ds, "train")
    labelled = next(r for r in recs if r.labels)
    pseudo[labelled.id] = PseudoImage(labelled.id, 48, 48)  # peaks found nothing
    negative = ImageRecord(999, "neg", labelled.path, 48, 48, frozenset())
    kept = without_pseudo_masks([*recs, negative], {**pseudo, 999: PseudoImage(999, 48, 48)})
    assert labelled not in kept and negative in kept and len(kept) == len(recs)
    with pytest.raises(ConfigError, match="no training image"):
        without_pseudo_masks([labelled], {labelled.id: PseudoImage(labelled.id, 48, 48)})


def test_unresolved_auto_setting_is_a_clear_error():
    from wiseseg.errors import ConfigError
    from wiseseg.segmenter.model_io import build_segmenter

    cfg = apply_overrides(load_preset("cpu"), ["segmenter.min_size=48", "segmenter.max_size=48"])
    with pytest.raises(ConfigError, match="segmenter.backbone is 'auto'"):
        build_segmenter(cfg["segmenter"], num_classes=2, pretrained=False)
    cfg = apply_overrides(cfg, ["segmenter.backbone=efficientnet_lite0"])
    with pytest.raises(ConfigError, match="segmenter.frozen_stages is 'auto'"):
        build_segmenter(cfg["segmenter"], num_classes=2, pretrained=False)
    cfg = apply_overrides(cfg, ["segmenter.frozen_stages=4"])
    with pytest.raises(ConfigError, match="segmenter.anchor_sizes is 'auto'"):
        build_segmenter(cfg["segmenter"], num_classes=2, pretrained=False)
