"""Mask R-CNN's RoI heads for images whose labels leave some classes unchecked.

An image labelled for some classes only (``ImageRecord.unknown``: "no one checked for a sofa
here") may still hold a sofa. Trained as it is, every RoI on that sofa is a background sample,
and the box classifier is taught that sofas are background. With the unchecked classes given
in the image's target (``ignore_classes``: int64 labels in 1..C), this module leaves them out
of the box classifier's softmax for that image's RoIs — their logits are masked before the
loss, so no RoI of the image pushes them down — as stage 1 leaves them out of its loss. The
boxes, the masks, the RPN and the other classes train as before; inference is unchanged.

Built from torchvision's heads by :meth:`PartialLabelRoIHeads.from_heads` (the same modules,
parameters and state-dict keys); a target without ``ignore_classes`` trains exactly as
torchvision's :class:`~torchvision.models.detection.roi_heads.RoIHeads`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads

#: the logit an unchecked class gets: exp(−1e4) vanishes in the softmax and the value fits
#: float16 (mixed precision)
_MASKED = -1e4


def unchecked_mask(rois_per_image: Sequence[int], targets: Sequence[dict[str, Tensor]],
                   num_classes: int, device: torch.device | str = "cpu") -> Tensor | None:
    """Per sampled RoI (images in order), which class logits to leave out.

    Args:
        rois_per_image: the number of RoIs sampled in each image.
        targets: the images' targets; ``ignore_classes`` (int64 labels in 1..C) optional.
        num_classes: logits per RoI, background (0) included.

    Returns:
        bool ``R×num_classes`` (R = the sum of ``rois_per_image``), or None when no image
        has an unchecked class (nothing to leave out).
    """
    if not any(len(t.get("ignore_classes", ())) for t in targets):
        return None
    mask = torch.zeros((int(sum(rois_per_image)), num_classes), dtype=torch.bool,
                       device=device)
    start = 0
    for n, t in zip(rois_per_image, targets):
        ignore = t.get("ignore_classes")
        if ignore is not None and len(ignore):
            labels = ignore.to(device=device, dtype=torch.int64)
            if int(labels.min()) < 1 or int(labels.max()) >= num_classes:
                raise ValueError(f"ignore_classes must be labels in 1..{num_classes - 1}, "
                                 f"got {labels.tolist()}")
            mask[start:start + int(n), labels] = True
        start += int(n)
    return mask


class PartialLabelRoIHeads(RoIHeads):
    """torchvision's RoI heads whose box-classifier loss leaves out, per training image, the
    classes in its target's ``ignore_classes`` (see the module docstring)."""

    _pending: Tensor | None

    @classmethod
    def from_heads(cls, heads: RoIHeads) -> PartialLabelRoIHeads:
        """The same modules and settings as ``heads`` (nothing initialised, no random draw)."""
        new = cls.__new__(cls)
        new.__dict__.update(heads.__dict__)
        new._pending = None
        new.box_predictor.register_forward_hook(new._leave_out_unchecked)
        return new

    def select_training_samples(self, proposals, targets):
        out = super().select_training_samples(proposals, targets)
        num_classes = int(self.box_predictor.cls_score.out_features)
        self._pending = unchecked_mask([len(p) for p in out[0]], targets, num_classes,
                                       out[0][0].device if out[0] else "cpu")
        return out

    def _leave_out_unchecked(self, module: nn.Module, inputs, output):
        """Forward hook of the box predictor: the sampled RoIs' logits of their image's
        unchecked classes masked (training only; the mask is used once)."""
        mask, self._pending = self._pending, None
        if mask is None or not self.training:
            return output
        class_logits, box_regression = output
        return class_logits.masked_fill(mask, _MASKED), box_regression
