"""Where CAM cells sit: the conventions, sub-pixel upsampling, round trips at odd and even
input sizes, and peak backpropagation that keeps every module's forward and seeds the right
cell on a ResNet and on EfficientNet-Lite."""

from __future__ import annotations

import pytest
import torch

from wiseseg.models.backbones import build_backbone
from wiseseg.models.cam_geometry import (
    CONVENTIONS,
    image_to_input,
    input_to_image,
    make_geometry,
)
from wiseseg.models.peak_ops import Peak
from wiseseg.models.peak_response import excitation_backprop, peak_response_maps, seed_cell
from wiseseg.models.peakcam import PeakCAM


def test_conventions_place_cells_as_documented():
    u = make_geometry("uniform", (128, 128), (16, 16), stride=8)
    assert u.cell_to_input(0, 0) == (3.5, 3.5) and u.cell_to_input(15, 15) == (123.5, 123.5)
    c = make_geometry("corners", (128, 128), (16, 16), stride=8)
    assert c.cell_to_input(0, 15) == (0.0, 127.0)
    r = make_geometry("receptive", (128, 128), (16, 16), stride=8, receptive=(7.0, 7.0))
    assert r.cell_to_input(1, 2) == (15.0, 23.0)
    with pytest.raises(ValueError, match="convention"):
        make_geometry("centre", (128, 128), (16, 16), 8)
    with pytest.raises(ValueError, match="offsets"):
        make_geometry("receptive", (128, 128), (16, 16), 8)


def test_subpixel_cells_follow_align_corners():
    # PRM's upsampling by u with align_corners=True: cell k' is backbone cell k'(n−1)/(un−1)
    g = make_geometry("corners", (64, 64), (8, 8), stride=8, upsample=4)
    assert g.cam_size == (32, 32)
    assert g.cell_to_input(0, 31) == (0.0, pytest.approx(63.0))
    cam = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    up = torch.nn.functional.interpolate(cam, scale_factor=4, mode="bilinear",
                                         align_corners=True)
    # the upsampled value at cell k' is the backbone coordinate the geometry assigns to it
    for k in (0, 5, 17, 31):
        base = (g.cell_to_input(0, k)[1] - g.offset[1]) / g.scale[1]
        assert float(up[0, 0, 0, k]) == pytest.approx(base, abs=1e-5)


def test_image_and_input_positions_map_edges_to_edges():
    assert input_to_image(-0.5, 128, 500) == pytest.approx(-0.5)
    assert input_to_image(127.5, 128, 500) == pytest.approx(499.5)
    assert image_to_input(input_to_image(37.25, 128, 333), 333, 128) == pytest.approx(37.25)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("size", [127, 128])
