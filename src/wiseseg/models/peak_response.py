"""Peak response maps by peak backpropagation (PRM, Zhou et al. CVPR 2018).

A top-down pass from one CAM peak to the input image where every convolution distributes the
signal to its inputs in proportion to their (shifted, non-negative) activation times the
positive part of the weight — the probabilistic "excitation backprop" rule PRM uses:

    P(x_i) = (x_i − min x) · Σ_j w_ij⁺ · P(y_j) / Σ_i' (x_i' − min x) w_i'j⁺

Other layers keep their ordinary gradient. The response map of a peak is the input-gradient
summed over colour channels, clipped at 0 and normalised to sum 1 (as PRM does), one
instance-aware map per peak.

Between two convolutions joined only by a ReLU / ReLU6 (and a zero pad), as in every block of
a network with its BatchNorms folded (:func:`excitation_twin`), the three per-pixel factors
the signal meets on its way down — the upper convolution's shifted input, the activation's
gradient mask and the lower convolution's normaliser — are one product, computed once per
image (:func:`_fuse_chains`): one pass over the map per peak instead of three, the same
values to float rounding.
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
        ctx.replicated = replicated
        ctx.memo = None
        # set by _fuse_chains: where the upper convolution of a fused chain leaves its
        # shifted input (``below``: for the lower one; a plain holder, not the node, so
        # that no reference cycle keeps the graph alive), and the lower one's view of it
        ctx.below = None
        ctx.fused_above = None
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        shifted, transposed, inv = _memo(ctx)
        down = transposed(grad_out * inv)
        out = down if ctx.below is not None else shifted * down
        return (out, None, None, None, None, None, None, None, None)


def _memo(ctx) -> tuple:
    """``(shifted input, transposed product, 1 / normaliser)`` of an excitation convolution,
    computed at its first backward and kept (see :class:`_ExcitationConv2d`); with
    ``fused_above`` the reciprocal also carries the activation's mask and the upper
    convolution's shifted input (:func:`_fuse_chains`)."""
    if ctx.memo is not None:
        return ctx.memo
    x, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conf
    fmt = torch.channels_last if x.dim() == 4 else torch.contiguous_format
    low = _minimum(x)
    # after a ReLU the minimum is 0 and x − 0 is x itself: no second copy of it
    shifted = (x if bool(low == 0) else x - low).contiguous(memory_format=fmt)
    own = weight if ctx.origin is None else ctx.origin[0]
    pos_w = own.clamp(min=0).contiguous(memory_format=fmt)
    norm = F.conv2d(shifted, pos_w, None, stride, padding, dilation, groups).abs_()
    # 1 / (norm + eps) where norm > eps, else 0: threshold_backward keeps its first argument
    # where the second is > eps in one pass (a bool mask's masked_fill_ costs several)
    inv = torch.ops.aten.threshold_backward((norm + _EPS).reciprocal_(), norm, _EPS)
    if ctx.origin is not None:  # the folded BatchNorm's gradient: × its scale
        inv.mul_(ctx.origin[1].view(1, -1, 1, 1))
    if ctx.below is not None:  # the lower convolution of a fused chain takes it from here
        ctx.below.shifted = shifted.detach()
    if ctx.fused_above is not None:
        upper, act, pad = ctx.fused_above  # upper: a _Shifted; act: (its output, bounds)
        above = upper.shifted  # the upper convolution's shifted input, maybe padded
        if above is None:
            raise RuntimeError("a fused chain's lower convolution ran before its upper one")
        if pad is not None:
            left, right, top, bottom = pad
            above = above[..., top: above.shape[-2] - bottom, left: above.shape[-1] - right]
        inv = _activation_gradient(act, inv.mul_(above))
    ctx.memo = (shifted, _TransposedProduct(pos_w, ctx.in_size, norm.shape[-2:], stride,
                                            padding, dilation, groups),
                inv.contiguous(memory_format=fmt))
    return ctx.memo


