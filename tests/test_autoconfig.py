"""Settings that follow the data: what `auto` resolves to for small and large objects, with
and without masks, the reasons given, the warning, and the run recording them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wiseseg import api, rle
from wiseseg.autoconfig import is_auto, measure_sizes, resolve_auto
from wiseseg.config import load_preset
from wiseseg.data.dataset import Dataset, GroundTruth, ImageRecord, Instance
from wiseseg.errors import ConfigError

AUTO_OVERRIDES = ["classifier.input_size=auto", "classifier.epochs=auto",
                  "segmenter.min_size=auto", "segmenter.max_size=auto",
                  "segmenter.anchor_sizes=auto", "segmenter.epochs=auto",
                  "segmenter.reference_epochs=auto", "segmenter.backbone=auto",
                  "proposals.top_k=auto"]


def _dataset(tmp_path, h, w, side, n=20, masks=True) -> Dataset:
    """n images of h×w, each with one square object of ``side`` pixels."""
    recs, gts = [], {}
    for i in range(n):
        recs.append(ImageRecord(i + 1, f"im{i}", tmp_path / f"im{i}.jpg", h, w,
                                frozenset({0})))
        m = np.zeros((h, w), bool)
        m[:side, :side] = True
        gts[i + 1] = GroundTruth(i + 1, (Instance(0, rle.encode(m)),))
    ds = Dataset("t", tmp_path, ("thing",), "coco")
    ds._records["train"] = tuple(recs)
    ds._gt["train"] = gts if masks else None
    return ds


def _cfg(*extra):
    return api.load_config("cpu", [*AUTO_OVERRIDES, *extra])


def test_small_objects_in_large_images_get_larger_inputs(tmp_path):
    ds = _dataset(tmp_path, 480, 640, side=28)
    cfg, notes = resolve_auto(_cfg(), ds)
    c, g = cfg["classifier"], cfg["segmenter"]
    sizes = measure_sizes(ds, "train")
    assert sizes.measured and sizes.object == pytest.approx(28 / np.sqrt(480 * 640))
    # 5 cells of 8 px over an object of 5 % of the side: ~800 px, capped at max_input
    assert c["input_size"] == cfg["auto"]["max_input"]
    # Mask R-CNN would want the objects 48 px across (×1.7), but max_input caps the long side
    assert (g["min_size"], g["max_size"]) == (384, 512)
    assert g["anchor_sizes"][0] >= 16 and len(g["anchor_sizes"]) == 5
    assert all(isinstance(cfg[s]["epochs"], int) for s in ("classifier", "segmenter"))
    assert cfg["auto"]["min_epochs"] <= c["epochs"] <= cfg["auto"]["max_epochs"]
    assert any("median object 28 px" in n for n in notes)
    assert cfg["proposals"]["top_k"] == 1000  # photographs
    assert any(n.startswith("classifier at") for n in notes)
    assert not is_auto(cfg)


def test_large_objects_keep_small_inputs_and_warn_when_too_small(tmp_path):
    ds = _dataset(tmp_path, 128, 128, side=64)
    cfg, notes = resolve_auto(_cfg(), ds)
    assert cfg["classifier"]["input_size"] == cfg["auto"]["min_input"]
    assert cfg["segmenter"]["min_size"] == 128  # never below the images' own size
    assert cfg["proposals"]["top_k"] == 300  # small images
    assert not any(n.startswith("warning") for n in notes)
    tiny = _dataset(tmp_path, 128, 128, side=3)
    _, notes = resolve_auto(_cfg("auto.max_input=128"), tiny)
    assert any(n.startswith("warning: the median object covers") for n in notes)


def test_without_masks_the_object_size_is_assumed_and_said(tmp_path):
    ds = _dataset(tmp_path, 300, 400, side=50, masks=False)
    cfg, notes = resolve_auto(_cfg(), ds)
    assert "assumed 25% of the image side" in notes[0]
    assert isinstance(cfg["classifier"]["input_size"], int)


def test_fixed_settings_are_left_alone_and_bad_sections_fail(tmp_path):
    ds = _dataset(tmp_path, 128, 128, side=30)
    cfg = api.load_config("cpu", ["classifier.backbone=efficientnet_lite0",
                                  "segmenter.backbone=efficientnet_lite0",
                                  "segmenter.frozen_stages=4",
                                  "classifier.input_size=384", "classifier.epochs=8",
                                  "proposals.top_k=300",
                                  "segmenter.min_size=128", "segmenter.max_size=128",
                                  "segmenter.anchor_sizes=[16,32,64,128,256]",
                                  "segmenter.epochs=3", "segmenter.reference_epochs=3"])
    same, notes = resolve_auto(cfg, ds)
    assert same is cfg and notes == []
    broken = _cfg()
    del broken["auto"]["budget_minutes"]
    with pytest.raises(ConfigError, match="budget_minutes"):
        resolve_auto(broken, ds)


def test_run_records_the_choices(tmp_path):
    from .conftest import TINY_OVERRIDES, TINY_SPEC

    keep = [o for o in TINY_OVERRIDES if not o.startswith(("classifier.input_size",
                                                            "segmenter.min_size",
                                                            "segmenter.max_size"))]
    cfg = api.load_config("cpu", [*keep, "classifier.input_size=auto",
                                  "segmenter.min_size=auto", "segmenter.max_size=auto",
                                  "auto.min_input=32", "auto.max_input=64"])
    res = api.run_pipeline(TINY_SPEC, cfg, tmp_path / "run", progress=False)
    auto = json.loads((tmp_path / "run" / "auto.json").read_text())
    assert auto["chosen"]["classifier"]["input_size"] == 64
    assert res.metrics["auto"]["notes"] == auto["notes"]
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "input_size: 64" in saved and "auto" in load_preset("cpu")
    # the whole run is planned at the start, and the plan sits beside the actual seconds
    plan = auto["plan"]["seconds"]
    assert {"classifier", "proposals", "wise", "prm", "evaluate"} <= set(plan)
    assert auto["plan"]["total_seconds"] == pytest.approx(sum(plan.values()), abs=0.5)
    stages = res.metrics["stages"]
    assert stages["wise"]["planned_seconds"] == plan["wise"] and stages["wise"]["seconds"] > 0


def test_rare_classes_raise_mask_rcnn_epochs_to_the_class_views_floor(tmp_path):
    """20 images of one class: the budget's epochs stand; the same images spread over 10
    classes (2 images each): the median class needs views ÷ 2 epochs, and the run says why."""
    common = _dataset(tmp_path, 128, 128, side=30)
    small_budget = ("auto.budget_minutes=0.2", "auto.segmenter_class_views=40")
    cfg, notes = resolve_auto(_cfg(*small_budget), common)
    budget_epochs = cfg["segmenter"]["epochs"]
    assert measure_sizes(common, "train").images_per_class == 20
    assert not any("auto.segmenter_class_views" in n for n in notes)

    rare = _dataset(tmp_path, 128, 128, side=30)
    rare.classes = tuple(f"c{k}" for k in range(10))
    rare._records["train"] = tuple(
        ImageRecord(r.id, r.name, r.path, r.height, r.width, frozenset({i % 10}))
        for i, r in enumerate(rare._records["train"]))
    assert measure_sizes(rare, "train").images_per_class == 2
    cfg, notes = resolve_auto(_cfg(*small_budget), rare)
    assert cfg["segmenter"]["epochs"] == 20 > budget_epochs
    assert any("seen 40 times (auto.segmenter_class_views)" in n for n in notes)
    # capped by max_epochs, and absent (older presets): the budget alone
    cfg, _ = resolve_auto(_cfg("auto.budget_minutes=0.2", "auto.segmenter_class_views=10000"),
                          rare)
    assert cfg["segmenter"]["epochs"] == cfg["auto"]["max_epochs"]
    old = _cfg("auto.budget_minutes=0.2")
    del old["auto"]["segmenter_class_views"]
    assert resolve_auto(old, rare)[0]["segmenter"]["epochs"] == budget_epochs


def test_plan_covers_every_stage_and_grows_with_the_work(tmp_path):
    from wiseseg.runplan import COST, plan_lines, plan_run, stage_units

    ds = _dataset(tmp_path, 375, 500, side=80)
    cfg, _ = resolve_auto(_cfg(), ds)
    sizes = measure_sizes(ds, "train")
    plan = {s.stage: s.seconds for s in plan_run(cfg, sizes, 10, sizes.instances_per_image)}
    assert set(plan) == {"classifier", "peaks", "proposals", "pseudo", "wise", "reference",
                         "predict_wise", "predict_reference", "prm", "pseudo_quality",
                         "evaluate"}
    assert all(v > 0 for v in plan.values())
    # every unit has a cost
    units = stage_units(cfg, sizes, 10, 1.0)
    assert {k for u in units.values() for k in u} <= set(COST)
    # twice the Mask R-CNN epochs: twice its training units; no validation, no reference:
    # the stages that need them are not planned
    g = cfg["segmenter"]
    more = {**cfg, "segmenter": {**g, "epochs": 2 * g["epochs"]}}
    assert stage_units(more, sizes, 10, 1.0)["wise"]["segmenter_image"] == \
        2 * units["wise"]["segmenter_image"]
    # the reference counts its own epochs (segmenter.reference_epochs)
    more = {**cfg, "segmenter": {**g, "reference_epochs": 2 * g["reference_epochs"]}}
    assert stage_units(more, sizes, 10, 1.0)["reference"]["segmenter_image"] == \
        2 * units["reference"]["segmenter_image"]
    bare = {s.stage for s in plan_run(cfg, sizes, 0, 1.0, reference=False)}
    assert bare == {"classifier", "peaks", "proposals", "pseudo", "wise"}
    line = plan_lines(plan_run(cfg, sizes, 10, 1.0))[0]
    assert line.startswith("expected wall time on 2 CPU cores:") and "prm" in line


def test_classifier_epochs_follow_the_median_class(tmp_path):
    """Stage 1 trains until the median class has been seen auto.classifier_class_views times:
    20 images of one class → views ÷ 20 epochs, at least classifier_min_epochs; spread over 10
    classes → views ÷ 2 (capped by max_epochs); without the key, the budget share decides."""
    ds = _dataset(tmp_path, 128, 128, side=30)
    cfg, notes = resolve_auto(_cfg("auto.classifier_class_views=200",
                                   "auto.classifier_min_epochs=2"), ds)
    assert measure_sizes(ds, "train").weak_images_per_class == 20
    assert cfg["classifier"]["epochs"] == 10
    cfg, notes = resolve_auto(_cfg("auto.classifier_class_views=200",
                                   "auto.classifier_min_epochs=12"), ds)
    assert cfg["classifier"]["epochs"] == 12  # the floor
    assert any("seen 200 times (auto.classifier_class_views; at least 12" in n for n in notes)
    rare = _dataset(tmp_path, 128, 128, side=30)
    rare.classes = tuple(f"c{k}" for k in range(10))
    rare._records["train"] = tuple(
        ImageRecord(r.id, r.name, r.path, r.height, r.width, frozenset({i % 10}))
        for i, r in enumerate(rare._records["train"]))
    cfg, _ = resolve_auto(_cfg("auto.classifier_class_views=200",
                               "auto.classifier_min_epochs=2"), rare)
    assert cfg["classifier"]["epochs"] == min(100, cfg["auto"]["max_epochs"])
    old = _cfg()
    del old["auto"]["classifier_class_views"]
    cfg, notes = resolve_auto(old, ds)
    assert any("of the 10.0-minute budget" in n for n in notes if n.startswith("classifier"))


def test_classifier_backbone_follows_the_image_size(tmp_path):
    """Photographs get Lite2, small images Lite0; the plan counts the larger backbone's time."""
    from wiseseg.runplan import stage_units

    photo, _ = resolve_auto(_cfg("classifier.backbone=auto"), _dataset(tmp_path, 375, 500, 80))
    small, notes = resolve_auto(_cfg("classifier.backbone=auto"),
                                _dataset(tmp_path, 128, 128, 24))
    assert photo["classifier"]["backbone"] == "efficientnet_lite2"
    assert small["classifier"]["backbone"] == "efficientnet_lite0"
    assert any(n.startswith("classifier backbone efficientnet_lite0: median image side 128")
               for n in notes)
    fixed, _ = resolve_auto(_cfg("classifier.backbone=efficientnet_lite1"),
                            _dataset(tmp_path, 375, 500, 80))
    assert fixed["classifier"]["backbone"] == "efficientnet_lite1"  # a named one is kept
    ds = _dataset(tmp_path, 375, 500, 80)
    sizes = measure_sizes(ds, "train")
    lite0 = {**photo, "classifier": {**photo["classifier"], "backbone": "efficientnet_lite0"}}
    u2, u0 = stage_units(photo, sizes, 10, 2.0), stage_units(lite0, sizes, 10, 2.0)
    assert u2["prm"]["prm_instance_mp"] > u0["prm"]["prm_instance_mp"]
    assert u2["classifier"]["classifier_cache_mp"] > u0["classifier"]["classifier_cache_mp"]


