"""RoIAlign for Mask R-CNN training on a CPU: torchvision's values, faster.

torchvision's CPU RoIAlign backward walks every (RoI, channel, bin, sample) in one thread and
adds into the feature gradient one value at a time; in a Mask R-CNN training step on cached
features it was about half of the backward pass. Two equal forms replace it on a CPU with
a fixed ``sampling_ratio`` > 0 (elsewhere — a GPU, adaptive sampling — it is torchvision's
own):

- on small maps (up to :data:`SEPARABLE_MAX_CELLS` cells: the FPN levels of 128-px images)
  the forward and backward are two dense matrix products per image
  (:class:`_RoIAlignSeparable`): the kernel's weights factor into a row and a column part.
  Predicting (no gradient) uses this forward too: ~14 % less prediction time at 128 px;
- on larger maps torchvision's forward runs unchanged and the backward is one sparse matrix
  product: every output bin is a fixed weighted sum of at most ``4 · samples`` feature
  pixels, so ``grad_features = Aᵀ · grad_output`` with ``A`` the (bins × pixels)
  interpolation matrix.

Both use the same sampling points, bilinear weights and border rules as torchvision's
kernel (``bilinear_interpolate`` / ``bilinear_interpolate_gradient``), summed in another
order (equal to float rounding).

:class:`FastMultiScaleRoIAlign` is torchvision's ``MultiScaleRoIAlign`` using them.
"""

from __future__ import annotations

import warnings

import torch
import torchvision
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align

BACKWARDS = ("torchvision", "sparse")


class _RoIAlignSparseBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, rois, output_size, spatial_scale, sampling_ratio, aligned):
        ctx.save_for_backward(rois)
        ctx.conf = (tuple(features.shape), output_size, float(spatial_scale),
                    int(sampling_ratio), bool(aligned))
        return tv_roi_align(features, rois, output_size, spatial_scale, sampling_ratio,
                            aligned)

    @staticmethod
    def backward(ctx, grad_out):
        (rois,) = ctx.saved_tensors
        shape, output_size, scale, ratio, aligned = ctx.conf
        grad = None
        if ctx.needs_input_grad[0]:
            grad = roi_align_features_grad(grad_out, rois, shape, output_size, scale, ratio,
                                           aligned)
        return grad, None, None, None, None, None


