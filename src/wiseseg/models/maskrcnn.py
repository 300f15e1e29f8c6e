"""Mask R-CNN builders: torchvision's detector on a registry backbone with an FPN.

The paper's model is ``resnet50`` + FPN at 800/1333 px; the ``cpu`` preset uses a light
backbone with slim FPN and heads at the data's own size. Everything here composes torchvision
modules (MaskRCNN, FeaturePyramidNetwork, AnchorGenerator, MultiScaleRoIAlign, heads).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from wiseseg.models.backbones import LEVELS, Backbone, build_backbone
from wiseseg.models.freezing import fixed_levels as freezing_fixed_levels
from wiseseg.models.freezing import freeze_batchnorm, freeze_stages, is_fixed
from wiseseg.models.heads import use_matmul_predictor
from wiseseg.models.partial_heads import PartialLabelRoIHeads
from wiseseg.models.roi_align import FastMultiScaleRoIAlign
from wiseseg.models.rpn import LeanRPN, SparseGradRPNHead
from wiseseg.models.sparse_conv import SparseGradConv2d
from wiseseg.tensors import pad_stack

_LEVELS = LEVELS


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
        return self.from_body(self.body(x))

    def from_body(self, feats: dict[str, Tensor]) -> OrderedDict[str, Tensor]:
        """The FPN on the body's ``{"c2".."c5"}`` maps (computed now or cached)."""
        return self.fpn(OrderedDict((str(i), feats[k]) for i, k in enumerate(_LEVELS)))


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
    roi_align_backward: str = "sparse",
    cpu_shortcuts: bool = True,
) -> MaskRCNN:
    """torchvision Mask R-CNN with ``num_classes`` foreground classes (+1 background).

    Inputs/outputs follow torchvision's ``MaskRCNN``: a list of float ``3×H×W`` images in
    [0, 1]; targets ``{"boxes": float N×4 xyxy, "labels": int64 N in 1..C, "masks": uint8
    N×H×W}`` (N may be 0); predictions ``{"boxes", "labels", "scores", "masks" (float
    N×1×H×W probabilities)}``.

    ``roi_align_backward``: ``sparse`` (the RoI poolers' backward as one sparse product on a
    CPU: the same gradient, ~3× faster than torchvision's loop; see
    :mod:`wiseseg.models.roi_align`) or ``torchvision`` (its own kernel).

    ``cpu_shortcuts``: skip the work whose result a CPU training step throws away — the
    RPN decodes boxes only for the anchors it keeps and encodes targets only for the sampled
    ones (:class:`~wiseseg.models.rpn.LeanRPN`), its head backpropagates only from the
    sampled anchors (:class:`~wiseseg.models.rpn.SparseGradRPNHead`), the FPN's 3×3
    convolutions only from the positions that RoIs and anchors read when they are few
    (:class:`~wiseseg.models.sparse_conv.SparseGradConv2d`), and the mask predictor
    runs as matrix products (:class:`~wiseseg.models.heads.MatmulMaskRCNNPredictor`). Same
    parameters, state-dict keys, random draws, losses and gradients (to float rounding);
    False is torchvision's modules as they are.
    """
    body = build_backbone(backbone, pretrained=pretrained, weights=backbone_weights)
    if freeze_bn:
        freeze_batchnorm(body)
    freeze_stages(body, frozen_stages)
    fpn = FPNBackbone(body, fpn_channels)
    anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes),
                              ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    box_pool = FastMultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2,
                                      backward=roi_align_backward)
    mask_pool = FastMultiScaleRoIAlign(["0", "1", "2", "3"], output_size=14, sampling_ratio=2,
                                       backward=roi_align_backward)
    box_head = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
    mask_head = MaskRCNNHeads(fpn_channels, list(mask_layers), dilation=1)
    model = MaskRCNN(
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
    init_predictors(model)
    # inert unless a training target names classes its image leaves unchecked
    model.roi_heads = PartialLabelRoIHeads.from_heads(model.roi_heads)
    if cpu_shortcuts:
        # built from the constructed modules (no initialisation, no random draw): the same
        # parameters as torchvision's model, whatever the seed
        model.rpn = LeanRPN.from_rpn(model.rpn)
        model.rpn.head = SparseGradRPNHead.from_head(model.rpn.head)
        for block in fpn.fpn.layer_blocks:  # gradient only where RoIs and anchors read
            block[0] = SparseGradConv2d.from_conv(block[0])
        use_matmul_predictor(model)
    return model


def init_predictors(model: MaskRCNN) -> None:
    """Start the class, box and mask predictors near zero output (Detectron2's init).

    torchvision initialises the mask logits with Kaiming-normal over ``fan_out`` = the number
    of classes, i.e. a weight std of sqrt(2 / (C + 1)): 0.53 with 6 classes, against 0.16
    with COCO's 80. On few classes and unnormalised features (EfficientNet-Lite's c2–c4 are
    linear projections with std ≈ 7) the first mask logits are in the tens and the mask loss
    starts at 7–9 instead of ln 2 ≈ 0.69, spending the first epoch coming down. Normal
    weights with std 0.001 (mask, box deltas) and 0.01 (class scores), zero biases, start
    every prediction at "don't know".
    """
    for layer, std in ((model.roi_heads.box_predictor.cls_score, 0.01),
                       (model.roi_heads.box_predictor.bbox_pred, 0.001),
                       (model.roi_heads.mask_predictor.mask_fcn_logits, 0.001)):
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)


