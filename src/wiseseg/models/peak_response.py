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

    The input's shift, the positive weights and the reciprocal of the normaliser
    ``conv(x − min x, W⁺)`` (0 where it vanishes) depend on the forward pass only; they are
    computed at the first backward and kept, so that backpropagating several peaks through
    one retained forward pass (:func:`peak_response_maps`) pays for them once. They are kept
    channels-last, as the backbones run, and the rule's transposed convolution is the
    cheapest equal product (:class:`_TransposedProduct`) rather than ``conv2d_input`` — on a
    CPU the latter takes a slow path for depthwise and channels-last convolutions.

    ``replicated``: the batch holds copies of one image (one peak seeded per copy, see
    :meth:`PeakBackprop.maps`); the forward-only terms are then computed on the first copy
    and broadcast over the batch.

    ``origin``: ``(own weight, BatchNorm scale)`` when ``weight`` is a convolution with the
    BatchNorm after it folded in (:func:`excitation_twin`): the rule then reads the
    convolution's own weight, and the BatchNorm's ordinary gradient (a per-channel scale)
    is folded into the normaliser's reciprocal — the same response maps to float rounding,
    without the BatchNorm's own passes.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, replicated=False,
                origin=None):
        ctx.save_for_backward(x[:1] if replicated else x, weight)
        ctx.conf = (stride, padding, dilation, groups)
        ctx.in_size = tuple(x.shape[-2:])
        ctx.origin = origin
        ctx.memo = None
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        if ctx.memo is None:
            fmt = torch.channels_last if x.dim() == 4 else torch.contiguous_format
            low = x.min()
            # after a ReLU the minimum is 0 and x − 0 is x itself: no second copy of it
            shifted = (x if bool(low == 0) else x - low).contiguous(memory_format=fmt)
            own = weight if ctx.origin is None else ctx.origin[0]
            pos_w = own.clamp(min=0).contiguous(memory_format=fmt)
            norm = F.conv2d(shifted, pos_w, None, stride, padding, dilation, groups).abs_()
            # 1 / (norm + eps) where norm > eps, else 0 (in place: these are the largest
            # tensors of the pass, and the rule needs only the result)
            inv = (norm + _EPS).reciprocal_().masked_fill_(~(norm > _EPS), 0.0)
            if ctx.origin is not None:  # the folded BatchNorm's gradient: × its scale
                inv.mul_(ctx.origin[1].view(1, -1, 1, 1))
            ctx.memo = (shifted, _TransposedProduct(pos_w, ctx.in_size, norm.shape[-2:],
                                                    stride, padding, dilation, groups),
                        inv.contiguous(memory_format=fmt))
        shifted, transposed, inv = ctx.memo
        return (shifted * transposed(grad_out * inv), None, None, None, None, None, None, None,
                None)