def _sample_coordinates(rois: Tensor, output_size: tuple[int, int], scale: float, ratio: int,
                        aligned: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The batch index (int64 ``R``) and the sampling points' y (``R×PH×ratio``) and x
    (``R×PW×ratio``) in feature cells, as torchvision's kernel places them:
    ``start + bin·size + (i + .5)·size / ratio``."""
    ph, pw = output_size
    dt, dev = rois.dtype, rois.device
    offset = 0.5 if aligned else 0.0
    b = rois[:, 0].long()
    x0 = rois[:, 1] * scale - offset
    y0 = rois[:, 2] * scale - offset
    rw = rois[:, 3] * scale - offset - x0
    rh = rois[:, 4] * scale - offset - y0
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    bh, bw = rh / ph, rw / pw
    grid = torch.arange(ratio, dtype=dt, device=dev)[None, None, :] + 0.5
    ys = (y0[:, None, None] + torch.arange(ph, dtype=dt, device=dev)[None, :, None]
          * bh[:, None, None] + grid * bh[:, None, None] / ratio)
    xs = (x0[:, None, None] + torch.arange(pw, dtype=dt, device=dev)[None, :, None]
          * bw[:, None, None] + grid * bw[:, None, None] / ratio)
    return b, ys, xs


def _corners(v: Tensor, n: int):
    """torchvision's ``bilinear_interpolate`` along one axis of ``n`` cells: whether the
    sample counts (``−1 ≤ v ≤ n``), its low and high cells and their weights."""
    inside = (v >= -1.0) & (v <= n)
    v = v.clamp(min=0.0)
    low = v.floor().long()
    top = low >= n - 1
    low = torch.where(top, torch.full_like(low, n - 1), low)
    high = torch.where(top, low, low + 1)
    v = torch.where(top, low.to(v.dtype), v)
    frac = v - low.to(v.dtype)
    return inside, low, high, 1.0 - frac, frac


def _interpolation(rois: Tensor, size: tuple[int, int], output_size: tuple[int, int],
                   scale: float, ratio: int, aligned: bool) -> tuple[Tensor, Tensor]:
    """Per RoI, bin, sample and corner: the flat pixel index (``b·H·W + y·W + x``) and the
    weight (bilinear weight / samples per bin; 0 where torchvision's kernel adds nothing).

    Returns ``(index int64 R×PH×PW×S×4, weight float R×PH×PW×S×4)``, S = ``ratio²``."""
    H, W = size
    ph, pw = output_size
    dt = rois.dtype
    b, ys, xs = _sample_coordinates(rois, output_size, scale, ratio, aligned)
    iy, yl, yh, hy, ly = _corners(ys, H)
    ix, xl, xh, hx, lx = _corners(xs, W)

    # broadcast to R×PH×PW×ratio_y×ratio_x
    def yb(t):
        return t[:, :, None, :, None]

    def xb(t):
        return t[:, None, :, None, :]

    ok = (yb(iy) & xb(ix)).to(dt) / float(ratio * ratio)
    base = b[:, None, None, None, None] * (H * W)
    idx = torch.stack([base + yb(yl) * W + xb(xl), base + yb(yl) * W + xb(xh),
                       base + yb(yh) * W + xb(xl), base + yb(yh) * W + xb(xh)], dim=-1)
    wts = torch.stack([yb(hy) * xb(hx), yb(hy) * xb(lx), yb(ly) * xb(hx), yb(ly) * xb(lx)],
                      dim=-1) * ok[..., None]
    R = rois.shape[0]
    return idx.reshape(R, ph, pw, ratio * ratio * 4), wts.reshape(R, ph, pw, ratio * ratio * 4)


def _axis_weights(v: Tensor, n: int) -> Tensor:
    """``R×bins×n``: per RoI and bin, the weight of each of the ``n`` rows (or columns) —
    the mean over the bin's samples of their bilinear weights (0 for a sample outside)."""
    inside, low, high, w_low, w_high = _corners(v, n)
    keep = inside.to(v.dtype) / v.shape[-1]
    out = v.new_zeros((*v.shape[:2], n))
    out.scatter_add_(2, low, w_low * keep)
    out.scatter_add_(2, high, w_high * keep)
    return out


#: RoIAlign's separable form (:class:`_RoIAlignSeparable`) is used up to this many cells a
#: map: its dense products cost ``R·PH·C·W·(H + PW)``, against a fixed
#: ``R·PH·PW·4·ratio²·C`` for the sparse form with its sort and scatter overheads
SEPARABLE_MAX_CELLS = 48 * 48


class _RoIAlignSeparable(torch.autograd.Function):
    """RoIAlign on a small map as two dense products per image, forward and backward.

    The kernel's weights factor: a sample counts when its y and its x are inside, and its
    bilinear weight is a y weight times an x weight, so a bin is
    ``Σ_y Σ_x Ay[bin_y, y] · Ax[bin_x, x] · F[c, y, x]`` with ``Ay`` (``Ax``) the mean over the
    bin's samples of their row (column) weights (:func:`_axis_weights`). Per image, one
    matrix product contracts the rows of all its RoIs at once and a batched one the
    columns; the backward is the same two products transposed. The same sums as
    torchvision's kernel, in another order (equal to float rounding); no sort, no scatter.
    """

    @staticmethod
    def forward(ctx, features, rois, output_size, spatial_scale, sampling_ratio, aligned):
        N, C, H, W = features.shape
        ph, pw = output_size
        b, ys, xs = _sample_coordinates(rois.to(features.dtype), output_size,
                                        float(spatial_scale), int(sampling_ratio),
                                        bool(aligned))
        ay, ax = _axis_weights(ys, H), _axis_weights(xs, W)  # R×PH×H, R×PW×W
        groups = [torch.nonzero(b == n).flatten() for n in range(N)]
        out = features.new_empty((rois.shape[0], ph, C, pw))
        for n, idx in enumerate(groups):
            if not len(idx):
                continue
            r = len(idx)
            rows = features[n].permute(1, 0, 2).reshape(H, C * W)  # H × (C·W)
            t = (ay[idx].reshape(r * ph, H) @ rows).view(r, ph * C, W)
            out[idx] = (t @ ax[idx].transpose(1, 2)).view(r, ph, C, pw)
        ctx.save_for_backward(ay, ax)
        ctx.groups, ctx.shape = groups, (N, C, H, W)
        return out.permute(0, 2, 1, 3)  # R×C×PH×PW

    @staticmethod
    def backward(ctx, grad_out):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        ay, ax = ctx.saved_tensors
        N, C, H, W = ctx.shape
        ph, pw = ay.shape[1], ax.shape[1]
        g = grad_out.permute(0, 2, 1, 3)  # R×PH×C×PW
        grad = grad_out.new_zeros((N, H, C, W))
        for n, idx in enumerate(ctx.groups):
            if not len(idx):
                continue
            r = len(idx)
            gt = g[idx].reshape(r, ph * C, pw) @ ax[idx]  # r × (PH·C) × W
            grad[n] = (ay[idx].reshape(r * ph, H).t() @ gt.view(r * ph, C * W)).view(H, C, W)
        return grad.permute(0, 2, 1, 3), None, None, None, None, None


def roi_align_features_grad(grad_out: Tensor, rois: Tensor, shape: tuple[int, ...],
                            output_size: tuple[int, int], scale: float, ratio: int,
                            aligned: bool) -> Tensor:
    """The gradient of RoIAlign w.r.t. its ``N×C×H×W`` features (see the module docstring).

    Args:
        grad_out: float ``R×C×PH×PW``.
        rois: float ``R×5`` (batch index, x1, y1, x2, y2) in the image's pixels.
        shape: the features' shape.

    Returns:
        float ``N×C×H×W`` (zeros for no RoI).
    """
    N, C, H, W = shape
    R = rois.shape[0]
    if R == 0:
        return grad_out.new_zeros(shape)
    ph, pw = output_size
    idx, wts = _interpolation(rois.to(grad_out.dtype), (H, W), (ph, pw), scale, ratio,
                              aligned)
    k = idx.shape[-1]
    flat = idx.reshape(-1)
    # Aᵀ in CSR with one row per feature pixel that some bin reads (the entries sorted by
    # pixel; a stable sort keeps each pixel's bins in order; duplicates kept — the product
    # adds them up). Pixels no bin reads get no row: on a CPU the product's cost grows with
    # the number of rows, empty or not, and most pixels of a fine FPN level are read by no
    # RoI.
    order = torch.argsort(flat, stable=True)
    pixels, counts = torch.unique_consecutive(flat[order], return_counts=True)
    crow = torch.zeros(len(pixels) + 1, dtype=torch.long, device=flat.device)
    crow[1:] = counts.cumsum(0)
    cols = torch.div(order, k, rounding_mode="floor")  # the bin (row of grad_out) of each entry
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        at = torch.sparse_csr_tensor(crow, cols, wts.reshape(-1)[order],
                                     (len(pixels), R * ph * pw), check_invariants=False)
    g = grad_out.permute(0, 2, 3, 1).reshape(R * ph * pw, C)
    out = grad_out.new_zeros((N * H * W, C))
    out[pixels] = at @ g  # (read pixels) × C
    return out.view(N, H, W, C).permute(0, 3, 1, 2)


def roi_align(features: Tensor, rois: Tensor, output_size: tuple[int, int],
              spatial_scale: float, sampling_ratio: int, aligned: bool = False,
              backward: str = "sparse") -> Tensor:
    """torchvision's ``roi_align`` (same arguments; ``rois`` ``R×5``); on a CPU with
    ``sampling_ratio`` > 0 and ``backward="sparse"``: the separable form on small maps
    (training and predicting), torchvision's forward with the sparse backward on larger ones
    when training (see the module docstring)."""
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {', '.join(BACKWARDS)}, got {backward!r}")
    if backward == "torchvision" or features.device.type != "cpu" or sampling_ratio <= 0:
        return tv_roi_align(features, rois, output_size, spatial_scale, sampling_ratio,
                            aligned)
    if features.shape[-2] * features.shape[-1] <= SEPARABLE_MAX_CELLS:
        return _RoIAlignSeparable.apply(features, rois, tuple(output_size), spatial_scale,
                                        sampling_ratio, aligned)
    if not torch.is_grad_enabled() or not features.requires_grad:
        return tv_roi_align(features, rois, output_size, spatial_scale, sampling_ratio,
                            aligned)
    return _RoIAlignSparseBackward.apply(features, rois, tuple(output_size), spatial_scale,
                                         sampling_ratio, aligned)


class FastMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (same levels, scales, mapping and forward) whose
    per-level RoIAlign uses :func:`roi_align`'s backward (``backward``)."""

    def __init__(self, *args, backward: str = "sparse", **kwargs):
        super().__init__(*args, **kwargs)
        if backward not in BACKWARDS:
            raise ValueError(f"backward must be one of {', '.join(BACKWARDS)}, "
                             f"got {backward!r}")
        self.backward = backward

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
        from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

        if self.backward == "torchvision" or torchvision._is_tracing():
            return super().forward(x, boxes, image_shapes)
        feats = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(feats, image_shapes,
                                                         self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        if len(feats) == 1:
            return roi_align(feats[0], rois, self.output_size, self.scales[0],
                             self.sampling_ratio, backward=self.backward)
        levels = self.map_levels(boxes)
        counts = torch.bincount(levels, minlength=len(feats)).tolist()
        if len(rois) and max(counts) == len(rois):
            # every RoI on one level (small images: all on the finest): that level's output
            # is the result, in order, without scattering it into a zero tensor
            level = counts.index(len(rois))
            return roi_align(feats[level], rois, self.output_size, self.scales[level],
                             self.sampling_ratio, backward=self.backward)
        result = feats[0].new_zeros((len(rois), feats[0].shape[1], *self.output_size))
        for level, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == level)[0]
            result[idx] = roi_align(feat, rois[idx], self.output_size, scale,
                                    self.sampling_ratio, backward=self.backward
                                    ).to(result.dtype)
        return result