# ------------------------------------------------------------------ training on cached features
def body_is_fixed(model: MaskRCNN) -> bool:
    """True when the backbone body cannot change during training: no trainable parameter and
    no BatchNorm that would update its running statistics (``freeze_bn`` replaces them)."""
    return is_fixed(model.backbone.body)


def fixed_levels(model: MaskRCNN) -> tuple[str, ...]:
    """The pyramid levels, bottom up, whose maps training cannot change
    (:func:`wiseseg.models.freezing.fixed_levels` of the body). ``("c2", "c3", "c4")`` when the
    stem and the first three stages are frozen (``frozen_stages: 3``); all four when the body
    is fixed (:func:`body_is_fixed`)."""
    return freezing_fixed_levels(model.backbone.body, tuple(_LEVELS))


def cacheable(model: MaskRCNN) -> bool:
    """True when training may read the body's maps from a cache (:class:`MaskRCNNOnFeatures`):
    the levels up to c4 at least are fixed (:func:`fixed_levels`) — below that the cache
    would save little and cost the colour jitter."""
    return len(fixed_levels(model)) >= 3


def body_features(model: MaskRCNN, images: Sequence[Tensor], body: nn.Module | None = None,
                  levels: Sequence[str] = _LEVELS) -> list[dict[str, Tensor]]:
    """The body's ``{"c2".."c5"}`` maps of each image, as Mask R-CNN's forward computes them.

    Each image goes through the model's own transform (normalisation, resize rule, padding to
    a multiple of ``size_divisible`` at the bottom/right) *alone*, so its maps cover
    ``ceil(h / 32) · 32 / stride`` cells whatever batch it is later trained in; images of one
    padded size are run through the body together.

    Args:
        images: float ``3×H×W`` in [0, 1].
        body: runs instead of ``model.backbone.body`` when given (e.g. its BatchNorm-folded
            copy, :func:`~wiseseg.models.freezing.fold_batchnorm`).
        levels: the levels to return, a bottom-up prefix of ``("c2", "c3", "c4", "c5")``
            (e.g. :func:`fixed_levels`); the levels above are not computed.

    Returns:
        per image, level → float ``C×h×w``.
    """
    return body_features_sized(model, images, body, levels)[0]


def body_features_sized(model: MaskRCNN, images: Sequence[Tensor], body: nn.Module | None = None,
                        levels: Sequence[str] = _LEVELS
                        ) -> tuple[list[dict[str, Tensor]], list[tuple[int, int]]]:
    """:func:`body_features` and each image's size after the transform's resize (before
    padding), which the heads and the post-processing need."""
    lists = [model.transform([im])[0] for im in images]
    prepared = [il.tensors[0] for il in lists]
    sizes = [tuple(int(v) for v in il.image_sizes[0]) for il in lists]
    levels = tuple(levels)
    if not levels or levels != _LEVELS[:len(levels)]:
        raise ValueError(f"levels must be a bottom-up prefix of {_LEVELS}, got {levels}")
    out: list[dict[str, Tensor] | None] = [None] * len(prepared)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(prepared):
        groups.setdefault(tuple(t.shape), []).append(i)
    for idx in groups.values():
        feats = (model.backbone.body if body is None else body)(
            torch.stack([prepared[i] for i in idx]), upto=levels[-1])
        for b, i in enumerate(idx):
            out[i] = {k: feats[k][b] for k in levels}
    return out, sizes  # type: ignore[return-value]


