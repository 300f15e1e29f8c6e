"""Images labelled for some classes only (``unlabelled_classes``): stage 1 decides which of
them Mask R-CNN trains on (``pseudo.partial_labels``), and the reference keeps its own epochs."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wiseseg import api, rle
from wiseseg.autoconfig import measure_sizes, resolve_auto
from wiseseg.data.coco import read_coco
from wiseseg.data.dataset import ImageRecord
from wiseseg.pipeline import RunContext, stage_config
from wiseseg.pseudo.labels import pseudo_view
from wiseseg.pseudo.partial import decide_partial
from wiseseg.stages import STAGES


def _rec(i, labels, unknown=()):
    return ImageRecord(id=i, name=f"im{i}", path=Path("x"), height=1, width=1,
                       labels=frozenset(labels), unknown=frozenset(unknown))


def test_decide_partial_keeps_images_without_a_predicted_unlabelled_class():
    recs = [_rec(1, {0}), _rec(2, {0}, {1, 2}), _rec(3, {0}, {1, 2}), _rec(4, {2}, {1})]
    scores = {1: [0.9, 0.9, 0.9], 2: [0.9, 0.2, 0.49], 3: [0.9, 0.2, 0.5], 4: [0.1, 0.7, 0.9]}
    d = decide_partial(recs, scores, threshold=0.5)
    assert d.kept == {2}  # image 1 has no unlabelled class: not decided here
    assert d.excluded == {3: [2], 4: [1]}
    assert d.as_dict(("a", "b", "c")) == {"kept": 1, "excluded": 2, "excluded_images":
                                          {"3": ["c"], "4": ["b"]}}
    skip = decide_partial(recs, scores, threshold=0.5, mode="skip")
    assert skip.kept == set() and set(skip.excluded) == {2, 3, 4}
    assert decide_partial([], {}, 0.5).kept == set()


def test_decide_partial_refuses_missing_scores_and_modes():
    with pytest.raises(ValueError, match="image 2 .*no class scores"):
        decide_partial([_rec(2, {0}, {1})], {2: [0.1]}, 0.5)
    with pytest.raises(ValueError, match="must be one of predict, skip, got 'maybe'"):
        decide_partial([], {}, 0.5, mode="maybe")


def _partial_coco(root: Path, n_masks=4, n_partial=6, size=48):
    """COCO root: 'train' has n_masks images with true masks of a square (class a) and a
    disc (class b), n_partial images labelled 'a' with 'b' unlabelled; 'val' has 2 images."""
    rng = np.random.default_rng(0)
    (root / "annotations").mkdir(parents=True)
    yy, xx = np.mgrid[:size, :size]
    for split, n, extra in (("train", n_masks, n_partial), ("val", 2, 0)):
        (root / split).mkdir()
        images, anns = [], []
        for i in range(1, n + extra + 1):
            img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            sq = np.zeros((size, size), bool)
            y, x = rng.integers(4, size - 20, 2)
            sq[y:y + 14, x:x + 14] = True
            img[sq] = (220, 40, 40)
            entry = {"id": i, "file_name": f"{i}.png", "height": size, "width": size}
            if i <= n:
                disc = (yy - size // 2) ** 2 + (xx - size // 2) ** 2 < 36
                disc &= ~sq
                img[disc] = (40, 40, 220)
                for cid, m in ((1, sq), (2, disc)):
                    anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cid,
                                 "segmentation": rle.encode(m), "iscrowd": 0})
            else:
                entry.update(image_labels=["a"], unlabelled_classes=["b"])
            Image.fromarray(img).save(root / split / f"{i}.png")
            images.append(entry)
        data = {"images": images, "annotations": anns,
                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def test_views_and_sizes_count_the_partial_images(tmp_path):
    ds = read_coco(_partial_coco(tmp_path / "d"))
    partial = [r.id for r in ds.partially_labelled("train")]
    assert partial == [5, 6, 7, 8, 9, 10]
    ids = lambda split: [r.id for r in split.records]  # noqa: E731
    assert ids(ds.segmenter_view("train", "pseudo")) == [1, 2, 3, 4]
    assert ids(ds.segmenter_view("train", "pseudo", {5, 7})) == [1, 2, 3, 4, 5, 7]
    assert ids(ds.segmenter_view("train", "gt", {5, 7})) == [1, 2, 3, 4]  # no true masks
    assert len(ds.segmenter_records("train", "pseudo", 1.0, partial)) == 10
    sizes = measure_sizes(ds, "train", partial=True)
    assert (sizes.segmenter_images, sizes.reference_images) == (10, 4)
    assert (sizes.images_per_class, sizes.reference_images_per_class) == (7.0, 4.0)
    assert measure_sizes(ds, "train").segmenter_images == 4


def test_the_plan_counts_the_partial_images_as_the_run_does(tmp_path):
    from wiseseg.autoconfig import config_sizes
    from wiseseg.runplan import stage_units

    ds = read_coco(_partial_coco(tmp_path / "d"))
    units = {}
    for mode in ("predict", "skip"):
        cfg, _ = resolve_auto(api.load_config("cpu", [f"pseudo.partial_labels={mode}"]), ds)
        sizes = config_sizes(ds, cfg)
        assert sizes.segmenter_images == (10 if mode == "predict" else 4)
        units[mode] = stage_units(cfg, sizes, 2, 1.0)
    assert units["predict"]["proposals"]["proposals_image"] > \
        units["skip"]["proposals"]["proposals_image"]
    ref, ref_skip = units["predict"]["reference"], units["skip"]["reference"]
    assert ref["segmenter_image"] == ref_skip["segmenter_image"]  # its own images and epochs
    assert ref["segmenter_cache_mp"] > 0 and "segmenter_cache_mp" not in ref_skip  # own cache


def test_pseudo_view_takes_the_partial_images_a_file_lists(tmp_path):
    ds = read_coco(_partial_coco(tmp_path / "d"))
    f = tmp_path / "pseudo.json"
    f.write_text(json.dumps({"images": [{"id": i} for i in (1, 2, 3, 4, 6)],
                             "annotations": []}))
    assert [r.id for r in pseudo_view(f, ds, "train").records] == [1, 2, 3, 4, 6]


def test_reference_epochs_follow_its_own_images(tmp_path):
    ds = read_coco(_partial_coco(tmp_path / "d", n_masks=4, n_partial=36))
    cfg = api.load_config("cpu", ["auto.budget_minutes=0.01"])  # the class-view floor decides
    out, notes = resolve_auto(cfg, ds, "train")
    g = out["segmenter"]
    # WISE: the median class in 22 images (4 + 36 'a', 4 'b'); the reference: in 4
    assert g["reference_epochs"] > g["epochs"]
    assert any(n.startswith("reference Mask R-CNN") and "4 images" in n for n in notes)
    same, notes = resolve_auto(api.load_config("cpu", ["auto.budget_minutes=0.01",
                                                   "pseudo.partial_labels=skip"]), ds, "train")
    assert same["segmenter"]["reference_epochs"] == same["segmenter"]["epochs"]
    assert not any(n.startswith("reference Mask R-CNN") for n in notes)


def test_stage_hashes_read_what_the_stages_read():
    stage = {s.name: s for s in STAGES}

    def cfg_of(name, cfg):
        return stage_config(stage[name], RunContext(cfg=cfg, dataset=None, data_spec="",
                                                    run_dir=Path(".")))

    cfg = api.load_config("cpu")
    assert cfg_of("proposals", cfg)["pseudo.partial_labels"] == "predict"
    cfg["segmenter"]["reference_epochs"] = 7
    assert "epochs" not in cfg_of("reference", cfg)["segmenter"]
    assert "reference_epochs" not in cfg_of("wise", cfg)["segmenter"]
    cfg["segmenter"]["reference_epochs"] = None  # null: the reference takes WISE's epochs
    assert "epochs" in cfg_of("reference", cfg)["segmenter"]


def test_run_trains_wise_on_the_partial_images_stage_1_clears(tmp_path):
    import torch

    from tests.conftest import TINY_OVERRIDES

    data = _partial_coco(tmp_path / "d")
    over = [o for o in TINY_OVERRIDES if "input_size" not in o and "_size=" not in o]
    over += ["classifier.input_size=48", "segmenter.min_size=48", "segmenter.max_size=48",
             "segmenter.epochs=1", "segmenter.reference_epochs=1", "classifier.epochs=1"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path / "run"
        # class_threshold 1: no class probability reaches it, every partial image is kept
        api.run_pipeline(str(data), api.load_config("cpu", over + ["peaks.class_threshold=1.0"]),
                         run, progress=False)
        pseudo = json.loads((run / "pseudo" / "pseudo.json").read_text())
        assert {im["id"] for im in pseudo["images"]} >= {5, 6, 7, 8, 9, 10}
        assert pseudo["wiseseg"]["partial_labels"]["kept"] == 6
        assert json.loads((run / "wise" / "stage.json").read_text())["summary"]["images"] == 10
        assert json.loads((run / "reference" / "stage.json").read_text())["summary"][
            "images"] == 4
        # class_threshold 0: every unlabelled class is 'predicted': stage 1 only
        res = api.run_pipeline(str(data), api.load_config(
            "cpu", over + ["peaks.class_threshold=0.0"]), run, progress=False)
        assert "proposals" not in res.metrics["run"]["ran"]
        assert "reference" not in res.metrics["run"]["ran"]
        pseudo = json.loads((run / "pseudo" / "pseudo.json").read_text())
        assert {im["id"] for im in pseudo["images"]} == {1, 2, 3, 4}
        assert pseudo["wiseseg"]["partial_labels"]["excluded_images"]["5"] == ["b"]
        assert json.loads((run / "wise" / "stage.json").read_text())["summary"]["images"] == 4
    finally:
        torch.set_num_threads(threads)


def test_data_stats_counts_the_partial_images(tmp_path):
    from wiseseg.data.stats import format_stats, split_stats

    ds = read_coco(_partial_coco(tmp_path / "d"))
    st = split_stats(ds, "train")
    assert st["partially_labelled_images"] == 6 and st["image_level_only_images"] == 6
    assert "6 with unlabelled classes" in format_stats(ds, {"train": st})
    assert st["unlabelled_per_class"] == {"b": 6}
    assert "unchecked per class: b=6" in format_stats(ds, {"train": st})
    assert split_stats(ds, "val")["unlabelled_per_class"] == {}
    assert split_stats(ds, "val")["partially_labelled_images"] == 0
