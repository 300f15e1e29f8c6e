"""Stage 1 end to end at toy scale: training, negatives, peaks, CLI errors, offline weights."""

from __future__ import annotations

import json
import urllib.error

import pytest
import torch

from wiseseg.classifier.model_io import load_classifier
from wiseseg.classifier.train import ClassifierData, classifier_step, train_classifier
from wiseseg.config import apply_overrides, load_preset
from wiseseg.data import open_dataset
from wiseseg.data.dataset import ImageRecord, WeakSplit
from wiseseg.errors import WisesegError
from wiseseg.models.peak_ops import class_balance_weights

SPEC = "shapes:train=8,val=4,size=48,seed=2"
TINY = ["classifier.steps=3", "classifier.batch_size=4", "classifier.input_size=48",
        "classifier.backbone=efficientnet_lite0",
        "classifier.checkpoint_every=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ds = open_dataset(SPEC, progress=False)
    cfg = apply_overrides(load_preset("cpu"), TINY)
    out = tmp_path_factory.mktemp("cls")
    path = train_classifier(ds.weak("train"), cfg["classifier"], out, val=ds.weak("val"),
                            progress=False)
    return ds, cfg, out, path


def test_training_writes_a_loadable_model(trained):
    ds, cfg, out, path = trained
    model, ccfg, classes = load_classifier(path)
    assert classes == list(ds.classes) and ccfg["input_size"] == 48
    assert not model.training
    cams = model.cams(torch.rand(2, 3, 48, 48))
    assert cams.shape[:2] == (2, len(classes))
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 3 and "eval/val_cls_mAP" in lines[-1]
    assert (out / "checkpoints" / "last.pt").exists()


def test_negative_images_train(tmp_path):
    """An image without any label contributes a loss that pushes every class down."""
    ds = open_dataset(SPEC, progress=False)
    r = ds.records("train")[0]
    neg = ImageRecord(r.id, r.name, r.path, r.height, r.width, frozenset())
    data = ClassifierData(WeakSplit("train", ds.classes, (neg,)), 48)
    x, y = data.load(0, __import__("numpy").random.default_rng(0))
    assert y.sum() == 0
    cfg = apply_overrides(load_preset("cpu"), TINY)["classifier"]
    path = train_classifier(WeakSplit("train", ds.classes, (neg,)), cfg, tmp_path,
                            progress=False)
    model, _, _ = load_classifier(path)
    with torch.no_grad():
        assert torch.isfinite(model(x[None], y[None])["loss"])


def test_class_balance_weights_are_used_and_recorded(tmp_path):
    """``classifier.class_balance``: the weights of the training labels are recorded in the
    model file, and the training step passes them to the loss, which they change."""
    ds = open_dataset(SPEC, progress=False)
    cfg = apply_overrides(load_preset("cpu"), TINY + ["classifier.class_balance=1.0"])
    path = train_classifier(ds.weak("train"), cfg["classifier"], tmp_path, progress=False)
    data = ClassifierData(ds.weak("train"), 48)
    labels = torch.stack([data.labels(i) for i in range(len(data))])
    expected = class_balance_weights(labels, 1.0)
    saved = torch.load(path, weights_only=True)["class_weights"]
    assert saved == pytest.approx(expected.tolist(), abs=1e-4)
    assert not torch.allclose(expected, torch.ones_like(expected))  # the test can fail
    model, _, _ = load_classifier(path)
    x = torch.stack([data.load(i, __import__("numpy").random.default_rng(0))[0]
                     for i in range(4)])
    with torch.no_grad():
        plain = model(x, labels[:4])["loss"]
        weighted = model(x, labels[:4], pos_weight=expected)["loss"]
    assert not torch.isclose(plain, weighted)
    step = classifier_step(model, (x, labels[:4]), "cpu", pos_weight=expected)["loss"]
    assert torch.isclose(step.detach(), weighted)
    plain_cfg = apply_overrides(load_preset("cpu"), TINY)["classifier"]
    path0 = train_classifier(ds.weak("train"), plain_cfg, tmp_path / "plain", progress=False)
    assert torch.load(path0, weights_only=True)["class_weights"] is None


def test_peaks_cli_and_peak_file(trained, tmp_path, run_cli):
    _, _, _, path = trained
    out = tmp_path / "peaks.json"
    code, stdout, err = run_cli("peaks", "--checkpoint", path, "--data", SPEC, "--split",
                                "val", "--out", out, "-q")
    assert code == 0, err
    data = json.loads(out.read_text())
    assert len(data["images"]) == 4 and data["classes"][0] == "circle"
    for im in data["images"]:
        for p in im["peaks"]:
            assert p["class"] in im["labels"]  # only labelled classes
            assert 0 <= p["y"] < im["height"] and 0 <= p["x"] < im["width"]
    code, _, err = run_cli("show-peaks", "--checkpoint", path, "--data", SPEC, "--split", "val",
                           "--out", tmp_path / "vis", "--limit", "2", "-q")
    assert code == 0, err
    assert len(list((tmp_path / "vis").glob("*.png"))) == 2


def test_cli_errors(trained, tmp_path, run_cli, voc_root):
    _, _, _, path = trained
    code, _, err = run_cli("peaks", "--checkpoint", tmp_path / "missing.pt", "--data", SPEC,
                           "--out", tmp_path / "p.json")
    assert code == 2 and "missing.pt: classifier checkpoint not found" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli("peaks", "--checkpoint", path, "--data", voc_root, "--split", "val",
                           "--out", tmp_path / "p.json")
    assert code == 2 and "classifier was trained on 6 classes" in err and "dataset has 20" in err
    code, _, err = run_cli("train-classifier", "--data", SPEC, "--out", tmp_path / "c",
                           "--backbone", "resnet7", "-q")
    assert code == 2 and "unknown backbone 'resnet7'" in err
    code, _, err = run_cli("train-classifier", "--data", SPEC, "--out", tmp_path / "c",
                           "classifier.no_such_key=1", "-q")
    assert code == 2 and "unknown setting 'classifier.no_such_key'" in err


def test_imagenet_weights_offline_message(monkeypatch):
    import torchvision

    from wiseseg.models.backbones import build_backbone

    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__,
                        "get_state_dict", offline)
    with pytest.raises(WisesegError, match="cannot get ImageNet weights for resnet18.*"
                                           "--backbone-weights PATH"):
        build_backbone("resnet18", "imagenet")