@pytest.mark.parametrize("upsample", [1, 4])
def test_cell_pixel_round_trip(convention, size, upsample):
    n = -(-size // 8)
    geo = make_geometry(convention, (size, size), (n, n), 8, upsample, receptive=(7.0, 7.0))
    for image in ((size, size), (375, 500)):
        for i in range(geo.cam_size[0]):
            y, x = geo.cell_to_pixel(i, geo.cam_size[1] - 1 - i, image)
            assert 0 <= y < image[0] and 0 <= x < image[1]
            if convention != "receptive":  # receptive cells can lie off the input's edge
                assert geo.pixel_to_cell(y, x, image) == (i, geo.cam_size[1] - 1 - i)


def test_receptive_offsets_match_the_padding():
    """EfficientNet-Lite's TF-SAME padding centres stride-8 cell k on pixel 8k+7 for inputs
    divisible by 8, a torchvision ResNet on 8k; odd sizes move the SAME pad to the start."""
    lite = PeakCAM(build_backbone("efficientnet_lite0", "none", output_stride=8), 2, "c4")
    assert lite.geometry((128, 128), (16, 16), "receptive").offset == (7.0, 7.0)
    assert lite.geometry((129, 129), (17, 17), "receptive").offset == (0.0, 0.0)
    res = PeakCAM(build_backbone("resnet18", "none"), 2, "c3")
    assert res.geometry((64, 64), (8, 8), "receptive").offset == (0.0, 0.0)


def _models():
    torch.manual_seed(0)
    lite = PeakCAM(build_backbone("efficientnet_lite0", "imagenet", output_stride=8), 3,
                   feature="c4", upsample=2).eval()
    res = PeakCAM(build_backbone("resnet18", "none"), 3, feature="c3").eval()
    return {"efficientnet_lite0": lite, "resnet18": res}


@pytest.fixture(scope="module")
def models():
    return _models()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
@pytest.mark.parametrize("size", [95, 96])
def test_backprop_keeps_the_forward(models, name, size):
    """Under peak backpropagation every module runs its own forward (SAME padding
    included): the CAM has the same shape and values as without it."""
    model = models[name]
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        plain = model.cams(x)
    with excitation_backprop(model), torch.enable_grad():
        xb = x.clone().requires_grad_(True)
        under = model.cams(xb)
    assert under.shape == plain.shape
    assert torch.allclose(under, plain, atol=1e-5)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
@pytest.mark.parametrize("size", [95, 96])
def test_seeds_land_on_the_peak_cell(models, name, size):
    """A peak known only by its pixel (read from a file) is seeded on the cell it came from,
    at an odd and an even input size."""
    model = models[name]
    with torch.no_grad():
        cam = model.cams(torch.rand(1, 3, size, size))
    geo = model.geometry((size, size), tuple(cam.shape[-2:]))
    h, w = geo.cam_size
    for image in ((size, size), (301, 457)):
        for i, j in ((0, 0), (h - 1, w - 1), (h // 2, w // 3), (1, w - 2)):
            y, x = geo.cell_to_pixel(i, j, image)
            peak = Peak(0, y, x, 1.0)
            # the seed is placed on the network input, the peak is in image pixels
            inp = (image_to_input(y, image[0], size), image_to_input(x, image[1], size))
            assert geo.input_to_cell(*inp) == (i, j)
            assert seed_cell(Peak(0, 0, 0, 1.0, cell=(i, j)), (h, w), geo, (size, size)) \
                == (i, j)
            assert seed_cell(peak, (h, w), geo.__class__(**{**geo.__dict__}),
                             (size, size)) == geo.pixel_to_cell(y, x, (size, size))


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_response_of_an_isolated_object_is_mostly_inside_it(models, name):
    model = models[name]
    size = 96
    image = torch.zeros(3, size, size)
    image[:, 30:62, 40:72] = torch.tensor([0.9, 0.6, 0.2]).view(3, 1, 1)
    mask = image.sum(0) > 0
    with torch.no_grad():
        cam = model.cams(image[None])
    geo = model.geometry((size, size), tuple(cam.shape[-2:]))
    cell = geo.input_to_cell(46, 56)
    maps = peak_response_maps(model, image, [Peak(1, 46, 56, 1.0, cell=cell)], geo)
    assert maps.sum() == pytest.approx(1.0, abs=1e-4)
    # most of the mass inside: 0.99 for EfficientNet-Lite, 0.72 for the random ResNet (its
    # ImageNet normalisation leaves the black background above the input's minimum in two
    # channels, and the excitation rule weighs inputs by their distance to that minimum)
    assert float(maps[0][mask].sum()) > 0.6


@pytest.mark.parametrize("convention", ["uniform", "corners"])
def test_cam_on_image_reads_each_cell_at_its_pixel(convention):
    # 97 px input, 9 cells: under `corners` the cells sit exactly on pixels 0, 12, …, 96
    g = make_geometry(convention, (97, 97), (9, 9), 12)
    cam = torch.rand(3, 9, 9)
    img = g.to_image(cam, (97, 97))
    assert img.shape == (3, 97, 97)
    if convention == "corners":
        torch.testing.assert_close(img[:, ::12, ::12], cam)
    # a CAM linear in the cell index is linear in the image (bilinear resampling)
    ramp = torch.arange(9.0).view(1, 9, 1).expand(1, 9, 9)
    col = g.to_image(ramp, (97, 50))[0, :, 7]
    inner = [g.pixel_to_cell(y, 7, (97, 50))[0] for y in range(97)]
    assert torch.all(col[1:] >= col[:-1])  # monotone down the image
    assert max(abs(float(c) - i) for c, i in zip(col, inner)) <= 0.5 + 1e-6  # nearest cell ±½
    with pytest.raises(ValueError, match="cells"):
        g.to_image(torch.rand(3, 8, 9), (97, 97))


def test_joined_levels_keep_the_first_grid_and_add_the_deeper_channels():
    torch.manual_seed(0)
    bb = build_backbone("resnet18", "none")
    joined = PeakCAM(bb, 2, "c3+c4", head_channels=(8,)).eval()
    assert joined.classifier.in_channels == 8 and joined.head[0].in_channels == 128 + 256
    assert joined.stride == bb.strides["c3"]
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        feats = joined.backbone_features(x)
        pyramid = bb(bb.normalize(x), upto="c4")
    assert feats.shape == (1, 384, 8, 12)
    assert torch.equal(feats[:, :128], pyramid["c3"])  # the first level as it is
    # the deeper level bilinearly resized to the first one's grid (here exactly ×2)
    up = torch.nn.functional.interpolate(pyramid["c4"], scale_factor=2, mode="bilinear")
    assert torch.allclose(feats[:, 128:], up)
    assert joined(x)["cams"].shape == (1, 2, 8, 12)
    assert joined.geometry((64, 96), (8, 12), "receptive").scale == (8.0, 8.0)
    for bad in ("c4+c3", "c4+c9", "c4+c4"):
        with pytest.raises(ValueError, match="joined by"):
            PeakCAM(bb, 2, bad)