class _TransposedProduct:
    """``conv_transpose2d(·, W⁺)`` back to the convolution's input size, by the cheapest
    equal product: a 1×1 stride-1 convolution's is a matrix product over the pixels
    (channels-last), a stride-1 one's is a convolution with the kernel flipped (and, with
    one group, input and output channels swapped) and padding ``d·(k − 1) − p``; strided
    ones use ``conv_transpose2d``. On a CPU at one thread PyTorch runs a transposed 1×1
    convolution on its slow reference path (``slow_conv_transpose2d``) and a grouped one
    group by group; the same sums as these products, in another order (equal to float
    rounding; ``benchmarks/prm_speed.py --same-as`` checks the predictions)."""

    def __init__(self, pos_w: Tensor, in_size, out_size, stride, padding, dilation, groups):
        s, p, d = _pair(stride), _pair(padding), _pair(dilation)
        k = tuple(int(v) for v in pos_w.shape[-2:])
        self.args = (s, p, d, int(groups))
        self.output_padding = _output_padding(in_size, out_size, k, s, p, d)
        self.weight = pos_w
        self.kind = "transpose"
        if pos_w.dim() == 4 and s == (1, 1) and self.output_padding == (0, 0):
            if k == (1, 1) and p == (0, 0) and groups == 1:
                self.kind = "matmul"
                self.weight = pos_w.reshape(pos_w.shape[0], pos_w.shape[1]).contiguous()
            elif all(d[i] * (k[i] - 1) - p[i] >= 0 for i in range(2)):
                self.kind = "flipped"
                # per group, (out, in) → (in, out): the transposed convolution's weight
                o, i = pos_w.shape[0], pos_w.shape[1]
                w = pos_w.reshape(groups, o // groups, i, *k).transpose(1, 2)
                w = w.reshape(groups * i, o // groups, *k).flip(-1, -2)
                self.weight = w.contiguous(memory_format=torch.channels_last)
                self.padding = tuple(d[i] * (k[i] - 1) - p[i] for i in range(2))

    def __call__(self, g: Tensor) -> Tensor:
        s, p, d, groups = self.args
        if self.kind == "matmul":
            n, c, h, w = g.shape
            pixels = g.permute(0, 2, 3, 1).reshape(-1, c)  # a view when g is channels-last
            return (pixels @ self.weight).view(n, h, w, -1).permute(0, 3, 1, 2)
        if self.kind == "flipped":
            return F.conv2d(g, self.weight, None, 1, self.padding, d, groups)
        return F.conv_transpose2d(g, self.weight, None, s, p, self.output_padding, groups, d)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _output_padding(in_size, out_size, kernel, stride, padding, dilation) -> tuple[int, int]:
    """The ``output_padding`` that makes ``conv_transpose2d`` of a ``out_size`` map return
    the convolution's ``in_size`` (the rows / columns a strided convolution did not reach)."""
    s, p, d = _pair(stride), _pair(padding), _pair(dilation)
    return tuple(int(in_size[i]) - ((int(out_size[i]) - 1) * s[i] - 2 * p[i]
                                    + d[i] * (int(kernel[i]) - 1) + 1) for i in range(2))


class _ExcitationMode(TorchFunctionMode):
    """Routes every 2-D convolution called inside the block through :class:`_ExcitationConv2d`.

    Intercepting the convolution *function* rather than replacing module ``forward`` methods
    keeps each module's own forward intact — EfficientNet-Lite's ``SameConv2d`` pads its input
    before convolving, and the rule then sees the padded input, as the network does.

    ``replicated``: the batch holds copies of one image (see :class:`_ExcitationConv2d`).
    ``origins``: the folded weights of an :func:`excitation_twin` → their origin."""

    def __init__(self, replicated: bool = False, origins: dict | None = None):
        super().__init__()
        self.replicated = replicated
        self.origins = origins or {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.conv2d, F.conv2d):
            x, weight, bias, stride, padding, dilation, groups = _conv_args(args, kwargs)
            if isinstance(padding, str):
                x, padding = _explicit_padding(x, weight, padding, dilation)
            return _ExcitationConv2d.apply(x, weight, bias, stride, padding, dilation, groups,
                                           self.replicated, self.origins.get(weight))
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
    values unchanged); every other layer keeps its ordinary gradient. ``model``: when it is
    an :func:`excitation_twin`, its folded convolutions keep the rule of the model it was
    made from."""
    with _ExcitationMode(origins=getattr(model, "excitation_origins", None)):
        yield


def excitation_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (a :class:`~wiseseg.models.peakcam.PeakCAM` in eval mode) for peak
    backpropagation with each constant BatchNorm folded into the convolution before it
    (:func:`~wiseseg.models.freezing.fold_batchnorm`): the same CAMs and response maps to
    float rounding (``tests/test_peak_response.py``), without the BatchNorms' passes forward
    and, for every peak, backward. Its ``excitation_origins`` tell the rule each folded
    convolution's own weight. BatchNorms still learning (train mode) stay as they are."""
    from wiseseg.models.freezing import fold_batchnorm

    origins: dict = {}
    twin = fold_batchnorm(model, origins)
    twin.excitation_origins = origins
    return twin


class PeakBackprop:
    """One image's forward pass under the excitation rule, retained so that its peaks can be
    backpropagated (:meth:`maps`) — and its CAM read (:attr:`cam`) without a second forward.

    Args:
        model: a :class:`~wiseseg.models.peakcam.PeakCAM` (put in eval mode by the caller).
        image: float ``3×H×W`` in [0, 1], the network input (already resized).

    Attributes:
        cam: float ``1×C×h×w``, detached: the same values as ``model.cams(image[None])``.
    """

    def __init__(self, model: nn.Module, image: Tensor):
        self.size = tuple(image.shape[-2:])
        self._model = model
        with excitation_backprop(model), torch.enable_grad():
            self._x = image[None].detach().requires_grad_(True)
            self._cam = model.cams(self._x)
        self.cam = self._cam.detach()

    def maps(self, peaks: list[Peak], geometry: CamGeometry | None = None,
             batch: int = 1) -> Tensor:
        """One response map per peak (see :func:`peak_response_maps`).

        ``batch`` = 1: each peak is backpropagated through the retained pass, one backward
        call per peak. ``batch`` > 1: up to ``batch`` peaks at a time, the image replicated
        along the batch dimension (one more forward pass of that batch) with one seed per
        copy, and one backward call — the same maps to float rounding, in fewer, larger
        operations (for accelerators; on a CPU it measured ~3× slower, the work being
        memory-bound). The pass is kept, so this can be called again."""
        H, W = self.size
        if not peaks:
            return self._cam.new_zeros((0, H, W)).detach()
        if batch < 1:
            raise ValueError(f"batch must be ≥ 1, got {batch}")
        cells = [seed_cell(p, tuple(self._cam.shape[-2:]), geometry, (H, W)) for p in peaks]
        out = []
        with torch.enable_grad():
            if batch == 1:
                for p, (i, j) in zip(peaks, cells):
                    (grad,) = torch.autograd.grad(self._cam[0, p.category, i, j], self._x,
                                                  retain_graph=True)
                    out.append(grad.sum(dim=1).clamp(min=0))
            else:
                for start in range(0, len(peaks), batch):
                    chunk = range(start, min(len(peaks), start + batch))
                    # the image once per peak along the batch, one seed per copy
                    with _ExcitationMode(replicated=True, origins=getattr(
                            self._model, "excitation_origins", None)):
                        x = self._x.detach().repeat(len(chunk), 1, 1, 1).requires_grad_(True)
                        cam = self._model.cams(x)
                    seeds = torch.zeros_like(cam)
                    for k, n in enumerate(chunk):
                        seeds[k, peaks[n].category, cells[n][0], cells[n][1]] = 1.0
                    (grad,) = torch.autograd.grad(cam, x, seeds)
                    out.append(grad.sum(dim=1).clamp(min=0))
        maps = torch.cat(out).detach()
        total = maps.sum(dim=(1, 2), keepdim=True)
        return torch.where(total > 0, maps / total.clamp(min=1e-12), maps)


def peak_response_maps(model: nn.Module, image: Tensor, peaks: list[Peak],
                       geometry: CamGeometry | None = None, batch: int = 1) -> Tensor:
    """One response map per peak.

    As PRM does, the image goes forward once and each peak is backpropagated through that
    retained pass (a 1 at its CAM cell, zeros elsewhere); with ``batch`` > 1 that many peaks
    share one batched backward (:meth:`PeakBackprop.maps`; the same maps to float rounding).

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
    return PeakBackprop(model, image).maps(peaks, geometry, batch)


def peak_batch_size(device) -> int:
    """Peaks per backward call (:meth:`PeakBackprop.maps`): 1 on a CPU, where one call per
    peak measured fastest (benchmarks/prm_speed.py), 8 on an accelerator (not measured here;
    the maps are the same either way)."""
    return 1 if torch.device(device).type == "cpu" else 8


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