def _minimum(x: Tensor) -> Tensor:
    """``x.min()`` without the contiguous copy that ``min`` makes of a channels-last map."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).min()
    return x.min()


class _Activation(torch.autograd.Function):
    """ReLU / ReLU6 (``hardtanh``) within the excitation pass: the same values and gradient
    (1 strictly between the bounds, else 0), returned as a new tensor even when asked in
    place; :func:`_fuse_chains` may fold the gradient's mask into the convolution below
    (``fused``: the backward then passes the signal through)."""

    @staticmethod
    def forward(ctx, x, low, high):
        y = x.clamp(min=low, max=high) if high != float("inf") else x.clamp(min=low)
        ctx.save_for_backward(y)  # y is inside the bounds exactly where x is
        ctx.bounds = (low, high)
        ctx.fused = False
        return y

    @staticmethod
    def backward(ctx, grad):
        return (grad if ctx.fused else _activation_gradient(ctx, grad)), None, None


def _activation_gradient(act, grad: Tensor, first: bool = False) -> Tensor:
    """``grad`` where the activation's input was strictly inside its bounds, else 0 (the
    kernels autograd itself uses for ReLU and hardtanh). ``act``: an :class:`_Activation`
    node, or its ``(output, bounds)``; ``first``: of the first image of a replicated batch."""
    y, (low, high) = act if isinstance(act, tuple) else (act.saved_tensors[0], act.bounds)
    if first:
        y = y[:1]
    if high == float("inf"):
        return torch.ops.aten.threshold_backward(grad, y, low)
    return torch.ops.aten.hardtanh_backward(grad, y, low, high)


class _ZeroPad(torch.autograd.Function):
    """A zero pad of the last two dimensions (``F.pad(x, (left, right, top, bottom))``, each
    ≥ 0) within the excitation pass: its gradient is the unpadded part of the signal, returned
    as a view — ordinary autograd copies it out, once per peak."""

    @staticmethod
    def forward(ctx, x, pad):
        ctx.pad = pad
        return F.pad(x, pad)

    @staticmethod
    def backward(ctx, grad):
        left, right, top, bottom = ctx.pad
        h, w = grad.shape[-2:]
        return grad[..., top: h - bottom, left: w - right], None


_CONV_NODE = _ExcitationConv2d._backward_cls
_ACT_NODE = _Activation._backward_cls
_PAD_NODE = _ZeroPad._backward_cls


class _Shifted:
    """The shifted input an upper convolution of a fused chain leaves for the lower one."""

    shifted: Tensor | None = None


def _fuse_chains(root) -> int:
    """Fold each chain ``lower convolution → activation [→ zero pad] → upper convolution``
    of the autograd graph under ``root`` whose links have no other consumer: the lower
    convolution's reciprocal normaliser takes the activation's mask and the upper one's
    shifted input (cropped to the unpadded map), the activation passes the signal through
    and the upper convolution no longer multiplies by its input. The same backward, up to
    the order of float products, with two passes over each map fewer. Returns the number of
    chains fused. Call it after the forward pass, before the first backward."""
    if root is None:
        return 0
    consumers: dict = {}
    seen, stack = {root}, [root]
    while stack:
        node = stack.pop()
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            consumers[nxt] = consumers.get(nxt, 0) + 1
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    fused = 0
    for upper in seen:
        if not isinstance(upper, _CONV_NODE) or upper.memo is not None:
            continue
        node, pad = upper.next_functions[0][0], None
        if isinstance(node, _PAD_NODE) and consumers[node] == 1:
            pad = node.pad
            node = node.next_functions[0][0]
        if not isinstance(node, _ACT_NODE) or consumers[node] != 1 or node.fused:
            continue
        lower = node.next_functions[0][0]
        if not isinstance(lower, _CONV_NODE) or consumers[lower] != 1 or lower.memo is not None:
            continue
        # the output detached: kept past the activation's backward (which frees what it
        # saved when the graph is not retained), without a reference cycle through it; of a
        # replicated batch, the first copy (the one the factors are computed on)
        out = node.saved_tensors[0].detach()
        upper.below = _Shifted()
        lower.fused_above = (upper.below, (out[:1] if lower.replicated else out, node.bounds),
                             pad)
        node.fused = True
        fused += 1
    return fused


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
        if func in _ACTIVATION_BOUNDS:
            x, low, high = _ACTIVATION_BOUNDS[func](*args, **kwargs)
            return _Activation.apply(x, low, high)
        if func is F.pad:
            pad = _zero_pad(*args, **kwargs)
            if pad is not None:
                return _ZeroPad.apply(args[0] if args else kwargs["input"], pad)
        return func(*args, **kwargs)


def _zero_pad(input, pad, mode="constant", value=None):
    """``pad`` as ``(left, right, top, bottom)`` when ``F.pad`` is a zero pad of a 4-D
    tensor's last two dimensions by amounts ≥ 0, else None (left to ``F.pad`` itself)."""
    if (mode != "constant" or value not in (None, 0, 0.0) or input.dim() != 4 or len(pad) != 4
            or min(int(v) for v in pad) < 0):
        return None
    return tuple(int(v) for v in pad)


# the activations whose gradient _fuse_chains can fold: their input and bounds
_ACTIVATION_BOUNDS = {
    F.relu: lambda input, inplace=False: (input, 0.0, float("inf")),
    F.relu6: lambda input, inplace=False: (input, 0.0, 6.0),
    F.hardtanh: lambda input, min_val=-1.0, max_val=1.0, inplace=False: (input, float(min_val),
                                                                         float(max_val)),
}


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
    for m in twin.modules():  # channels-last, as the maps run (in place: origins' keys)
        if isinstance(m, nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
    twin.excitation_origins = origins
    return twin


class PeakBackprop:
    """One image's forward pass under the excitation rule, retained so that its peaks can be
    backpropagated (:meth:`maps`) — and its CAM read (:attr:`cam`) without a second forward.

    Args:
        model: a :class:`~wiseseg.models.peakcam.PeakCAM` (put in eval mode by the caller).
        image: float ``3×H×W`` in [0, 1], the network input (already resized).
        fuse: fold the chains of convolutions joined by an activation (:func:`_fuse_chains`,
            the same maps to float rounding); ``False`` backpropagates layer by layer.

    Attributes:
        cam: float ``1×C×h×w``, detached: the same values as ``model.cams(image[None])``.
    """

    def __init__(self, model: nn.Module, image: Tensor, fuse: bool = True):
        self.size = tuple(image.shape[-2:])
        self._model = model
        self._fuse = fuse
        with excitation_backprop(model), torch.enable_grad():
            self._x = image[None].detach().requires_grad_(True)
            self._cam = model.cams(self._x)
        self.cam = self._cam.detach()
        #: chains folded by :func:`_fuse_chains` (0 with ``fuse=False``)
        self.fused = _fuse_chains(self._cam.grad_fn) if fuse else 0

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
                    if self._fuse:
                        _fuse_chains(cam.grad_fn)
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
