"""Mask R-CNN inference on an image and its mirror image, merged (test-time flip).

The detections of both views (the mirror's boxes mirrored back) are pooled per image and
suppressed per class as the model's own post-processing does (``box_nms_thresh``, at most
``box_detections_per_img``, highest scores first); each kept box then gets its mask from
*both* views — the mask head run on the box in the image and on its mirror in the mirror
image, whose ``M×M`` mask is mirrored back — as the mean of the two probabilities. This is
the merge of Detectron2's test-time augmentation for Mask R-CNN, written on torchvision's
modules.

Coordinates: boxes are torchvision's, continuous ``x1 y1 x2 y2`` with pixel ``i`` covering
``[i, i + 1)``; mirroring an image of width ``W`` maps ``x`` to ``W − x``, so a box
``(x1, x2)`` to ``(W − x2, W − x1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.roi_heads import maskrcnn_inference
from torchvision.ops import batched_nms


def mirror_boxes(boxes: Tensor, width: int) -> Tensor:
    """``N×4`` xyxy boxes in an image of ``width`` pixels → the same boxes in its mirror."""
    out = boxes.clone()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


def merge_views(boxes: Sequence[Tensor], scores: Sequence[Tensor], labels: Sequence[Tensor],
                nms_iou: float, limit: int) -> tuple[Tensor, Tensor, Tensor]:
    """The detections of several views of one image (boxes in the image's coordinates),
    suppressed per class at ``nms_iou`` and cut to the ``limit`` best: ``(boxes N×4, scores
    N, labels N)``, highest score first; N may be 0."""
    b, s, lab = torch.cat(list(boxes)), torch.cat(list(scores)), torch.cat(list(labels))
    keep = batched_nms(b, s, lab, nms_iou)[:limit]
    return b[keep], s[keep], lab[keep]


def _detect_boxes(model: MaskRCNN, features, images):
    """The RPN and box head of ``model`` on one view: per image ``(boxes, scores, labels)``
    at the transformed size, after the model's score threshold and per-class NMS."""
    heads = model.roi_heads
    proposals, _ = model.rpn(images, features)
    pooled = heads.box_head(heads.box_roi_pool(features, proposals, images.image_sizes))
    class_logits, box_regression = heads.box_predictor(pooled)
    return heads.postprocess_detections(class_logits, box_regression, proposals,
                                        images.image_sizes)


def _mask_probs(model: MaskRCNN, features, boxes: list[Tensor], labels: list[Tensor],
                image_sizes) -> list[Tensor]:
    """The mask head's ``N×1×M×M`` probabilities of the given class for each box."""
    heads = model.roi_heads
    pooled = heads.mask_head(heads.mask_roi_pool(features, boxes, image_sizes))
    return maskrcnn_inference(heads.mask_predictor(pooled), labels)


def detect_with_flip(model: MaskRCNN, images: Sequence[Tensor],
                     mirror: bool = True) -> list[dict[str, Tensor]]:
    """Detections of ``model`` (in eval mode, without gradients) on ``images`` and their
    mirror images, merged (see the module docstring). ``mirror=False``: the image alone,
    through the same steps — the detections of ``model(images)``.

    Args:
        images: float ``3×H×W`` in [0, 1], any sizes.

    Returns:
        torchvision's detections, one dict per image, at the image's size: ``boxes``
        float ``N×4``, ``scores`` ``N``, ``labels`` int64 ``N`` in 1..C, ``masks`` float
        ``N×1×H×W`` probabilities; N may be 0.
    """
    heads = model.roi_heads
    originals = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    plain, _ = model.transform(list(images))
    f_plain = model.backbone(plain.tensors)
    det_plain = _detect_boxes(model, f_plain, plain)
    if mirror:
        flipped, _ = model.transform([im.flip(-1) for im in images])
        f_mirror = model.backbone(flipped.tensors)
        det_mirror = _detect_boxes(model, f_mirror, flipped)
    merged = []
    for i, (_, w) in enumerate(plain.image_sizes):
        views = [[d[i] for d in det_plain]]
        if mirror:
            bm, sm, lm = (d[i] for d in det_mirror)
            views.append([mirror_boxes(bm, w), sm, lm])
        merged.append(merge_views(*zip(*views), heads.nms_thresh, heads.detections_per_img))
    boxes = [b for b, _, _ in merged]
    labels = [lab for _, _, lab in merged]
    probs = _mask_probs(model, f_plain, boxes, labels, plain.image_sizes)
    if mirror:
        probs_m = _mask_probs(model, f_mirror, [mirror_boxes(b, w) for b, (_, w)
                                                in zip(boxes, plain.image_sizes)],
                              labels, plain.image_sizes)
        probs = [(p + pm.flip(-1)) / 2 for p, pm in zip(probs, probs_m)]
    detections = [{"boxes": b, "scores": s, "labels": lab, "masks": p}
                  for (b, s, lab), p in zip(merged, probs)]
    return model.transform.postprocess(detections, plain.image_sizes, originals)
