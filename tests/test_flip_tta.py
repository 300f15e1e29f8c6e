"""Test-time flip (``predict.flip``, wiseseg.models.flip_tta): without the mirror it is the
model's own inference; with it, the merge treats the image and its mirror alike; the pure
pieces handle zero detections."""

from __future__ import annotations

import json

import pytest
import torch

from wiseseg.models.flip_tta import detect_with_flip, merge_views, mirror_boxes
from wiseseg.models.maskrcnn import build_maskrcnn

_SMALL = dict(backbone="efficientnet_lite0", pretrained="none", frozen_stages=4,
              fpn_channels=16, representation_size=32, mask_layers=(16, 16),
              anchor_sizes=(16, 32, 64, 128, 256), min_size=96, max_size=96,
              rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
              box_score_thresh=0.0, box_detections_per_img=200)  # no cut among ties


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_maskrcnn(3, **_SMALL).eval()


def _images():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 96, 96, generator=g), torch.rand(3, 80, 112, generator=g)]


def test_mirror_boxes_maps_x_to_width_minus_x() -> None:
    b = torch.tensor([[10.0, 5.0, 30.0, 25.0], [0.0, 0.0, 100.0, 50.0]])
    torch.testing.assert_close(mirror_boxes(b, 100),
                               torch.tensor([[70.0, 5.0, 90.0, 25.0], [0.0, 0.0, 100.0, 50.0]]))
    torch.testing.assert_close(mirror_boxes(mirror_boxes(b, 100), 100), b)
    assert mirror_boxes(torch.zeros(0, 4), 100).shape == (0, 4)


def test_merge_keeps_the_better_of_a_duplicate_per_class_and_the_limit() -> None:
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes, scores, labels = merge_views(
        [box, box + 0.5, box], [torch.tensor([0.6]), torch.tensor([0.9]), torch.tensor([0.4])],
        [torch.tensor([1]), torch.tensor([1]), torch.tensor([2])], nms_iou=0.5, limit=10)
    assert scores.tolist() == pytest.approx([0.9, 0.4]) and labels.tolist() == [1, 2]
    torch.testing.assert_close(boxes[0], box[0] + 0.5)
    _, s, _ = merge_views([box, box + 50], [torch.tensor([0.6]), torch.tensor([0.9])],
                          [torch.tensor([1]), torch.tensor([1])], nms_iou=0.5, limit=1)
    assert s.tolist() == pytest.approx([0.9])
    empty = torch.zeros(0, 4)
    b, s, lab = merge_views([empty, empty], [torch.zeros(0)] * 2,
                            [torch.zeros(0, dtype=torch.int64)] * 2, nms_iou=0.5, limit=10)
    assert b.shape == (0, 4) and s.shape == (0,) and lab.shape == (0,)


def test_without_the_mirror_it_is_the_models_own_inference(model) -> None:
    ims = _images()
    with torch.no_grad():
        ref = model(ims)
        ours = detect_with_flip(model, ims, mirror=False)
    for a, b in zip(ref, ours):
        assert len(a["scores"]) > 0
        for k in ("boxes", "scores", "labels", "masks"):
            assert torch.equal(a[k], b[k]), k


def test_flip_treats_the_image_and_its_mirror_alike(model) -> None:
    """The merged detections of the mirror image are those of the image, mirrored: the
    mirror's boxes go back to the right place and its masks are turned the right way."""
    ims = _images()
    with torch.no_grad():
        plain = detect_with_flip(model, ims)
        mirrored = detect_with_flip(model, [im.flip(-1) for im in ims])
    for im, a, b in zip(ims, plain, mirrored):
        w = im.shape[-1]
        assert len(a["scores"]) > 0 and len(a["scores"]) == len(b["scores"])
        assert a["masks"].shape[-2:] == im.shape[-2:]
        # the same detections; equal scores may come in either order
        ka, kb = _order(a["boxes"], a["scores"], a["labels"]), _order(
            mirror_boxes(b["boxes"], w), b["scores"], b["labels"])
        torch.testing.assert_close(b["scores"][kb], a["scores"][ka])
        assert torch.equal(b["labels"][kb], a["labels"][ka])
        torch.testing.assert_close(mirror_boxes(b["boxes"], w)[kb], a["boxes"][ka], atol=1e-3,
                                   rtol=1e-4)
        # masks: pasting a box's mask into the image rounds its edges to pixels, which is
        # not mirror-symmetric where a box meets the image border: a few edge pixels differ
        diff = (b["masks"][kb].flip(-1) - a["masks"][ka]).abs()
        assert float((diff > 1e-4).float().mean()) < 1e-3 and float(diff.mean()) < 1e-4


def _order(boxes, scores, labels):
    """Detections sorted by (label, score rounded, box), for order-free comparisons."""
    keys = [(int(lab), round(float(s), 5), *(round(float(v), 2) for v in b))
            for b, s, lab in zip(boxes, scores, labels)]
    return torch.tensor(sorted(range(len(keys)), key=keys.__getitem__), dtype=torch.long)


def test_flip_finds_what_either_view_finds(model) -> None:
    ims = _images()
    with torch.no_grad():
        plain = detect_with_flip(model, ims, mirror=False)
        both = detect_with_flip(model, ims)
    for a, b in zip(plain, both):
        # the union of two views, suppressed: never a lower best score, at most the limit
        assert float(b["scores"].max()) >= float(a["scores"].max())
        assert len(b["scores"]) <= _SMALL["box_detections_per_img"]
        assert torch.all(b["scores"][:-1] >= b["scores"][1:])


def test_predict_command_takes_predict_flip(tiny_run, tmp_path, run_cli) -> None:
    from tests.conftest import TINY_SPEC

    out = tmp_path / "preds.json"
    code, _, err = run_cli("predict", "--data", TINY_SPEC, "--split", "val", "--checkpoint",
                           tiny_run / "wise" / "model.pt", "--out", out, "-q",
                           "predict.flip=true", "predict.min_score=0")
    assert code == 0, err
    preds = json.loads(out.read_text())
    assert isinstance(preds, list)
    for p in preds:
        assert {"image_id", "category_id", "segmentation", "bbox", "score"} <= set(p)
