"""Mask R-CNN's exact CPU shortcuts (``cpu_shortcuts``: the lean RPN, the RPN head's sparse
backward, the matrix-product mask predictor) learn what torchvision's modules learn: the same
parameters from the same seed, the same losses and gradients of a training step on cached
features (to float rounding), the same predictions, and the same state-dict keys."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead

from wiseseg.models.heads import MatmulMaskRCNNPredictor
from wiseseg.models.maskrcnn import MaskRCNNOnFeatures, body_features, build_maskrcnn
from wiseseg.models.rpn import SparseGradRPNHead
from wiseseg.models.sparse_conv import SparseGradConv2d

_SMALL = dict(backbone="efficientnet_lite0", pretrained="none", frozen_stages=4,
              fpn_channels=16, representation_size=32, mask_layers=(16, 16),
              anchor_sizes=(16, 32, 64, 128, 256), min_size=96, max_size=96,
              rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
              rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
              rpn_batch_size_per_image=64, box_batch_size_per_image=32,
              box_detections_per_img=20)


def _model(shortcuts: bool, backward: str = "sparse"):
    torch.manual_seed(0)
    return build_maskrcnn(3, roi_align_backward=backward, cpu_shortcuts=shortcuts, **_SMALL)


def _batch(size: int = 96, n: int = 3, objects: tuple[int, ...] = (2, 0, 3)):
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, size, size, generator=g) for _ in range(n)]
    targets = []
    for k in objects:
        corners = torch.randint(0, size - 30, (k, 2), generator=g)
        sides = torch.randint(8, 30, (k, 1), generator=g)
        masks = torch.zeros(k, size, size, dtype=torch.uint8)
        for m, ((x, y), s) in enumerate(zip(corners.tolist(), sides.flatten().tolist())):
            masks[m, y:y + s, x:x + s] = 1
        targets.append({"boxes": torch.cat([corners, corners + sides], 1).float(),
                        "labels": torch.randint(1, 4, (k,), generator=g), "masks": masks})
    return images, targets


def _step(model, feats, size, targets):
    """Losses and the gradient of every trainable parameter of one step (RPN and RoI
    sampling seeded alike)."""
    torch.manual_seed(5)
    net = MaskRCNNOnFeatures(model.train())
    losses = net(feats, [(size, size)] * len(feats), targets)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad(sum(losses.values()), list(params.values()),
                                allow_unused=True)
    return ({k: v.detach() for k, v in losses.items()},
            {n: g for n, g in zip(params, grads)})


def test_same_parameters_keys_and_modules():
    plain, lean = _model(False), _model(True)
    a, b = plain.state_dict(), lean.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert isinstance(lean.rpn.head, SparseGradRPNHead)
    assert isinstance(lean.roi_heads.mask_predictor, MatmulMaskRCNNPredictor)
    assert type(plain.rpn.head) is RPNHead
    assert type(plain.roi_heads.mask_predictor) is MaskRCNNPredictor
    # a checkpoint of either loads into the other
    plain.load_state_dict(b)
    lean.load_state_dict(a)


@pytest.mark.parametrize("backward", ["torchvision", "sparse"])
def test_training_step_losses_and_gradients_equal_torchvision(backward):
    plain, lean = _model(False, "torchvision"), _model(True, backward)
    images, targets = _batch()
    with torch.no_grad():
        feats = body_features(plain.eval(), images)
    want_loss, want_grad = _step(plain, feats, 96, copy.deepcopy(targets))
    got_loss, got_grad = _step(lean, feats, 96, copy.deepcopy(targets))
    assert set(got_loss) == set(want_loss)
    for k in want_loss:
        assert torch.allclose(got_loss[k], want_loss[k], rtol=1e-5, atol=1e-6), k
    assert set(got_grad) == set(want_grad)
    for name, want in want_grad.items():
        got = got_grad[name]
        if want is None:
            assert got is None or torch.count_nonzero(got) == 0, name
            continue
        scale = float(want.abs().max()) + 1e-8
        assert float((got - want).abs().max()) <= 1e-4 * scale, name
    # the RPN head's gradient is not trivially zero (the sparse backward was exercised)
    assert float(got_grad["rpn.head.conv.0.0.weight"].abs().max()) > 0


def test_background_only_batch_and_no_sampled_positive():
    """Images without objects: no positive anchor, no mask RoI — the sparse paths see empty
    selections and still match."""
    plain, lean = _model(False), _model(True)
    images, targets = _batch(objects=(0, 0, 0))
    with torch.no_grad():
        feats = body_features(plain.eval(), images)
    want_loss, want_grad = _step(plain, feats, 96, targets)
    got_loss, got_grad = _step(lean, feats, 96, targets)
    for k in want_loss:
        assert torch.allclose(got_loss[k], want_loss[k], rtol=1e-5, atol=1e-6), k
    for name, want in want_grad.items():
        if want is not None:
            assert torch.allclose(got_grad[name], want, rtol=1e-4, atol=1e-7), name


def test_predictions_equal_torchvision():
    plain, lean = _model(False), _model(True)
    images, _ = _batch()
    with torch.no_grad():
        want = plain.eval()(images)
        got = lean.eval()(images)
    for a, b in zip(want, got):
        assert torch.equal(a["labels"], b["labels"])
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-4)
        assert torch.allclose(a["scores"], b["scores"], atol=1e-5)
        assert torch.allclose(a["masks"], b["masks"], atol=1e-5)


@pytest.mark.parametrize("coverage", [0.05, 0.9])
def test_sparse_grad_conv_equals_dense(coverage):
    """Both paths of SparseGradConv2d's backward (few positions: gathered patches; many:
    the dense backward), border positions included, against nn.Conv2d."""
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(5, 7, 3, padding=1)
    fast = SparseGradConv2d.from_conv(copy.deepcopy(conv))
    x = torch.randn(3, 5, 9, 11, requires_grad=True)
    seed = torch.randn(3, 7, 9, 11) * (torch.rand(3, 1, 9, 11) < coverage)
    seed[0, :, 0, 0] = 1.0  # corners and edges read the zero padding
    seed[2, :, -1, -1] = -1.0
    seed[1, :, 4, -1] = 0.5
    want = torch.autograd.grad(conv(x), [x, conv.weight, conv.bias], seed)
    y = fast(x)
    assert torch.equal(y, conv(x))
    got = torch.autograd.grad(y, [x, fast.weight, fast.bias], seed)
    for a, b in zip(want, got):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_sparse_grad_conv_no_gradient_and_other_convs():
    conv = SparseGradConv2d.from_conv(torch.nn.Conv2d(4, 4, 3, padding=1))
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    gx, gw = torch.autograd.grad(conv(x), [x, conv.weight], torch.zeros(2, 4, 6, 6))
    assert torch.count_nonzero(gx) == 0 and torch.count_nonzero(gw) == 0
    # a strided convolution is nn.Conv2d's own
    strided = SparseGradConv2d.from_conv(torch.nn.Conv2d(4, 4, 3, stride=2, padding=1))
    assert not strided._sparse_ok(x)


def test_detections_from_body_maps_equal_the_forward():
    """Predicting from each image's own body maps (what the run's body cache holds) gives the
    forward's detections on a batch of same-size images, at the images' own size."""
    from wiseseg.models.maskrcnn import body_features_sized, detect_from_body

    model = _model(True).eval()
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 80, 72, generator=g) for _ in range(3)]  # resized to 96 and back
    with torch.no_grad():
        want = model(images)
        feats, sizes = body_features_sized(model, images)
        got = detect_from_body(model, feats, sizes, [(80, 72)] * 3)
    assert sizes == [(96, 86)] * 3
    assert sum(len(w["labels"]) for w in want) > 0
    for a, b in zip(want, got):
        assert torch.equal(a["labels"], b["labels"])
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-3)
        assert torch.allclose(a["scores"], b["scores"], atol=1e-5)
        assert a["masks"].shape[-2:] == (80, 72)
        assert torch.allclose(a["masks"], b["masks"], atol=1e-4)