def test_segmenter_backbone_follows_the_image_size(tmp_path):
    """Mask R-CNN takes the same rule; the plan counts its backbone in caching and inference."""
    from wiseseg.runplan import stage_units

    ds = _dataset(tmp_path, 375, 500, 80)
    photo, notes = resolve_auto(_cfg("segmenter.backbone=auto"), ds)
    small, _ = resolve_auto(_cfg("segmenter.backbone=auto"), _dataset(tmp_path, 128, 128, 24))
    assert photo["segmenter"]["backbone"] == "efficientnet_lite2"
    assert small["segmenter"]["backbone"] == "efficientnet_lite0"
    assert any(n.startswith("Mask R-CNN backbone efficientnet_lite2: median image side")
               for n in notes)
    sizes = measure_sizes(ds, "train")
    lite0 = {**photo, "segmenter": {**photo["segmenter"], "backbone": "efficientnet_lite0"}}
    u2, u0 = stage_units(photo, sizes, 10, 2.0), stage_units(lite0, sizes, 10, 2.0)
    assert u2["predict_wise"]["predict_image_mp"] > u0["predict_wise"]["predict_image_mp"]
    assert u2["wise"]["segmenter_image"] == u0["wise"]["segmenter_image"]


def test_segmenter_trains_its_upper_stages_on_photographs_only(tmp_path):
    """frozen_stages auto: 3 on photographs (c5's stages train on cached c2–c4, at lr × the
    preset's backbone_lr_mult), 4 on small images; the plan and the epoch rule count the
    upper stages' time."""
    from wiseseg.runplan import stage_units

    ds = _dataset(tmp_path, 375, 500, 80)
    photo, notes = resolve_auto(_cfg("segmenter.frozen_stages=auto"), ds)
    small, _ = resolve_auto(_cfg("segmenter.frozen_stages=auto"),
                            _dataset(tmp_path, 128, 128, 24))
    assert (photo["segmenter"]["frozen_stages"], small["segmenter"]["frozen_stages"]) == (3, 4)
    assert any("upper stages trained at lr × 0.01 (frozen_stages 3): photographs" in n
               for n in notes)
    sizes = measure_sizes(ds, "train")
    fixed = {**photo, "segmenter": {**photo["segmenter"], "frozen_stages": 4}}
    u3, u4 = stage_units(photo, sizes, 10, 2.0), stage_units(fixed, sizes, 10, 2.0)
    for stage in ("wise", "reference"):
        assert u3[stage]["segmenter_upper_image_mp"] > 0
        assert u4[stage]["segmenter_upper_image_mp"] == 0
    assert u3["wise"]["segmenter_cache_mp"] == u4["wise"]["segmenter_cache_mp"] > 0  # c2–c4
    # a budget-bound epoch count: the upper stages' time leaves fewer epochs
    cut = ["auto.segmenter_class_views=1", "auto.budget_minutes=3"]
    e3 = resolve_auto(_cfg("segmenter.frozen_stages=auto", *cut), ds)[0]["segmenter"]["epochs"]
    e4 = resolve_auto(_cfg("segmenter.frozen_stages=4", *cut), ds)[0]["segmenter"]["epochs"]
    assert e3 < e4


