"""Mask R-CNN builders: torchvision's detector on a registry backbone with an FPN.

The paper's model is ``resnet50`` + FPN at 800/1333 px; the ``cpu`` preset uses a light
backbone with slim FPN and heads at the data's own size. Everything here composes torchvision
modules (MaskRCNN, FeaturePyramidNetwork, AnchorGenerator, MultiScaleRoIAlign, heads).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from wiseseg.models.backbones import Backbone, build_backbone

_LEVELS = ("c2", "c3", "c4", "c5")


class FPNBackbone(nn.Module):
    """A registry backbone followed by an FPN: ``{"0".."3", "pool"}`` maps with
    ``out_channels`` channels at strides 4, 8, 16, 32, 64 (the layout MaskRCNN expects).
    Input is already normalized by MaskRCNN's transform with the backbone's mean/std."""

    def __init__(self, body: Backbone, out_channels: int):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork([body.out_channels[k] for k in _LEVELS], out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), feats[k]) for i, k in enumerate(_LEVELS)))


def freeze_stages(backbone: Backbone, frozen: int) -> None:
    """Stop gradients in the stem and the first ``frozen`` pyramid stages (torchvision's
    ``trainable_layers`` idea): they change little from ImageNet and cost backward time."""
    from wiseseg.models.efficientnet_lite import EfficientNetLite0

    body = backbone.body
    if isinstance(body, EfficientNetLite0):
        # stage index after which c2, c3, c4 are taken: 1, 2, 4
        last = {0: -1, 1: 1, 2: 2, 3: 4, 4: len(body.stages) - 1}[min(frozen, 4)]
        modules = [body.stem] + list(body.stages[: last + 1])
    else:
        modules = [body.conv1, body.bn1] + [getattr(body, f"layer{i}")
                                           for i in range(1, min(frozen, 4) + 1)]
    if frozen <= 0:
        modules = []
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)


def build_maskrcnn(
    num_classes: int,
    backbone: str = "resnet50",
    pretrained: str = "imagenet",
    backbone_weights: str | None = None,
    frozen_stages: int = 1,
    freeze_bn: bool = True,
    fpn_channels: int = 256,
    representation_size: int = 1024,
    mask_layers: Sequence[int] = (256, 256, 256, 256),
    anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
    min_size: int = 800,
    max_size: int = 1333,
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_batch_size_per_image: int = 256,
    box_batch_size_per_image: int = 512,
    box_score_thresh: float = 0.05,
    box_nms_thresh: float = 0.5,
    box_detections_per_img: int = 100,
) -> MaskRCNN:
    """torchvision Mask R-CNN with ``num_classes`` foreground classes (+1 background).

    Inputs/outputs follow torchvision's ``MaskRCNN``: a list of float ``3×H×W`` images in
    [0, 1]; targets ``{"boxes": float N×4 xyxy, "labels": int64 N in 1..C, "masks": uint8
    N×H×W}`` (N may be 0); predictions ``{"boxes", "labels", "scores", "masks" (float
    N×1×H×W probabilities)}``.
    """
    from wiseseg.classifier.model_io import freeze_batchnorm

    body = build_backbone(backbone, pretrained=pretrained, weights=backbone_weights)
    if freeze_bn:
        freeze_batchnorm(body)
    freeze_stages(body, frozen_stages)
    fpn = FPNBackbone(body, fpn_channels)
    anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes),
                              ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    box_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    mask_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=14, sampling_ratio=2)
    box_head = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
    mask_head = MaskRCNNHeads(fpn_channels, list(mask_layers), dilation=1)
    return MaskRCNN(
        fpn,
        num_classes=None,
        min_size=min_size, max_size=max_size,
        image_mean=list(body.mean), image_std=list(body.std),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        box_roi_pool=box_pool, box_head=box_head,
        box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
        box_batch_size_per_image=box_batch_size_per_image,
        box_score_thresh=box_score_thresh, box_nms_thresh=box_nms_thresh,
        box_detections_per_img=box_detections_per_img,
        mask_roi_pool=mask_pool, mask_head=mask_head,
        mask_predictor=MaskRCNNPredictor(list(mask_layers)[-1], list(mask_layers)[-1],
                                         num_classes + 1),
    )