def _batch_from_body(m: MaskRCNN, feats: Sequence[dict[str, Tensor]],
                     image_sizes: Sequence[tuple[int, int]]) -> tuple[ImageList, dict]:
    """The padded batch of per-image body maps as the detector's heads see it: an
    ``ImageList`` of the padded batch shape (a zero-stride stand-in: the RPN reads only its
    shape, device and dtype) and the FPN's maps of the batch."""
    dtype = next(m.backbone.fpn.parameters()).dtype
    given = [k for k in _LEVELS if k in feats[0]]
    body = OrderedDict((k, pad_stack([f[k] for f in feats], dtype)) for k in given)
    if len(given) < len(_LEVELS):  # the levels above the cached ones: the body's upper stages
        body.update(m.backbone.body(body[given[-1]], after=given[-1]))
    div = m.transform.size_divisible
    h = -(-max(s[0] for s in image_sizes) // div) * div
    w = -(-max(s[1] for s in image_sizes) // div) * div
    dummy = body["c2"].new_zeros(()).expand(len(feats), 3, h, w)
    images = ImageList(dummy, [(int(a), int(b)) for a, b in image_sizes])
    return images, m.backbone.from_body(body)


def detect_from_body(model: MaskRCNN, feats: Sequence[dict[str, Tensor]],
                     image_sizes: Sequence[tuple[int, int]],
                     original_sizes: Sequence[tuple[int, int]]) -> list[dict[str, Tensor]]:
    """Mask R-CNN's inference (``model.eval()(images)``) from the body's maps of the images
    (:func:`body_features_sized`): the FPN, RPN, heads and post-processing run as in the
    model's forward. The same detections as the forward on the images when every image of
    the batch has the same size (the maps are then those of the padded batch; with mixed
    sizes, cached maps are zero-padded where the forward pads the images).

    Args:
        feats: per image, level → float ``C×h×w``.
        image_sizes: per image, ``(h, w)`` after the transform's resize.
        original_sizes: per image, ``(h, w)`` of the image given (detections are returned
            at this size).

    Returns:
        torchvision's detections, one dict per image.
    """
    m = model
    images, fpn = _batch_from_body(m, feats, image_sizes)
    proposals, _ = m.rpn(images, fpn)
    detections, _ = m.roi_heads(fpn, proposals, images.image_sizes)
    return m.transform.postprocess(detections, images.image_sizes,
                                   [(int(a), int(b)) for a, b in original_sizes])


class MaskRCNNOnFeatures(nn.Module):
    """Mask R-CNN's training forward from cached body features (no image, no body).

    Equivalent to ``model(images, targets)`` in training mode when the cached levels are
    fixed (see :func:`fixed_levels`) and the images already have the size the transform
    would give them (the training data resizes them so), up to the padding of a batch of
    images of different sizes: cached maps are zero-padded, where a batch computed together
    would pad the images before the body. Levels the features lack (c5 with
    ``frozen_stages: 3``) are computed from the highest one given by the body's upper
    stages, which then train. Wrapping the detector keeps data-parallel training working
    (DDP must see the forward that uses the parameters).
    """

    def __init__(self, model: MaskRCNN):
        super().__init__()
        self.model = model

    def forward(self, feats: Sequence[dict[str, Tensor]], image_sizes: Sequence[tuple[int, int]],
                targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Losses of one batch.

        Args:
            feats: per image, :func:`body_features`'s maps of a bottom-up prefix of the
                levels, the same for every image (any float dtype; computed in the
                parameters' dtype).
            image_sizes: per image, ``(h, w)`` of the image the maps were computed from,
                before padding.
            targets: torchvision's training targets at that size.
        """
        m = self.model
        images, fpn = _batch_from_body(m, feats, image_sizes)
        proposals, proposal_losses = m.rpn(images, fpn, targets)
        _, detector_losses = m.roi_heads(fpn, proposals, images.image_sizes, targets)
        return {**detector_losses, **proposal_losses}
