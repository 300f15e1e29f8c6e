"""Peak response maps by peak backpropagation (PRM, Zhou et al. CVPR 2018).

A top-down pass from one CAM peak to the input image where every convolution distributes the
signal to its inputs in proportion to their (shifted, non-negative) activation times the
positive part of the weight — the probabilistic "excitation backprop" rule PRM uses:

    P(x_i) = (x_i − min x) · Σ_j w_ij⁺ · P(y_j) / Σ_i' (x_i' − min x) w_i'j⁺

Other layers keep their ordinary gradient. The response map of a peak is the input-gradient
summed over colour channels, clipped at 0 and normalised to sum 1 (as PRM does), one
instance-aware map per peak.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from wiseseg.models.cam_geometry import CamGeometry
from wiseseg.models.peak_ops import Peak

_EPS = 1e-10


class _ExcitationConv2d(torch.autograd.Function):
    """Forward: an ordinary convolution. Backward: the excitation rule above.

    The input's shift and the normaliser ``conv(x − min x, W⁺)`` depend on the forward pass
    only; they are computed at the first backward and kept, so that backpropagating several
    peaks through one retained forward pass (:func:`peak_response_maps`) pays for them once.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, groups)
        ctx.memo = None
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        if ctx.memo is None:
            shifted = x - x.min()
            pos_w = weight.clamp(min=0)
            norm = F.conv2d(shifted, pos_w, None, stride, padding, dilation, groups).abs()
            ctx.memo = (shifted, pos_w, norm > _EPS, norm + _EPS)
        shifted, pos_w, nonzero, denom = ctx.memo
        ratio = torch.where(nonzero, grad_out / denom, torch.zeros_like(grad_out))
        back = torch.nn.grad.conv2d_input(shifted.shape, pos_w, ratio, stride, padding,
                                          dilation, groups)
        return shifted * back, None, None, None, None, None, None


class _ExcitationMode(TorchFunctionMode):
    """Routes every 2-D convolution called inside the block through :class:`_ExcitationConv2d`.

    Intercepting the convolution *function* rather than replacing module ``forward`` methods
    keeps each module's own forward intact — EfficientNet-Lite's ``SameConv2d`` pads its input
    before convolving, and the rule then sees the padded input, as the network does."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.conv2d, F.conv2d):
            x, weight, bias, stride, padding, dilation, groups = _conv_args(args, kwargs)
            if isinstance(padding, str):
                x, padding = _explicit_padding(x, weight, padding, dilation)
            return _ExcitationConv2d.apply(x, weight, bias, stride, padding, dilation, groups)
        return func(*args, **kwargs)


def _conv_args(args, kwargs):
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    defaults = (None, None, None, 1, 0, 1, 1)
    vals = list(args) + [kwargs.get(n, d) for n, d in zip(names[len(args):],
                                                            defaults[len(args):])]
    return tuple(vals)


def _explicit_padding(x: Tensor, weight: Tensor, padding: str, dilation) -> tuple[Tensor, int]:
    """``padding='valid'|'same'`` (stride 1) as an explicit pad of the input."""
    if padding == "valid":
        return x, 0
    d = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
    th, tw = (d[0] * (weight.shape[-2] - 1), d[1] * (weight.shape[-1] - 1))
    return F.pad(x, (tw // 2, tw - tw // 2, th // 2, th - th // 2)), 0


@contextmanager
def excitation_backprop(model: nn.Module | None = None) -> Iterator[None]:
    """Within the block every 2-D convolution backpropagates by the excitation rule (forward
    values unchanged); every other layer keeps its ordinary gradient. ``model`` is accepted
    for symmetry with callers and not needed."""
    with _ExcitationMode():
        yield


def peak_response_maps(model: nn.Module, image: Tensor, peaks: list[Peak],
                       geometry: CamGeometry | None = None) -> Tensor:
    """One response map per peak.

    As PRM does, the image goes forward once and each peak is backpropagated through that
    retained pass (a 1 at its CAM cell, zeros elsewhere).

    Args:
        model: a :class:`~wiseseg.models.peakcam.PeakCAM` (put in eval mode by the caller).
        image: float ``3×H×W`` in [0, 1], the network input (already resized).
        peaks: the peaks; each is seeded at its CAM ``cell`` when it has one, else at the
            cell that ``geometry`` assigns to its ``(y, x)``, taken as a position in
            ``image`` (required then).

    Returns:
        float ``N×H×W`` ≥ 0, each summing to 1 (or all 0 when nothing flowed back);
        ``0×H×W`` when there are no peaks.
    """
    _, H, W = image.shape
    if not peaks:
        return image.new_zeros((0, H, W))
    out = []
    with excitation_backprop(model), torch.enable_grad():
        x = image[None].detach().requires_grad_(True)
        cam = model.cams(x)
        for n, p in enumerate(peaks):
            i, j = seed_cell(p, tuple(cam.shape[-2:]), geometry, (H, W))
            (grad,) = torch.autograd.grad(cam[0, p.category, i, j], x,
                                          retain_graph=n < len(peaks) - 1)
            out.append(grad[0].sum(dim=0).clamp(min=0))
    maps = torch.stack(out).detach()
    total = maps.sum(dim=(1, 2), keepdim=True)
    return torch.where(total > 0, maps / total.clamp(min=1e-12), maps)


def seed_cell(peak: Peak, cam_size: tuple[int, int], geometry: CamGeometry | None,
              input_size: tuple[int, int]) -> tuple[int, int]:
    """The CAM cell a peak's backpropagation starts from (see :func:`peak_response_maps`)."""
    if peak.cell is not None:
        i, j = peak.cell
        if not (0 <= i < cam_size[0] and 0 <= j < cam_size[1]):
            raise ValueError(f"peak cell {peak.cell} outside the {cam_size} CAM")
        return int(i), int(j)
    if geometry is None:
        raise ValueError("a peak without its CAM cell needs the CAM geometry")
    if tuple(geometry.cam_size) != tuple(cam_size):
        raise ValueError(f"geometry for a {geometry.cam_size} CAM, got {cam_size}")
    return geometry.pixel_to_cell(peak.y, peak.x, input_size)
