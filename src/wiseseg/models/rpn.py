"""torchvision's region proposal network without the work whose result a CPU step throws away.

In a training step the RPN loss reads only the anchors the sampler draws
(``rpn_batch_size_per_image`` per image, e.g. 128 of the 65,472 anchors of a 512-px image),
and the proposals only the ``pre_nms_top_n`` best anchors of each level. torchvision still
computes everything densely: it decodes a box for every anchor, encodes a regression target
for every anchor, and backpropagates the RPN head as a dense convolution whose output
gradient is zero everywhere but at the sampled anchors (at 512 px the finest level's two 3×3
backward passes, the FPN's and this head's, were 31 % of torchvision's step on a CPU:
``benchmarks/results/step_profile.json``).

:class:`SparseGradRPNHead` is ``RPNHead`` (same parameters and state-dict keys, same forward)
whose backward computes the gradients from the locations that received one — the same sums
as the dense convolution's, in another order (equal to float rounding).
:class:`LeanRPN` is ``RegionProposalNetwork`` (same matcher, sampler and random draws, same
losses and proposals) that decodes only the top-n anchors and encodes only the sampled
positives. Both are exact shortcuts: what is learned does not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import (
    RegionProposalNetwork,
    RPNHead,
    concat_box_prediction_layers,
)
from torchvision.ops import boxes as box_ops

from wiseseg.models.sparse_conv import conv3x3_grads_at


class _HeadSparseBackward(torch.autograd.Function):
    """``relu(conv3×3(x)) → (1×1 class conv, 1×1 box conv)``; backward from the nonzero
    output-gradient locations only.

    Forward: ``x`` float ``N×C×H×W``; ``w`` ``C×C×3×3``, ``b`` ``C``; ``wc`` ``A×C×1×1``,
    ``bc`` ``A``; ``wb`` ``4A×C×1×1``, ``bb`` ``4A``. Returns ``(logits N×A×H×W,
    deltas N×4A×H×W)`` with exactly torchvision's ops (padding 1, stride 1)."""

    @staticmethod
    def forward(ctx, x, w, b, wc, bc, wb, bb):
        t = F.relu(F.conv2d(x, w, b, padding=1))
        logits = F.conv2d(t, wc, bc)
        deltas = F.conv2d(t, wb, bb)
        ctx.save_for_backward(x, w, t, wc, wb)
        return logits, deltas

    @staticmethod
    def backward(ctx, g_logits, g_deltas):
        x, w, t, wc, wb = ctx.saved_tensors
        if g_logits is None:
            g_logits = torch.zeros_like(t[:, : wc.shape[0]])
        if g_deltas is None:
            g_deltas = torch.zeros_like(t[:, : wb.shape[0]])
        # the locations (image, row, column) where any output received a gradient: the
        # sampled anchors (the loss reads nothing else); a location whose gradient is
        # exactly zero contributes nothing to any sum below, so leaving it out is exact
        n, i, j = ((g_logits != 0).any(1) | (g_deltas != 0).any(1)).nonzero(as_tuple=True)
        gl = g_logits[n, :, i, j]  # P×A
        gd = g_deltas[n, :, i, j]  # P×4A
        tp = t[n, :, i, j]  # P×C
        grads = [None] * 7
        if ctx.needs_input_grad[3]:
            grads[3] = (gl.t() @ tp)[:, :, None, None]
        if ctx.needs_input_grad[4]:
            grads[4] = gl.sum(0)
        if ctx.needs_input_grad[5]:
            grads[5] = (gd.t() @ tp)[:, :, None, None]
        if ctx.needs_input_grad[6]:
            grads[6] = gd.sum(0)
        if not any(ctx.needs_input_grad[:3]):
            return tuple(grads)
        # gradient at the 3×3 convolution's output (through the ReLU: zero where t == 0)
        g_pre = (gl @ wc.flatten(1) + gd @ wb.flatten(1)) * (tp > 0).to(tp.dtype)  # P×C
        grads[0], grads[1], grads[2] = conv3x3_grads_at(x, w, n, i, j, g_pre,
                                                        *ctx.needs_input_grad[:3])
        return tuple(grads)


class SparseGradRPNHead(RPNHead):
    """torchvision's ``RPNHead`` (one 3×3 conv + ReLU, 1×1 class and box convs; same
    parameters, initialisation and state-dict keys) whose training backward on a CPU uses
    only the locations with a gradient (:class:`_HeadSparseBackward`). Elsewhere — no grad,
    a GPU — it is ``RPNHead.forward``."""

    @classmethod
    def from_head(cls, head: RPNHead) -> SparseGradRPNHead:
        """The same modules (and parameters) as ``head``, a one-convolution ``RPNHead``;
        nothing is initialised, so building it draws no random numbers."""
        if len(head.conv) != 1:
            raise ValueError("SparseGradRPNHead needs an RPNHead with conv_depth=1")
        new = cls.__new__(cls)
        torch.nn.Module.__init__(new)
        new.conv, new.cls_logits, new.bbox_pred = head.conv, head.cls_logits, head.bbox_pred
        return new

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        conv = self.conv[0][0]
        if not (torch.is_grad_enabled() and x and x[0].device.type == "cpu"
                and conv.weight.requires_grad):
            return super().forward(x)
        logits, deltas = [], []
        for feature in x:
            lo, de = _HeadSparseBackward.apply(
                feature, conv.weight, conv.bias, self.cls_logits.weight, self.cls_logits.bias,
                self.bbox_pred.weight, self.bbox_pred.bias)
            logits.append(lo)
            deltas.append(de)
        return logits, deltas