def test_local_backbone_weights(tmp_path):
    from wiseseg.models.backbones import build_backbone

    a = build_backbone("resnet18", "none")
    torch.save(a.body.state_dict(), tmp_path / "w.pt")
    b = build_backbone("resnet18", "none", weights=tmp_path / "w.pt")
    assert torch.equal(a.body.conv1.weight, b.body.conv1.weight)
    torch.save({"junk": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(WisesegError, match="do not fit"):
        build_backbone("resnet18", "none", weights=tmp_path / "bad.pt")


def test_unresolved_auto_backbone_names_the_fix():
    """The Python API with a preset's `auto` left in: one clear error, not an unknown name."""
    from wiseseg.classifier.model_io import build_peakcam
    from wiseseg.errors import ConfigError

    cfg = load_preset("cpu")["classifier"]
    assert cfg["backbone"] == "auto"
    with pytest.raises(ConfigError, match=r"classifier\.backbone is 'auto'.*resolve_auto"):
        build_peakcam(cfg, 3)


def test_upper_stages_train_on_cached_lower_maps(tmp_path):
    """With frozen lower stages the cache holds c3 and the stages above it train: the cached
    path computes what the image path computes, and training changes those stages only."""
    from wiseseg.classifier.model_io import build_peakcam
    from wiseseg.classifier.train import TRAIN_FEATURES, cache_level

    ds = open_dataset(SPEC, progress=False)
    over = [*TINY, "classifier.train_backbone=true", "classifier.frozen_stages=2",
            "classifier.freeze_bn=true", "classifier.pretrained=none"]
    cfg = apply_overrides(load_preset("cpu"), over)["classifier"]
    torch.manual_seed(0)
    model = build_peakcam(cfg, len(ds.classes)).eval()
    assert cache_level(model, cfg) == (True, "c3")
    assert cache_level(model, {**cfg, "cache_features": False}) == (False, None)
    fixed = build_peakcam({**cfg, "train_backbone": False}, len(ds.classes))
    assert cache_level(fixed, cfg) == (True, None)
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        lower = model.lower_features(x, "c3")
        assert torch.allclose(model(features=lower, features_level="c3")["cams"],
                              model(x)["cams"], atol=1e-5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = train_classifier(ds.weak("train"), cfg, tmp_path, progress=False,
                            feature_cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").glob(TRAIN_FEATURES + "*"))  # trained on cached c3
    trained_sd = torch.load(path, weights_only=True)["model"]
    changed = {k for k, v in trained_sd.items() if k in before and v.is_floating_point()
               and not torch.equal(v, before[k])}
    stage_of = {k: k.split(".")[3] for k in changed if k.startswith("backbone.body.stages.")}
    assert stage_of and set(stage_of.values()) <= {"3", "4"}  # c4's stages, not c2/c3's
    assert not any(k.startswith(("backbone.body.stem", "backbone.body.stages.0.",
                                 "backbone.body.stages.1.", "backbone.body.stages.2."))
                   for k in changed)
    assert any(k.startswith("classifier.") for k in changed)
