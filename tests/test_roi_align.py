"""RoIAlign's CPU training forms — the sparse backward behind torchvision's forward, and the
separable products for small maps: torchvision's values and gradient (border rules, tiny and
out-of-image boxes, several images and levels, an image without RoIs), zero RoIs."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align

import wiseseg.models.roi_align as ra
from wiseseg.models.roi_align import FastMultiScaleRoIAlign, roi_align


def _rois(n_img: int, h: int, w: int, scale: float, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    H, W = h / scale, w / scale
    xy = torch.rand(n, 2, generator=g) * torch.tensor([W, H]) * 0.9
    wh = torch.rand(n, 2, generator=g) * torch.tensor([W, H]) * 0.5 + 0.5
    rois = torch.cat([torch.randint(0, n_img, (n, 1), generator=g).float(), xy, xy + wh], 1)
    edge = torch.tensor([[-10.0, -10, 20, 20], [0, 0, W + 5, H + 8], [3, 3, 3.5, 3.2],
                         [W - 1, H - 1, W + 3, H + 3], [-20, 5, -5, 9]])
    rois[: len(edge), 1:] = edge
    return rois


@pytest.fixture(params=["sparse", "separable"])
def form(request, monkeypatch):
    """Both CPU forms of the training path: the sparse backward behind torchvision's forward
    (large maps) and the separable products (small maps)."""
    monkeypatch.setattr(ra, "SEPARABLE_MAX_CELLS", 0 if request.param == "sparse" else 10**9)
    return request.param


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("out,ratio,scale", [(7, 2, 0.25), (14, 2, 0.125), (5, 1, 0.5)])
def test_gradient_equals_torchvision(out, ratio, scale, aligned, form):
    torch.manual_seed(0)
    feats = torch.randn(3, 4, 11, 13, requires_grad=True)
    rois = _rois(3, 11, 13, scale, 40)
    seed = torch.randn(40, 4, out, out)
    want_y = tv_roi_align(feats, rois, (out, out), scale, ratio, aligned)
    (want,) = torch.autograd.grad(want_y, feats, seed)
    got_y = roi_align(feats, rois, (out, out), scale, ratio, aligned)
    (got,) = torch.autograd.grad(got_y, feats, seed)
    if form == "sparse":
        assert torch.equal(got_y, want_y)  # torchvision's own forward
    assert torch.allclose(got_y, want_y, rtol=1e-5, atol=1e-6)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_zero_rois_and_fallbacks(form):
    feats = torch.randn(2, 3, 8, 8, requires_grad=True)
    none = torch.zeros(0, 5)
    y = roi_align(feats, none, (7, 7), 0.25, 2)
    assert y.shape == (0, 3, 7, 7)
    (g,) = torch.autograd.grad(y.sum() + 0 * feats.sum(), feats)
    assert torch.count_nonzero(g) == 0
    # adaptive sampling is torchvision's own
    rois = _rois(2, 8, 8, 0.25, 6)
    assert torch.equal(roi_align(feats, rois, (7, 7), 0.25, 0),
                       tv_roi_align(feats, rois, (7, 7), 0.25, 0))
    with pytest.raises(ValueError, match="backward"):
        roi_align(feats, rois, (7, 7), 0.25, 2, backward="fast")


@pytest.mark.parametrize("aligned", [False, True])
def test_predicting_without_gradient_gives_torchvisions_values(aligned, form):
    """Without autograd (predicting) small maps take the separable forward, larger ones
    torchvision's own; the values are torchvision's either way, zero RoIs included."""
    torch.manual_seed(3)
    feats = torch.randn(2, 5, 9, 12)
    rois = _rois(2, 9, 12, 0.125, 30)
    want = tv_roi_align(feats, rois, (14, 14), 0.125, 2, aligned)
    with torch.no_grad():
        got = roi_align(feats, rois, (14, 14), 0.125, 2, aligned)
        none = roi_align(feats, torch.zeros(0, 5), (14, 14), 0.125, 2, aligned)
    if form == "sparse":
        assert torch.equal(got, want)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert none.shape == (0, 5, 14, 14)


def test_multiscale_pooler_matches_torchvision(form):
    torch.manual_seed(1)
    names = ["0", "1", "2", "3"]
    feats = {k: torch.randn(2, 4, 64 // 2**i, 64 // 2**i, requires_grad=True)
             for i, k in enumerate(names)}
    boxes = [torch.tensor([[2.0, 3, 30, 40], [10, 10, 250, 200], [0, 0, 5, 6]]),
             torch.tensor([[50.0, 60, 120, 180]])]
    sizes = [(256, 256), (256, 256)]
    outs = []
    for pool in (MultiScaleRoIAlign(names, 7, 2), FastMultiScaleRoIAlign(names, 7, 2)):
        y = pool(feats, boxes, sizes)
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(),
                                    list(feats.values()))
        outs.append((y, grads))
    assert torch.allclose(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(outs[0][1], outs[1][1]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert FastMultiScaleRoIAlign(names, 7, 2, backward="torchvision").backward == "torchvision"


def test_multiscale_pooler_all_rois_on_one_level(form):
    """Small boxes all map to the finest level: that level's output is returned as it is,
    the same values and gradients as torchvision's pooler."""
    torch.manual_seed(3)
    names = ["0", "1", "2", "3"]
    feats = {k: torch.randn(2, 4, 32 // 2**i, 32 // 2**i, requires_grad=True)
             for i, k in enumerate(names)}
    boxes = [torch.tensor([[2.0, 3, 20, 30], [10, 10, 40, 35]]),
             torch.tensor([[50.0, 60, 70, 90]])]
    sizes = [(128, 128), (128, 128)]
    outs = []
    for pool in (MultiScaleRoIAlign(names, 7, 2), FastMultiScaleRoIAlign(names, 7, 2)):
        y = pool(feats, boxes, sizes)
        assert int(pool.map_levels(boxes).max()) == 0
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(),
                                    list(feats.values()), allow_unused=True)
        outs.append((y, grads))
    assert torch.allclose(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(outs[0][1], outs[1][1]):
        if a is None or b is None:
            assert (a is None or torch.count_nonzero(a) == 0) and \
                (b is None or torch.count_nonzero(b) == 0)
        else:
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_images_without_rois(form):
    torch.manual_seed(4)
    feats = torch.randn(3, 2, 9, 9, requires_grad=True)
    rois = _rois(3, 9, 9, 0.5, 6)
    rois[:, 0] = 1.0  # every RoI on the middle image
    seed = torch.randn(6, 2, 7, 7)
    (want,) = torch.autograd.grad(tv_roi_align(feats, rois, (7, 7), 0.5, 2), feats, seed)
    (got,) = torch.autograd.grad(roi_align(feats, rois, (7, 7), 0.5, 2), feats, seed)
    assert torch.count_nonzero(got[0]) == 0 and torch.count_nonzero(got[2]) == 0
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