class LeanRPN(RegionProposalNetwork):
    """``RegionProposalNetwork`` that decodes boxes only for the ``pre_nms_top_n`` anchors of
    each level it keeps, and encodes regression targets only for the sampled positive
    anchors the loss reads. The anchors, matcher, sampler (and its random draws, in the same
    order), filtering and NMS are torchvision's; the proposals and losses are the same.

    Build it from a constructed RPN with :meth:`from_rpn` (same modules and settings)."""

    @classmethod
    def from_rpn(cls, rpn: RegionProposalNetwork) -> LeanRPN:
        lean = cls(rpn.anchor_generator, rpn.head,
                   rpn.proposal_matcher.high_threshold, rpn.proposal_matcher.low_threshold,
                   rpn.fg_bg_sampler.batch_size_per_image, rpn.fg_bg_sampler.positive_fraction,
                   dict(rpn._pre_nms_top_n), dict(rpn._post_nms_top_n), rpn.nms_thresh,
                   rpn.score_thresh)
        lean.min_size = rpn.min_size
        return lean

    def forward(self, images: ImageList, features: dict[str, Tensor],
                targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[list[Tensor], dict[str, Tensor]]:
        feats = list(features.values())
        objectness, pred_bbox_deltas = self.head(feats)
        anchors = self.anchor_generator(images, feats)
        num_images = len(anchors)
        num_anchors_per_level = [o[0].numel() for o in objectness]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness,
                                                                    pred_bbox_deltas)
        boxes, scores = self._proposals(pred_bbox_deltas.detach(), anchors, objectness,
                                        images.image_sizes, num_anchors_per_level, num_images)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("targets should not be None")
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
            losses = self._loss(objectness, pred_bbox_deltas, labels, matched_gt_boxes,
                                anchors)
        return boxes, losses

    def _proposals(self, deltas: Tensor, anchors: list[Tensor], objectness: Tensor,
                   image_shapes: list[tuple[int, int]], num_anchors_per_level: list[int],
                   num_images: int) -> tuple[list[Tensor], list[Tensor]]:
        """torchvision's ``box_coder.decode`` + ``filter_proposals``, with the boxes decoded
        after the per-level top-n selection (decoding is per anchor, so the selected boxes
        are the ones torchvision decodes)."""
        objectness = objectness.detach().reshape(num_images, -1)
        device = objectness.device
        levels = torch.cat([torch.full((n,), idx, dtype=torch.int64, device=device)
                            for idx, n in enumerate(num_anchors_per_level)])
        levels = levels.reshape(1, -1).expand_as(objectness)
        top_n_idx = self._get_top_n_idx(objectness, num_anchors_per_level)
        batch_idx = torch.arange(num_images, device=device)[:, None]
        objectness = objectness[batch_idx, top_n_idx]
        levels = levels[batch_idx, top_n_idx]
        chosen = deltas.reshape(num_images, -1, 4)[batch_idx, top_n_idx]
        anchor_boxes = torch.stack(anchors)[batch_idx, top_n_idx]
        proposals = self.box_coder.decode_single(chosen.reshape(-1, 4),
                                                 anchor_boxes.reshape(-1, 4))
        proposals = proposals.reshape(num_images, -1, 4)
        objectness_prob = torch.sigmoid(objectness)
        final_boxes, final_scores = [], []
        for boxes, scores, lvl, img_shape in zip(proposals, objectness_prob, levels,
                                                 image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, img_shape)
            keep = box_ops.remove_small_boxes(boxes, self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = torch.where(scores >= self.score_thresh)[0]
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = box_ops.batched_nms(boxes, scores, lvl, self.nms_thresh)
            keep = keep[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores

    def _loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor],
              matched_gt_boxes: list[Tensor], anchors: list[Tensor]) -> dict[str, Tensor]:
        """torchvision's ``compute_loss`` with the regression targets of the sampled positive
        anchors only (the box loss reads no other)."""
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(sampled_pos, dim=0))[0]
        neg = torch.where(torch.cat(sampled_neg, dim=0))[0]
        sampled = torch.cat([pos, neg], dim=0)
        targets = self.box_coder.encode_single(torch.cat(matched_gt_boxes, dim=0)[pos],
                                               torch.cat(anchors, dim=0)[pos])
        box_loss = F.smooth_l1_loss(pred_bbox_deltas[pos], targets, beta=1 / 9,
                                    reduction="sum") / sampled.numel()
        objectness_loss = F.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled], torch.cat(labels, dim=0)[sampled])
        return {"loss_objectness": objectness_loss, "loss_rpn_box_reg": box_loss}
