"""Classes an image leaves unchecked (``segmenter.unlabelled_classes: ignore``): left out of
the box classifier's loss for that image's RoIs only; without them the heads train as
torchvision's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wiseseg.data.dataset import ImageRecord
from wiseseg.models.maskrcnn import MaskRCNNOnFeatures, body_features, build_maskrcnn
from wiseseg.models.partial_heads import PartialLabelRoIHeads, unchecked_mask
from wiseseg.segmenter.data import SegmenterData

_SMALL = dict(backbone="efficientnet_lite0", pretrained="none", frozen_stages=4,
              fpn_channels=16, representation_size=32, mask_layers=(16, 16),
              anchor_sizes=(16, 32, 64, 128, 256), min_size=96, max_size=96,
              rpn_batch_size_per_image=64, box_batch_size_per_image=32)


def test_mask_rows_follow_the_images_and_handle_nothing_to_ignore() -> None:
    t = [{"ignore_classes": torch.tensor([2, 4])}, {}, {"ignore_classes": torch.tensor([1])}]
    m = unchecked_mask([2, 3, 1], t, 5)
    assert m.shape == (6, 5) and m.dtype == torch.bool
    assert m[:2].nonzero()[:, 1].tolist() == [2, 4, 2, 4]
    assert not m[2:5].any() and m[5].nonzero().flatten().tolist() == [1]
    assert unchecked_mask([2, 3], [{}, {"ignore_classes": torch.zeros(0, dtype=torch.int64)}],
                          5) is None
    assert unchecked_mask([0, 0], t[:2], 5).shape == (0, 5)
    with pytest.raises(ValueError, match="1..4"):
        unchecked_mask([1], [{"ignore_classes": torch.tensor([0])}], 5)


def _setup():
    torch.manual_seed(0)
    model = build_maskrcnn(3, **_SMALL).train()
    assert isinstance(model.roi_heads, PartialLabelRoIHeads)
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 96, 96, generator=g) for _ in range(2)]
    with torch.no_grad():
        feats = body_features(model, images)
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]),
                "labels": torch.tensor([1]),
                "masks": torch.zeros(1, 96, 96, dtype=torch.uint8)} for _ in images]
    for t in targets:
        t["masks"][0, 10:60, 10:50] = 1
    return model, feats, targets


def _logits_and_loss(model, feats, targets):
    """The box classifier's logits as the loss sees them, and the loss, of one step."""
    seen = {}
    h = model.roi_heads.box_predictor.register_forward_hook(
        lambda m, i, o: seen.__setitem__("logits", o[0]))
    torch.manual_seed(3)  # the same RPN / RoI samples in every call
    losses = MaskRCNNOnFeatures(model)(feats, [(96, 96)] * 2, targets)
    h.remove()
    return seen["logits"], losses


def test_unchecked_classes_leave_the_softmax_of_their_image_only() -> None:
    model, feats, targets = _setup()
    plain_logits, plain = _logits_and_loss(model, feats, targets)
    ignored = [{**targets[0], "ignore_classes": torch.tensor([3])}, targets[1]]
    logits, losses = _logits_and_loss(model, feats, ignored)
    n0 = len(logits) // 2  # box_batch_size_per_image RoIs an image
    # image 0's RoIs: class 3 masked; image 1 and the other classes as before
    assert torch.all(logits[:n0, 3] <= -1e3)
    torch.testing.assert_close(logits[:n0, :3], plain_logits[:n0, :3])
    torch.testing.assert_close(logits[n0:], plain_logits[n0:])
    # the loss is the cross-entropy over the classes each image checked
    for k in ("loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"):
        torch.testing.assert_close(losses[k], plain[k])
    assert float(losses["loss_classifier"].detach()) < float(plain["loss_classifier"].detach())


def test_no_gradient_pushes_an_unchecked_class_down() -> None:
    model, feats, targets = _setup()
    ignored = [{**targets[0], "ignore_classes": torch.tensor([3])},
               {**targets[1], "ignore_classes": torch.tensor([3])}]
    model.zero_grad()
    _, losses = _logits_and_loss(model, feats, ignored)
    losses["loss_classifier"].backward()
    w = model.roi_heads.box_predictor.cls_score
    assert float(w.weight.grad[3].abs().sum()) == 0.0 and float(w.bias.grad[3]) == 0.0
    assert float(w.weight.grad[0].abs().sum()) > 0  # background and the rest still learn


def test_without_unchecked_classes_the_heads_train_as_torchvisions() -> None:
    model, feats, targets = _setup()
    _, ours = _logits_and_loss(model, feats, targets)
    model.roi_heads.__class__ = type(model.roi_heads).__mro__[1]  # torchvision's RoIHeads
    _, theirs = _logits_and_loss(model, feats, targets)
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k])


def test_data_names_the_unchecked_classes_only_when_asked(tmp_path) -> None:
    from PIL import Image

    p = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(p)
    rec = ImageRecord(id=1, path=p, name="a.png", height=32, width=32, labels=frozenset({0}),
                      unknown=frozenset({2, 4}))
    full = ImageRecord(id=2, path=p, name="a.png", height=32, width=32, labels=frozenset({0}))
    for mode, expected in (("ignore", [3, 5]), ("background", None)):
        data = SegmenterData([rec, full], {}, 32, 32, hflip=False, unlabelled_classes=mode)
        t = data.load(0, np.random.default_rng(0))[1]
        assert (t["ignore_classes"].tolist() if "ignore_classes" in t else None) == expected
        assert "ignore_classes" not in data.load(1, np.random.default_rng(0))[1]
    with pytest.raises(ValueError, match="unlabelled_classes"):
        SegmenterData([rec], {}, 32, 32, unlabelled_classes="drop")
