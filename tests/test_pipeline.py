"""`wiseseg run`: every stage at toy scale, caching, resume after a kill, dependants only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from wiseseg import api
from wiseseg.config import load_config

STAGES_ALL = ["classifier", "peaks", "proposals", "pseudo", "wise", "reference",
              "predict_wise", "predict_reference", "prm", "pseudo_quality", "evaluate"]


def _rerun(run_dir, *overrides):
    cfg = load_config(run_dir / "config.yaml")
    spec = cfg["data"]["spec"]
    cfg = api.apply_overrides(cfg, overrides) if overrides else cfg
    return api.run_pipeline(spec, cfg, run_dir, progress=False)


def test_tiny_run_has_every_stage_and_row(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(metrics["results"]) == {"PRM", "WISE", "WISE+Refine", "Mask R-CNN (GT)"}
    for row in metrics["results"].values():
        assert 0.0 <= row["mAP50"] <= 1.0 and 0.0 <= row["ABO"] <= 1.0
    assert set(metrics["stages"]) == set(STAGES_ALL)
    assert metrics["pseudo_quality"]["pseudo_mAP50"] is not None
    assert (tiny_run / "config.yaml").exists() and (tiny_run / "report.html").exists()
    # the fixed body's maps were computed once per split for every Mask R-CNN's predictions
    for split in ("train", "val"):
        assert (tiny_run / "cache" / f"segmenter_body_{split}.features").is_file()
    # self-training's relabelled images read the training split's cache, not one of their own
    assert load_config(tiny_run / "config.yaml")["segmenter"]["rounds"] > 1
    assert not list((tiny_run / "cache").glob("segmenter_body_train+*")) and not list(
        (tiny_run / "cache").glob("segmenter_body_train_*"))
    # the default pseudo masks weigh objectness by the CAM agreement (pseudo.cam_overlap)
    pseudo = json.loads((tiny_run / "pseudo" / "pseudo.json").read_text())
    assert pseudo["wiseseg"]["settings"]["cam_overlap"] > 0


def test_training_cams_from_the_cache_match_the_images(tiny_run):
    """The pseudo stage's CAMs come from stage 1's cached features; they must be the CAMs of
    the images (up to the cache's float16)."""
    import numpy as np

    from wiseseg.classifier.model_io import load_classifier
    from wiseseg.classifier.peaks import cam_function
    from wiseseg.classifier.train import ClassifierData, classifier_feature_cache

    cfg = load_config(tiny_run / "config.yaml")
    model, ccfg, _ = load_classifier(tiny_run / "classifier" / "model.pt")
    split = api.open_dataset(cfg["data"]["spec"]).weak("train")
    size = ccfg["input_size"]
    feats = classifier_feature_cache(
        model, ClassifierData(split, size, hflip=bool(cfg["peaks"]["flip"])), "cpu",
        tiny_run / "cache" / "classifier_features", progress=False)
    cached = cam_function(model, size, cfg["peaks"], "cpu", split, feats)
    direct = cam_function(model, size, cfg["peaks"], "cpu")
    for rec in list(split.records)[:4]:
        a, b = cached(rec), direct(rec)
        assert sorted(a) == sorted(rec.labels) == sorted(b)
        for c in a:
            assert a[c].shape == (rec.height, rec.width)
            np.testing.assert_allclose(a[c], b[c], atol=0.02 * max(1.0, np.abs(b[c]).max()))


def test_val_features_cached_by_stage1_serve_its_evaluation_and_the_peaks(tiny_run):
    """Stage 1 caches the validation images' features (with the mirror images the peaks
    average over); its classification mAP comes from them, and the peaks stage reads the
    same file instead of running the backbone on the validation images again."""
    import numpy as np
    import torch

    from wiseseg.classifier.model_io import load_classifier
    from wiseseg.classifier.train import (
        ClassifierData,
        classification_map,
        classifier_feature_cache,
    )
    from wiseseg.data.transforms import to_tensor

    cfg = load_config(tiny_run / "config.yaml")
    stem = tiny_run / "cache" / "classifier_features_val"
    assert stem.with_suffix(".features").is_file()
    model, ccfg, _ = load_classifier(tiny_run / "classifier" / "model.pt")
    val = api.open_dataset(cfg["data"]["spec"]).weak("val")
    data = ClassifierData(val, ccfg["input_size"], hflip=bool(cfg["peaks"]["flip"]))

    class NoImages(ClassifierData):
        def base_image(self, index):
            raise AssertionError("the validation features were computed again")

    # the file stage 1 wrote is what the peaks stage opens
    feats = classifier_feature_cache(
        model, NoImages(val, ccfg["input_size"], hflip=bool(cfg["peaks"]["flip"])), "cpu",
        stem, progress=False)
    assert feats.flips == bool(cfg["peaks"]["flip"]) and len(feats) == len(val.records)
    model.eval()
    with torch.no_grad():
        x = torch.stack([to_tensor(data.base_image(i)) for i in range(4)])
        direct = model(x)["scores"]
        cached = model(features=torch.stack([feats.get(i, False)["x"] for i in range(4)])
                       .float())["scores"]
    np.testing.assert_allclose(cached, direct, atol=0.02 * max(1.0, float(direct.abs().max())))
    assert abs(classification_map(model, data, "cpu", features=feats)
               - classification_map(model, data, "cpu")) < 0.05
    summary = json.loads((tiny_run / "classifier" / "stage.json").read_text())["summary"]
    assert 0.0 <= summary["val_cls_mAP"] <= 1.0


def test_rerun_skips_every_stage(tiny_run):
    res = _rerun(tiny_run)
    assert res.metrics["run"]["ran"] == []
    assert res.metrics["run"]["skipped"] == STAGES_ALL


def test_changed_setting_reruns_only_dependants(tiny_run):
    res = _rerun(tiny_run, "prm.nms_iou=0.5")
    assert res.metrics["run"]["ran"] == ["prm", "evaluate"]
    res = _rerun(tiny_run, "prm.nms_iou=0.5", "evaluate.min_score=0.1")
    assert res.metrics["run"]["ran"] == ["evaluate"]
    res = _rerun(tiny_run, "pseudo.cam_overlap=0.0")  # the paper's objectness alone
    assert res.metrics["run"]["ran"][:2] == ["pseudo", "wise"]
    assert "classifier" not in res.metrics["run"]["ran"]
    _rerun(tiny_run)  # back to the fixture's settings for the other tests


def test_beyond_the_paper_options_run(tiny_run):
    """PRM-scored candidates and a self-training round run end to end; the reference on true
    masks does not rerun for settings that concern pseudo masks only."""
    res = _rerun(tiny_run, "pseudo.prm_candidates=2", "segmenter.rounds=2",
                 "segmenter.self_training_score=0.0")
    ran = res.metrics["run"]["ran"]
    assert ran[:2] == ["pseudo", "wise"] and "reference" not in ran
    assert "classifier" not in ran and "proposals" not in ran
    wise = tiny_run / "wise"
    assert (wise / "round1" / "model.pt").is_file() and (wise / "model.pt").is_file()
    relabelled = json.loads((wise / "pseudo.json").read_text())
    assert relabelled["wiseseg"]["settings"]["self_training_round"] == 2
    rounds = json.loads((wise / "stage.json").read_text())["summary"]["rounds"]
    assert rounds[0]["images"] == len(relabelled["images"])
    pseudo = json.loads((tiny_run / "pseudo" / "pseudo.json").read_text())
    assert pseudo["wiseseg"]["settings"]["prm_candidates"] == 2
    _rerun(tiny_run)  # back to the fixture's settings for the other tests


def test_killed_run_resumes(tmp_path, tiny_run):
    """Kill `wiseseg run` during Mask R-CNN training; the rerun resumes that stage."""
    cfg = load_config(tiny_run / "config.yaml")
    spec = cfg["data"]["spec"]
    out = tmp_path / "run"
    overrides = [f"{k}={v}" for k, v in (
        ("classifier.steps", 2), ("classifier.batch_size", 4), ("classifier.input_size", 48),
        ("segmenter.steps", 40), ("segmenter.batch_size", 1), ("segmenter.min_size", 48),
        ("segmenter.max_size", 48), ("segmenter.checkpoint_every", 2),
        ("proposals.workers", 1))]
    cmd = [sys.executable, "-m", "wiseseg", "run", "--data", spec, "--out", str(out),
           "--no-reference", "-q", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / "wise" / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while time.time() < deadline and not ckpt.exists() and proc.poll() is None:
        time.sleep(0.1)
    assert ckpt.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() else "timeout"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stage = json.loads((out / "wise" / "stage.json").read_text())
    assert stage["complete"] is False
    assert not (out / "wise" / "model.pt").exists()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    ran = metrics["run"]["ran"]
    assert ran[0] == "wise" and "classifier" not in ran and "proposals" not in ran
    assert json.loads((out / "wise" / "stage.json").read_text())["complete"] is True
    assert "WISE" in done.stdout and "mAP50" in done.stdout
