"""Dry run of the ``paper`` preset on CPU, so the GPU path cannot rot unnoticed.

The real ``configs/paper.yaml`` drives every command below: ResNet-50 PeakCAM at 448² with
sub-pixel factor 8, SGD with the backbone at ×0.01, torchvision's Mask R-CNN R50-FPN at
800/1333 px, data-loader workers, AMP (a no-op without CUDA). The only overrides are the
ones a CPU without network access needs:

- ``--pretrained none`` for both stages (no ImageNet download here);
- ``classifier.steps=2`` / ``segmenter.steps=2`` instead of 20 epochs / 50k iterations;
- ``classifier.batch_size=2`` (16 images at 448² would take ~50 s per step on 2 cores).

No ``rpn_*`` or size override is needed: two Mask R-CNN steps at 800×800 take ~20 s here.
The shapes images (96 px) are upscaled to the preset's input sizes, so every tensor has the
paper's shape. Whole test: about 45–60 s on this project's 2-core CPU.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

SPEC = "shapes:train=4,val=2,size=96,seed=3"


def _losses(metrics_path) -> list[float]:
    rows = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # the preset's 4 workers
def test_paper_preset_dry_run(tmp_path, run_cli):
    from wiseseg.classifier.model_io import load_classifier
    from wiseseg.config import load_config, load_preset
    from wiseseg.segmenter.model_io import load_segmenter

    preset = load_preset("paper")
    # the settings this dry run is about: full resolution, ResNet-50 on both stages
    assert preset["classifier"]["input_size"] == 448
    assert preset["segmenter"]["min_size"] == 800 and preset["segmenter"]["max_size"] == 1333
    assert preset["classifier"]["backbone"] == preset["segmenter"]["backbone"] == "resnet50"

    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    try:
        cls, seg = tmp_path / "cls", tmp_path / "seg"
        code, out, err = run_cli(
            "train-classifier", "--data", SPEC, "--preset", "paper", "--out", cls,
            "--pretrained", "none", "-q", "classifier.steps=2", "classifier.batch_size=2")
        assert code == 0, err
        code, _, err = run_cli("proposals", "--data", SPEC, "--split", "train",
                               "--out", tmp_path / "props", "--workers", "1")
        assert code == 0, err
        code, out, err = run_cli(
            "pseudo-masks", "--data", SPEC, "--preset", "paper", "--classifier",
            cls / "model.pt", "--proposals", tmp_path / "props", "--out",
            tmp_path / "pseudo.json", "-q")
        assert code == 0, err
        code, out, err = run_cli(
            "train-segmenter", "--data", SPEC, "--preset", "paper", "--pseudo",
            tmp_path / "pseudo.json", "--out", seg, "--pretrained", "none", "-q",
            "segmenter.steps=2")
        assert code == 0, err
        code, out, err = run_cli(
            "predict", "--data", SPEC, "--split", "val", "--preset", "paper", "--checkpoint",
            seg / "model.pt", "--out", tmp_path / "preds.json", "-q")
        assert code == 0, err
    finally:
        torch.set_num_threads(threads)

    # stage 1: the preset's classifier, two finite steps, checkpoint and model written
    saved = load_config(cls / "config.yaml")
    assert saved["preset"] == "paper" and saved["classifier"]["input_size"] == 448
    model, ccfg, _ = load_classifier(cls / "model.pt")
    assert ccfg["upsample"] == 8 and ccfg["optimizer"] == "sgd"
    cams = model.cams(torch.zeros(1, 3, 448, 448))
    assert cams.shape[-2:] == (448 // 32 * 8, 448 // 32 * 8)
    assert (cls / "checkpoints" / "last.pt").exists()
    losses = _losses(cls / "metrics.jsonl")
    assert losses and all(math.isfinite(v) for v in losses)

    pseudo = json.loads((tmp_path / "pseudo.json").read_text())
    assert pseudo["images"] and "annotations" in pseudo

    # stage 2: Mask R-CNN R50-FPN at 800/1333, two finite steps, checkpoint and model written
    assert (seg / "checkpoints" / "last.pt").exists()
    losses = _losses(seg / "metrics.jsonl")
    assert losses and all(math.isfinite(v) for v in losses)
    net, scfg, classes, extras = load_segmenter(seg / "model.pt")
    assert extras["steps"] == 2 and scfg["min_size"] == 800
    assert net.transform.min_size == (800,) and net.transform.max_size == 1333

    # a prediction comes out: a COCO results list for the val images, well formed
    preds = json.loads((tmp_path / "preds.json").read_text())
    assert isinstance(preds, list) and preds  # 2 steps from random init: ~100 per image
    for p in preds:
        assert {"image_id", "category_id", "segmentation", "bbox", "score"} <= set(p)
        assert p["segmentation"]["size"] == [96, 96]
