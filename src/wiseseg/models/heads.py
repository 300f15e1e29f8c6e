"""Mask R-CNN's mask predictor as two matrix products on a CPU.

torchvision's ``MaskRCNNPredictor`` is a 2×2 stride-2 transposed convolution, a ReLU and a
1×1 convolution. On a CPU the transposed convolution takes PyTorch's slow (non-oneDNN)
path and the 1×1 convolution an im2col one; both are plain matrix products over the RoI
pixels: a stride-2 2×2 transposed convolution writes every input pixel's ``C_in``-vector
times a ``C_in × (2·2·C_out)`` matrix to its own 2×2 output block (the blocks do not
overlap), and a 1×1 convolution is a ``C × K`` product per pixel. Same parameters, same
values to float rounding.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor


class MatmulMaskRCNNPredictor(MaskRCNNPredictor):
    """torchvision's ``MaskRCNNPredictor`` (the same ``conv5_mask``, ``relu`` and
    ``mask_fcn_logits`` modules and state-dict keys) computed as matrix products on a CPU;
    elsewhere its own forward.

    Input float ``R×C_in×h×w`` (RoI features); output float ``R×K×2h×2w`` logits (values
    equal to ``MaskRCNNPredictor.forward``'s to float rounding).
    """

    @classmethod
    def from_predictor(cls, predictor: MaskRCNNPredictor) -> MatmulMaskRCNNPredictor:
        """The same modules (and parameters) as ``predictor``; nothing is initialised, so
        building it draws no random numbers."""
        new = cls.__new__(cls)
        nn.Sequential.__init__(new, OrderedDict(predictor.named_children()))
        return new

    def forward(self, x: Tensor) -> Tensor:
        up, logits = self.conv5_mask, self.mask_fcn_logits
        if x.device.type != "cpu" or x.dim() != 4 or tuple(up.kernel_size) != (2, 2) \
                or tuple(up.stride) != (2, 2) or tuple(up.padding) != (0, 0):
            return super().forward(x)
        R, C, h, w = x.shape
        out_ch, K = up.out_channels, logits.out_channels
        # ConvTranspose2d weight C_in×C_out×2×2 → C_in × (a, b, C_out): row (i, j) of the
        # product holds output pixels (2i + a, 2j + b) for every (a, b)
        w_up = up.weight.permute(0, 2, 3, 1).reshape(C, 4 * out_ch)
        pixels = x.permute(0, 2, 3, 1).reshape(-1, C)  # (R·h·w) × C_in
        if up.bias is not None:
            y = torch.addmm(up.bias.repeat(4), pixels, w_up)
        else:
            y = pixels @ w_up
        y = F.relu(y).view(-1, out_ch)  # (R·h·w·2·2) × C_out, still in (i, j, a, b) order
        out = F.linear(y, logits.weight.reshape(K, out_ch), logits.bias)  # … × K
        # (R, i, j, a, b, k) → (R, k, 2i + a, 2j + b): only the K-channel logits are moved
        return out.view(R, h, w, 2, 2, K).permute(0, 5, 1, 3, 2, 4).reshape(R, K, 2 * h,
                                                                             2 * w)


def use_matmul_predictor(model: nn.Module) -> None:
    """Swap a torchvision Mask R-CNN's mask predictor for :class:`MatmulMaskRCNNPredictor`
    (same parameters); a no-op when it has none or already has it."""
    heads = model.roi_heads
    pred = getattr(heads, "mask_predictor", None)
    if isinstance(pred, MaskRCNNPredictor) and not isinstance(pred, MatmulMaskRCNNPredictor):
        heads.mask_predictor = MatmulMaskRCNNPredictor.from_predictor(pred)

