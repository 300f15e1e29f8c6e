"""Freezing parts of a backbone: frozen BatchNorm, fixed early stages, and the test of whether
a module can change at all during training (which decides if its features can be cached)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from wiseseg.models.backbones import LEVELS, Backbone


class FixedBatchNorm2d(FrozenBatchNorm2d):
    """torchvision's FrozenBatchNorm2d that, without autograd, scales its input in place.

    On a CPU the out-of-place version spends more time obtaining fresh pages for its output
    than computing (lite0 at 384 px, filling a feature cache, measured by hand: 0.14 s → 0.04 s
    an image). In place is safe here because in every registered backbone a
    BatchNorm's input is the fresh output of the convolution before it, read by nothing else.
    """

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() or x.requires_grad:
            return super().forward(x)
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x.mul_(scale.view(1, -1, 1, 1)).add_(shift.view(1, -1, 1, 1))


def fold_batchnorm(module: nn.Module, origins: dict | None = None) -> nn.Module:
    """A copy of ``module`` in which every convolution followed by a constant BatchNorm
    (:class:`FixedBatchNorm2d`, or one in eval mode; registered right after it, as in every
    registered backbone) carries the normalisation in its own weight and bias, the BatchNorm
    replaced by an identity. The same maps to float rounding, without the two passes over
    every map that a separate scale and shift cost (1.16–1.29× faster on a CPU,
    ``benchmarks/fold_batchnorm.py``); parameters are fixed (no gradient).

    ``origins``: filled with, for each folded weight (the parameter itself as key), the
    convolution's own weight and the BatchNorm's per-channel scale — what peak
    backpropagation's excitation rule needs, since it reads the unfolded weights
    (:func:`wiseseg.models.peak_response.excitation_twin`)."""
    folded = copy.deepcopy(module)
    _fold_children(folded, origins)
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded


def _fold_children(module: nn.Module, origins: dict | None) -> None:
    children = list(module.named_children())
    for (name, child), (next_name, after) in zip(children, children[1:] + [(None, None)]):
        if isinstance(child, nn.Conv2d) and _foldable(after):
            own = child.weight.detach().clone()
            gamma = after.weight if after.weight is not None else torch.ones_like(
                after.running_var)  # a BatchNorm without affine terms
            scale = (gamma * (after.running_var + after.eps).rsqrt()).detach().clone()
            fmt = (torch.channels_last if child.weight.is_contiguous(
                memory_format=torch.channels_last) and not child.weight.is_contiguous()
                else torch.contiguous_format)
            w, b = torch.nn.utils.fusion.fuse_conv_bn_weights(
                child.weight, child.bias, after.running_mean, after.running_var, after.eps,
                after.weight, after.bias)
            child.weight = nn.Parameter(w.detach().contiguous(memory_format=fmt),
                                        requires_grad=False)
            child.bias = nn.Parameter(b.detach(), requires_grad=False)
            setattr(module, next_name, nn.Identity())
            if origins is not None:
                origins[child.weight] = (own, scale)
        elif name is not None and not _foldable(child):
            _fold_children(child, origins)


def _foldable(m) -> bool:
    """A BatchNorm whose scale and shift are constants: frozen, or in eval mode."""
    return isinstance(m, FixedBatchNorm2d) or (
        isinstance(m, nn.BatchNorm2d) and not m.training and m.track_running_stats)


def freeze_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every BatchNorm2d by a frozen one (statistics and affine fixed,
    :class:`FixedBatchNorm2d`), as detection models do with small batches."""
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.BatchNorm2d):
            frozen = FixedBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def freeze_stages(backbone: Backbone, frozen: int) -> None:
    """Stop gradients in the stem and the first ``frozen`` pyramid stages (torchvision's
    ``trainable_layers`` idea): they change little from ImageNet and cost backward time."""
    from wiseseg.models.efficientnet_lite import EfficientNetLite

    body = backbone.body
    if isinstance(body, EfficientNetLite):
        # stage index after which c2, c3, c4 are taken: 1, 2, 4
        last = {0: -1, 1: 1, 2: 2, 3: 4, 4: len(body.stages) - 1}[min(frozen, 4)]
        modules = [body.stem] + list(body.stages[: last + 1])
        if frozen >= 4:  # c5 is the head's output: all four levels fixed, as layer4 of a ResNet
            modules.append(body.head)
    else:
        modules = [body.conv1, body.bn1] + [getattr(body, f"layer{i}")
                                           for i in range(1, min(frozen, 4) + 1)]
    if frozen <= 0:
        modules = []
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)


def is_fixed(module: nn.Module) -> bool:
    """True when training cannot change ``module``'s output: no trainable parameter and no
    BatchNorm that would update its running statistics in training mode (frozen BatchNorm,
    see :func:`freeze_batchnorm`, has none)."""
    return (not any(p.requires_grad for p in module.parameters())
            and not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                        for m in module.modules()))


def fixed_levels(backbone: Backbone, levels: tuple[str, ...] = LEVELS) -> tuple[str, ...]:
    """The pyramid levels, bottom up, whose maps training cannot change: every module that
    computes them (and the levels below) is fixed (:func:`is_fixed`). ``("c2", "c3", "c4")``
    when the stem and the first three stages are frozen (:func:`freeze_stages` 3)."""
    out: list[str] = []
    for level in levels:
        if not all(is_fixed(m) for m in backbone.level_modules(level)):
            break
        out.append(level)
    return tuple(out)