def test_plan_over_max_minutes_cuts_the_auto_mask_rcnn_epochs(tmp_path):
    """The class-views floor can plan hours; auto.max_minutes bounds the whole plan by cutting
    the Mask R-CNN epochs auto chose (never below auto.min_epochs), and says so."""
    from wiseseg.runplan import fit_epochs, plan_run

    ds = _dataset(tmp_path, 375, 500, 80, n=40)
    cfg, _ = resolve_auto(_cfg("auto.segmenter_class_views=1000"), ds)  # 25 epochs a class
    sizes = measure_sizes(ds, "train")

    def minutes(c):
        return sum(s.seconds for s in plan_run(c, sizes, 10, 1.0)) / 60

    g = cfg["segmenter"]
    assert (g["epochs"], g["reference_epochs"]) == (25, 25)
    full = minutes(cfg)
    same, notes = fit_epochs(cfg, sizes, 10, 1.0, True, 60 * (full + 1), ("epochs",))
    assert same is cfg and notes == []  # fits: nothing changes
    cut, notes = fit_epochs(cfg, sizes, 10, 1.0, True, 60 * full * 0.6,
                            ("epochs", "reference_epochs"))
    e, r = cut["segmenter"]["epochs"], cut["segmenter"]["reference_epochs"]
    assert 2 <= e < 25 and e == r and minutes(cut) <= full * 0.6
    longer = {**cut, "segmenter": {**cut["segmenter"], "epochs": e + 1,
                                   "reference_epochs": r + 1}}
    assert minutes(longer) > full * 0.6  # the smallest cut that fits
    assert cfg["segmenter"]["epochs"] == 25  # the input is not modified
    assert notes == [f"Mask R-CNN 25 → {e} epochs, reference Mask R-CNN 25 → {r} epochs: the "
                     f"plan ({full:.1f} min) was over auto.max_minutes ({full * 0.6:.1f} min);"
                     f" now {minutes(cut):.1f} min"]
    only, _ = fit_epochs(cfg, sizes, 10, 1.0, True, 60 * full * 0.6, ("epochs",))
    assert only["segmenter"]["reference_epochs"] == 25 and only["segmenter"]["epochs"] < e
    floor, notes = fit_epochs(cfg, sizes, 10, 1.0, True, 1.0, ("epochs",), min_epochs=3)
    assert floor["segmenter"]["epochs"] == 3 and notes[0].startswith("warning: Mask R-CNN 25 → 3")
    assert "still" in notes[0] and "proposals.top_k" in notes[0]


