"""Peak backpropagation: the excitation rule of one convolution as written in the PRM paper,
batched peaks giving the per-peak maps, one retained forward pass serving the CAM and every
peak, and zero peaks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wiseseg.models.backbones import build_backbone
from wiseseg.models.peak_ops import Peak
from wiseseg.models.peak_response import (
    PeakBackprop,
    _ExcitationConv2d,
    excitation_twin,
    peak_batch_size,
    peak_response_maps,
)
from wiseseg.models.peakcam import PeakCAM


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    out = {}
    for name, feature in (("resnet18", "c3"), ("efficientnet_lite0", "c4")):
        out[name] = PeakCAM(build_backbone(name, "none"), num_classes=3, feature=feature,
                            head_channels=(16,)).eval()
    return out


@pytest.mark.parametrize("conf", [
    dict(stride=1, padding=1, dilation=1, groups=1, k=3, size=(9, 11)),
    dict(stride=2, padding=0, dilation=1, groups=6, k=3, size=(10, 13)),  # depthwise, odd
    dict(stride=2, padding=2, dilation=2, groups=2, k=3, size=(12, 9)),
    dict(stride=1, padding=0, dilation=1, groups=1, k=1, size=(7, 7)),
])
def test_excitation_rule_of_one_convolution(conf):
    """P(x_i) = (x_i − min x) · Σ_j w_ij⁺ P(y_j) / Σ_i' (x_i' − min x) w_i'j⁺, written with
    ``conv2d_input`` (the transposed convolution) on a contiguous tensor."""
    torch.manual_seed(1)
    s, p, d, g, k = conf["stride"], conf["padding"], conf["dilation"], conf["groups"], conf["k"]
    x = torch.randn(1, 6, *conf["size"]).contiguous(memory_format=torch.channels_last)
    w = torch.randn(12, 6 // g, k, k)
    x.requires_grad_(True)
    y = _ExcitationConv2d.apply(x, w, None, s, p, d, g)
    assert torch.allclose(y, F.conv2d(x, w, None, s, p, d, g))
    seed = torch.rand_like(y)
    (got,) = torch.autograd.grad(y, x, seed)
    shifted = (x - x.min()).detach().contiguous()
    pos = w.clamp(min=0)
    norm = F.conv2d(shifted, pos, None, s, p, d, g).abs()
    ratio = torch.where(norm > 1e-10, seed / (norm + 1e-10), torch.zeros_like(seed))
    want = shifted * torch.nn.grad.conv2d_input(x.shape, pos, ratio, s, p, d, g)
    assert got.shape == x.shape
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_batched_peaks_equal_one_peak_at_a_time(models, name):
    model = models[name]
    torch.manual_seed(2)
    image = torch.rand(3, 64, 64)
    bp = PeakBackprop(model, image)
    with torch.no_grad():
        assert torch.allclose(bp.cam, model.cams(image[None]), atol=1e-5)
    h, w = bp.cam.shape[-2:]
    cells = [(0, 0), (h - 1, w - 1), (h // 2, w // 3), (1, w - 2), (h // 2, w // 3)]
    peaks = [Peak(n % 3, 0, 0, 1.0, cell=c) for n, c in enumerate(cells)]
    one = bp.maps(peaks, batch=1)
    assert one.shape == (5, 64, 64) and (one >= 0).all()
    assert torch.allclose(one.sum(dim=(1, 2)), torch.ones(5), atol=1e-4)
    scale = float(one.abs().max())
    for batch in (2, 5, 8):  # a remainder chunk, all at once, more than there are
        many = bp.maps(peaks, batch=batch)
        assert torch.allclose(many, one, rtol=1e-4, atol=1e-6 * scale), batch
    # the retained pass serves again, and the one-call function gives the same maps
    assert torch.allclose(bp.maps(peaks[:2]), one[:2], rtol=1e-5, atol=1e-7 * scale)
    assert torch.allclose(peak_response_maps(model, image, peaks, batch=3), one, rtol=1e-4,
                          atol=1e-6 * scale)


@pytest.mark.parametrize("name,feature", [("resnet18", "c3"), ("efficientnet_lite0", "c4")])
def test_twin_with_folded_batchnorms_gives_the_same_cams_and_maps(name, feature):
    """excitation_twin folds every BatchNorm (frozen or in eval mode) into its convolution;
    the rule still reads the convolutions' own weights and the BatchNorms' gradients, so the
    CAM and every peak's map (one at a time and batched) are the model's own."""
    from wiseseg.models.freezing import freeze_batchnorm

    torch.manual_seed(4)
    model = PeakCAM(freeze_batchnorm(build_backbone(name, "none")), num_classes=3,
                    feature=feature, head_channels=(16,)).eval()
    with torch.no_grad():  # statistics and affine terms far from the identity, some scales < 0
        for m in model.modules():
            if hasattr(m, "running_var") and m.running_var is not None:
                m.weight.uniform_(-1.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    twin = excitation_twin(model)
    assert len(twin.excitation_origins) > 0
    assert not any(hasattr(m, "running_var") for m in twin.modules())  # every one folded
    image = torch.rand(3, 64, 64)
    want, got = PeakBackprop(model, image), PeakBackprop(twin, image)
    scale = float(want.cam.abs().max())
    assert torch.allclose(got.cam, want.cam, rtol=1e-4, atol=1e-5 * scale)
    h, w = want.cam.shape[-2:]
    peaks = [Peak(n % 3, 0, 0, 1.0, cell=c)
             for n, c in enumerate([(0, 0), (h - 1, w - 1), (h // 2, w // 3), (1, w - 2)])]
    one = want.maps(peaks)
    top = float(one.abs().max())
    assert torch.allclose(got.maps(peaks), one, rtol=1e-3, atol=1e-5 * top)
    assert torch.allclose(got.maps(peaks, batch=3), one, rtol=1e-3, atol=1e-5 * top)
    # without the origins the rule would read the folded weights: other maps
    twin.excitation_origins = {}
    assert not torch.allclose(PeakBackprop(twin, image).maps(peaks), one, rtol=1e-3,
                              atol=1e-5 * top)


@pytest.mark.parametrize("name,feature", [("resnet18", "c3"), ("efficientnet_lite0", "c4")])
def test_fused_chains_give_the_layer_by_layer_maps(name, feature):
    """On a twin (BatchNorms folded) the convolutions joined by a ReLU / ReLU6 — and by the
    zero pad of Lite's strided convolutions — backpropagate as fused chains: the same maps as
    layer by layer, one peak at a time and batched, and the pass serves again."""
    from wiseseg.models.freezing import freeze_batchnorm

    torch.manual_seed(5)
    model = PeakCAM(freeze_batchnorm(build_backbone(name, "none")), num_classes=3,
                    feature=feature, head_channels=(16,)).eval()
    twin = excitation_twin(model)
    image = torch.rand(3, 70, 58)  # odd halvings: Lite's SAME pads are uneven
    plain, fused = PeakBackprop(twin, image, fuse=False), PeakBackprop(twin, image)
    assert plain.fused == 0 and fused.fused >= (5 if name == "resnet18" else 20)
    assert torch.equal(fused.cam, plain.cam)
    h, w = plain.cam.shape[-2:]
    peaks = [Peak(n % 3, 0, 0, 1.0, cell=c)
             for n, c in enumerate([(0, 0), (h - 1, w - 1), (h // 2, w // 3), (1, w - 2)])]
    want = plain.maps(peaks)
    top = float(want.abs().max())
    assert top > 0
    for _ in range(2):  # the kept factors serve the next peaks
        assert torch.allclose(fused.maps(peaks), want, rtol=1e-4, atol=1e-6 * top)
    assert torch.allclose(fused.maps(peaks, batch=3), want, rtol=1e-4, atol=1e-6 * top)
    # the unfolded model has a BatchNorm between each convolution and its activation
    assert PeakBackprop(model, image).fused == 0


class _Links(nn.Module):
    """A small PeakCAM-like model whose convolutions are joined in the ways a fused chain
    must, or must not, be made of."""

    def __init__(self, case: str):
        super().__init__()
        self.case = case
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2)
        self.c3 = nn.Conv2d(4, 4, 1)
        self.c4 = nn.Conv2d(4, 3, 1)
        self.c5 = nn.Conv2d(4, 4, 1)

    def cams(self, x):
        a = self.c1(x)
        if self.case == "chain":  # negative lower bound (shift ≠ 0), an uneven pad, in place
            a = F.pad(F.hardtanh(a, -0.5, 0.7), (1, 2, 0, 3))
            a = F.relu(self.c3(F.relu6(self.c2(a))), inplace=True)
        elif self.case == "activation_twice":  # one activation feeds two convolutions
            r = F.relu(a)
            a = F.relu(self.c3(r) + self.c5(r))
        elif self.case == "conv_twice":  # a convolution feeds its activation and a sum
            a = F.relu(self.c3(F.relu(a)) + a)
        elif self.case == "pad_twice":  # one pad feeds two convolutions
            p = F.pad(F.relu(a), (1, 0, 1, 0))
            a = F.relu(self.c2(p)) + F.relu(self.c2(p))
        return self.c4(a)


@pytest.mark.parametrize("case,fusable", [("chain", 3), ("activation_twice", 0),
                                          ("conv_twice", 0), ("pad_twice", 0)])
def test_only_single_consumer_links_are_fused(case, fusable):
    """A chain is fused only where each link has one consumer; the maps stay the
    layer-by-layer ones either way, one peak at a time and batched."""
    torch.manual_seed(10)  # random weights whose maps are nonzero in every case
    model = _Links(case).eval()
    image = torch.rand(3, 13, 11)
    plain, fused = PeakBackprop(model, image, fuse=False), PeakBackprop(model, image)
    assert fused.fused == fusable
    h, w = plain.cam.shape[-2:]
    peaks = [Peak(n % 3, 0, 0, 1.0, cell=c)
             for n, c in enumerate([(0, 0), (h - 1, w - 1), (h // 2, w // 3)])]
    want = plain.maps(peaks)
    top = float(want.abs().max())
    assert top > 0
    for batch in (1, 2):
        assert torch.allclose(fused.maps(peaks, batch=batch), want, rtol=1e-4,
                              atol=1e-6 * top), batch


def test_a_fused_pass_is_freed_with_its_object(models):
    """No reference cycle through the fused chains: the graph, its kept factors and maps go
    when the pass does, without the cycle collector (a run holds one image's pass at a
    time; a cycle kept every image's, and the PRM stage ran out of memory)."""
    import gc

    from wiseseg.models.peak_response import _CONV_NODE

    twin = excitation_twin(models["efficientnet_lite0"])
    gc.collect()
    gc.disable()
    try:
        bp = PeakBackprop(twin, torch.rand(3, 64, 64))
        assert bp.fused > 0
        bp.maps([Peak(0, 0, 0, 1.0, cell=(1, 1))])
        assert any(type(o) is _CONV_NODE for o in gc.get_objects())
        del bp
        assert not any(type(o) is _CONV_NODE for o in gc.get_objects())
    finally:
        gc.enable()


def test_zero_peaks(models):
    model = models["resnet18"]
    image = torch.rand(3, 48, 40)
    assert peak_response_maps(model, image, []).shape == (0, 48, 40)
    bp = PeakBackprop(model, image)
    for batch in (1, 4):
        assert bp.maps([], batch=batch).shape == (0, 48, 40)
    with pytest.raises(ValueError, match="batch"):
        bp.maps([Peak(0, 0, 0, 1.0, cell=(0, 0))], batch=0)
    assert peak_batch_size("cpu") == 1


def test_multiscale_cams_mean_on_the_base_grid():
    from wiseseg.classifier.peaks import multiscale_cams, scaled_size

    base = torch.zeros(1, 2, 4, 4)
    other = torch.ones(1, 2, 8, 8)
    assert multiscale_cams(base, []) is base
    out = multiscale_cams(base, [other])
    assert out.shape == base.shape and torch.allclose(out, torch.full_like(base, 0.5))
    assert torch.allclose(multiscale_cams(base, [other], keep_base=False), torch.ones_like(base))
    ramp = torch.linspace(0, 1, 8).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    small = multiscale_cams(torch.zeros(1, 1, 4, 4), [ramp], keep_base=False)
    assert torch.allclose(small[0, 0, 0], torch.linspace(0, 1, 4))  # corners aligned
    assert scaled_size(384, 0.75) == 288 and scaled_size(384, 1.5) == 576
    assert scaled_size(20, 0.5) == 32


def test_image_cams_scales(models):
    import numpy as np

    from wiseseg.classifier.peaks import image_cams, multiscale_cams

    model = models["efficientnet_lite0"]
    ims = [np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8)
           for i in range(2)]
    one = image_cams(model, ims, 64, "cpu")
    assert torch.equal(image_cams(model, ims, 64, "cpu", scales=(1.0,)), one)
    two = image_cams(model, ims, 64, "cpu", flip=True, scales=(0.5, 1.0))
    want = multiscale_cams(image_cams(model, ims, 64, "cpu", flip=True),
                           [image_cams(model, ims, 32, "cpu", flip=True)])
    assert two.shape == one.shape and torch.allclose(two, want)
