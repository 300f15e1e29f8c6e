"""The backward pass of a 3×3 convolution whose output gradient is zero at most positions.

In a Mask R-CNN training step the gradient reaching the RPN head is nonzero only at the
sampled anchors, and the gradient reaching an FPN level only where some RoI reads it (on the
512-px batch of ``benchmarks/step_time.py``, 21 % of the finest level's positions and 4 % of
the next one's: ``benchmarks/results/step_profile.json``). A dense convolution backward
computes the zeros too. With the ``P`` positions that received a gradient, the same sums are

    grad_weight[o, c, a, b] = Σ_p g[p, o] · x[n_p, c, i_p + a − 1, j_p + b − 1]
    grad_x[n_p, c, i_p + a − 1, j_p + b − 1] += Σ_o g[p, o] · weight[o, c, a, b]

two matrix products over the ``P × 9C`` patches (gathered from a channels-last copy of the
input; positions outside the image read a zero row) and one scatter-add — the same terms
as the dense backward, added in another order (equal to float rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: above this fraction of positions with a gradient the dense backward is used: the
#: gather and scatter cost about as much as the dense convolution's extra products there
DENSE_ABOVE = 0.5


def _neighbour_rows(n: Tensor, i: Tensor, j: Tensor, H: int, W: int, zero_row: int
                    ) -> Tensor:
    """Row of each position's 3×3 neighbours (``P×9``, row-major over the offsets) in a
    channels-last ``N·H·W × C`` matrix of the input, or ``zero_row`` for a neighbour outside
    the image (the convolution's zero padding)."""
    d = torch.arange(-1, 2, device=n.device)
    y = i[:, None, None] + d[None, :, None]  # P×3×1
    x = j[:, None, None] + d[None, None, :]  # P×1×3
    inside = (y >= 0) & (y < H) & (x >= 0) & (x < W)
    rows = (n[:, None, None] * H + y) * W + x
    return torch.where(inside, rows, torch.full_like(rows, zero_row)).reshape(-1, 9)


def conv3x3_grads_at(x: Tensor, weight: Tensor, n: Tensor, i: Tensor, j: Tensor, g: Tensor,
                     need_x: bool = True, need_weight: bool = True, need_bias: bool = True
                     ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of ``conv2d(x, weight, bias, stride=1, padding=1)`` (3×3, one group) from
    its output gradient, given at its nonzero positions only.

    Args:
        x: float ``N×C×H×W``, the convolution's input.
        weight: float ``O×C×3×3``.
        n, i, j: int64 ``P``: image, row and column of each position with a gradient.
        g: float ``P×O``: the output gradient there (zero everywhere else).

    Returns:
        ``(grad_x N×C×H×W or None, grad_weight O×C×3×3 or None, grad_bias O or None)``.
    """
    N, C, H, W = x.shape
    out_ch = weight.shape[0]
    gx = gw = gb = None
    if need_bias:
        gb = g.sum(0)
    if not (need_x or need_weight):
        return gx, gw, gb
    zero = N * H * W  # the appended zero row
    rows = _neighbour_rows(n, i, j, H, W, zero)  # P×9
    if need_weight:
        # the input channels-last with a zero row appended: a neighbour is one row
        table = x.new_empty((zero + 1, C))
        table[:zero].view(N, H, W, C).copy_(x.permute(0, 2, 3, 1))
        table[zero] = 0
        patches = table.index_select(0, rows.reshape(-1)).view(-1, 9, C)  # P×9×C
        # O×(C·9) in the weight's (c, a, b) order ← (O × P) · (P × (c, a·b))
        gw = (g.t() @ patches.transpose(1, 2).reshape(-1, C * 9)).view(out_ch, C, 3, 3)
    if need_x:
        contrib = (g @ weight.reshape(out_ch, C * 9)).view(-1, C, 9).transpose(1, 2)  # P×9×C
        buf = x.new_zeros((zero + 1, C))
        buf.index_add_(0, rows.reshape(-1), contrib.reshape(-1, C))
        gx = buf[:zero].view(N, H, W, C).permute(0, 3, 1, 2)
    return gx, gw, gb


def positions_with_gradient(grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(n, i, j)`` of the positions of an ``N×C×H×W`` gradient with any nonzero channel."""
    return (grad != 0).any(1).nonzero(as_tuple=True)


class _Conv3x3SparseBackward(torch.autograd.Function):
    """``conv2d(x, w, b, padding=1)``; backward from the positions with a gradient when they
    are at most :data:`DENSE_ABOVE` of all, else the dense convolution backward."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return F.conv2d(x, w, b, padding=1)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        need_b = need_b and ctx.has_bias
        n, i, j = positions_with_gradient(grad)
        if n.numel() > DENSE_ABOVE * grad.shape[0] * grad.shape[2] * grad.shape[3]:
            gx, gw, gb = torch.ops.aten.convolution_backward(
                grad, x, w, [w.shape[0]] if need_b else None, [1, 1], [1, 1], [1, 1], False,
                [0, 0], 1, [need_x, need_w, need_b])
            return gx, gw, gb
        gx, gw, gb = conv3x3_grads_at(x, w, n, i, j, grad[n, :, i, j], need_x, need_w,
                                      need_b)
        return gx, gw, gb


class SparseGradConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys, same forward) whose backward, for
    a 3×3 stride-1 padding-1 convolution training on a CPU, uses only the output positions
    that received a gradient (:func:`conv3x3_grads_at`). Any other case is ``nn.Conv2d``."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> SparseGradConv2d:
        """The same module state (and parameters) as ``conv``; no initialisation."""
        new = cls.__new__(cls)
        new.__dict__.update(conv.__dict__)
        return new

    def _sparse_ok(self, x: Tensor) -> bool:
        return (x.device.type == "cpu" and torch.is_grad_enabled() and x.dim() == 4
                and self.weight.requires_grad and tuple(self.kernel_size) == (3, 3)
                and tuple(self.stride) == (1, 1) and tuple(self.padding) == (1, 1)
                and tuple(self.dilation) == (1, 1) and self.groups == 1
                and self.padding_mode == "zeros")

    def forward(self, x: Tensor) -> Tensor:
        if not self._sparse_ok(x):
            return super().forward(x)
        return _Conv3x3SparseBackward.apply(x, self.weight, self.bias)