def test_run_plan_keeps_within_max_minutes_and_records_it(tmp_path):
    """api's plan applies the cap to the epochs the request left to auto, prints nothing when
    quiet, and keeps the cut in auto.json; fixed epochs and a null cap are left alone."""
    ds = _dataset(tmp_path, 375, 500, 80, n=40)
    ds._records["val"] = ds._records["train"][:5]
    ds._gt["val"] = {i: ds._gt["train"][i] for i in range(1, 6)}
    cfg, _ = resolve_auto(_cfg("auto.segmenter_class_views=1000"), ds)
    full = api._plan(cfg, ds, tmp_path, False, True, cfg)  # no auto left: nothing to cut
    assert full is cfg and cfg["segmenter"]["epochs"] == 25
    limit = round(json.loads((tmp_path / "auto.json").read_text())["plan"]["total_seconds"]
                  * 0.6 / 60, 1)
    requested = _cfg("auto.segmenter_class_views=1000", f"auto.max_minutes={limit}")
    cfg, _ = resolve_auto(requested, ds)
    out = api._plan(cfg, ds, tmp_path, False, True, requested)
    auto = json.loads((tmp_path / "auto.json").read_text())
    assert out["segmenter"]["epochs"] < 25 and out["segmenter"]["reference_epochs"] < 25
    assert auto["plan"]["total_seconds"] <= limit * 60
    assert auto["chosen"]["segmenter"]["epochs"] == out["segmenter"]["epochs"]
    assert f"over auto.max_minutes ({limit:.1f} min)" in auto["notes"][-1]
    fixed = _cfg("auto.segmenter_class_views=1000", f"auto.max_minutes={limit}",
                 "segmenter.epochs=25", "segmenter.reference_epochs=25")
    assert api._plan(cfg, ds, tmp_path, False, True, fixed)["segmenter"]["epochs"] == 25
    off = _cfg("auto.segmenter_class_views=1000", "auto.max_minutes=null")
    assert api._plan(cfg, ds, tmp_path, False, True, off) is cfg
