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

from wiseseg.models.peak_ops import Peak

_EPS = 1e-10


class _ExcitationConv2d(torch.autograd.Function):
    """Forward: an ordinary convolution. Backward: the excitation rule above."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        shifted = x - x.min()
        pos_w = weight.clamp(min=0)
        norm = F.conv2d(shifted, pos_w, None, stride, padding, dilation, groups)
        ratio = torch.where(norm.abs() > _EPS, grad_out / (norm.abs() + _EPS),
                            torch.zeros_like(grad_out))
        back = torch.nn.grad.conv2d_input(shifted.shape, pos_w, ratio, stride, padding,
                                          dilation, groups)
        return shifted * back, None, None, None, None, None, None


def _excitation_forward(self: nn.Conv2d, x: Tensor) -> Tensor:
    if self.padding_mode != "zeros":
        x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
        return _ExcitationConv2d.apply(x, self.weight, self.bias, self.stride, 0,
                                       self.dilation, self.groups)
    return _ExcitationConv2d.apply(x, self.weight, self.bias, self.stride, self.padding,
                                   self.dilation, self.groups)


@contextmanager
def excitation_backprop(model: nn.Module) -> Iterator[None]:
    """Within the block, every ``nn.Conv2d`` of ``model`` backpropagates by the excitation
    rule (forward values are unchanged)."""
    patched = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.forward = _excitation_forward.__get__(m, type(m))
            patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def peak_response_maps(model: nn.Module, image: Tensor, peaks: list[Peak],
                       cam_size: tuple[int, int] | None = None,
                       batch: int = 8) -> Tensor:
    """One response map per peak.

    Args:
        model: a :class:`~wiseseg.models.peakcam.PeakCAM` (put in eval mode by the caller).
        image: float ``3×H×W`` in [0, 1], the network input (already resized).
        peaks: peaks in the coordinates of ``image`` (``y``, ``x`` in input pixels).
        cam_size: unused hint kept for callers that know the map size.
        batch: peaks back-propagated together (the image is repeated along the batch).

    Returns:
        float ``N×H×W`` ≥ 0, each summing to 1 (or all 0 when nothing flowed back);
        ``0×H×W`` when there are no peaks.
    """
    _, H, W = image.shape
    if not peaks:
        return image.new_zeros((0, H, W))
    out = []
    with excitation_backprop(model), torch.enable_grad():
        for start in range(0, len(peaks), batch):
            chunk = peaks[start:start + batch]
            x = image[None].repeat(len(chunk), 1, 1, 1).detach().requires_grad_(True)
            cam = model.cams(x)
            h, w = cam.shape[-2:]
            seed = torch.zeros_like(cam)
            for b, p in enumerate(chunk):
                i = min(h - 1, int(p.y * h / H))
                j = min(w - 1, int(p.x * w / W))
                seed[b, p.category, i, j] = 1.0
            (grad,) = torch.autograd.grad(cam, x, grad_outputs=seed)
            out.append(grad.sum(dim=1).clamp(min=0))
    maps = torch.cat(out, dim=0).detach()
    total = maps.sum(dim=(1, 2), keepdim=True)
    return torch.where(total > 0, maps / total.clamp(min=1e-12), maps)
