"""PeakCAM: the stage-1 classifier of WISE (PRM's FCN + class-aware 1×1 conv + peak stimulation).

No I/O: the module maps an image batch to class activation maps and class scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wiseseg.models.backbones import Backbone
from wiseseg.models.cam_geometry import CONVENTIONS, CamGeometry, make_geometry, receptive_offset
from wiseseg.models.peak_ops import STIMULATION_GRADIENTS, multilabel_loss, peak_stimulation


class PeakCAM(nn.Module):
    """Backbone features → class-aware 1×1 convolution → CAM → peak stimulation.

    Args:
        backbone: a :class:`~wiseseg.models.backbones.Backbone`.
        num_classes: number of foreground classes ``C``.
        feature: pyramid level the CAM is computed from (``"c5"``), or several joined by
            ``+`` in increasing depth (``"c4+c5"``): the deeper levels are bilinearly resized
            to the first one's grid and concatenated along channels, so the CAM keeps the
            first level's stride and gains the deeper level's semantics.
        upsample: PRM's sub-pixel locating factor; the CAM is bilinearly upsampled by it
            before peaks are located (1 = off).
        peak_window: odd window ``r`` of the local-maximum search.
        median_filter: keep only peaks ≥ the map's median.
        head_channels: widths of 3×3 conv + BN + ReLU layers between the backbone and the
            class-aware 1×1 convolution (PRM has none: ``()``).
        train_backbone: False keeps the backbone fixed (no gradient, run without autograd),
            which trains several times faster on a CPU.
        stimulation: ``mean`` or ``prm`` — the gradient of peak stimulation (see
            :func:`~wiseseg.models.peak_ops.peak_stimulation`).
        geometry: the convention placing CAM cells in the image
            (:data:`~wiseseg.models.cam_geometry.CONVENTIONS`).

    Forward input: float ``B×3×H×W`` RGB in [0, 1] (normalized inside). Output dict:
        ``cams`` float ``B×C×h×w`` (h = ceil(H / stride) × upsample), ``scores`` float ``B×C``
        (mean of peaks), ``peaks`` bool ``B×C×h×w``; with ``labels`` (float ``B×C`` in {0, 1})
        also ``loss`` (multi-label soft margin).
    """

    def __init__(self, backbone: Backbone, num_classes: int, feature: str = "c5",
                 upsample: int = 1, peak_window: int = 3, median_filter: bool = True,
                 head_channels: tuple[int, ...] = (), train_backbone: bool = True,
                 stimulation: str = "mean", geometry: str = "uniform"):
        super().__init__()
        levels = feature.split("+")
        order = list(backbone.out_channels)
        if any(lv not in order for lv in levels) or \
                [order.index(lv) for lv in levels] != sorted({order.index(lv) for lv in levels}):
            raise ValueError(f"feature {feature!r}: levels of {order}, joined by + from the "
                             "shallowest")
        if num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
        self.backbone = backbone
        self.feature = feature
        self.levels = tuple(levels)
        self.num_classes = num_classes
        self.upsample = int(upsample)
        self.peak_window = int(peak_window)
        self.median_filter = bool(median_filter)
        self.train_backbone = bool(train_backbone)
        if stimulation not in STIMULATION_GRADIENTS:
            raise ValueError(f"unknown stimulation gradient {stimulation!r} "
                             f"(known: {', '.join(STIMULATION_GRADIENTS)})")
        if geometry not in CONVENTIONS:
            raise ValueError(f"unknown CAM geometry {geometry!r} (known: {', '.join(CONVENTIONS)})")
        self.stimulation = stimulation
        self.geometry_convention = geometry
        self._receptive: dict[tuple[int, int], tuple[float, float]] = {}
        if not self.train_backbone:
            for p in backbone.parameters():
                p.requires_grad_(False)
        layers: list[nn.Module] = []
        width = sum(backbone.out_channels[lv] for lv in levels)
        for out in head_channels:
            layers += [nn.Conv2d(width, int(out), 3, padding=1, bias=False),
                       nn.BatchNorm2d(int(out)), nn.ReLU(inplace=True)]
            width = int(out)
        self.head = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(width, num_classes, kernel_size=1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    @property
    def stride(self) -> float:
        return self.backbone.strides[self.levels[0]] / self.upsample

    def geometry(self, input_size: tuple[int, int], cam_size: tuple[int, int],
                 convention: str | None = None) -> CamGeometry:
        """Where the cells of a ``cam_size`` CAM of an ``input_size`` input sit (the model's
        convention unless another is given; see :mod:`wiseseg.models.cam_geometry`)."""
        convention = convention or self.geometry_convention
        base = (cam_size[0] // self.upsample, cam_size[1] // self.upsample)
        stride = self.backbone.strides[self.levels[0]]
        receptive = None
        if convention == "receptive":
            key = tuple(input_size)
            if key not in self._receptive:
                def features(x):
                    return self._join(self.backbone(x, upto=self.levels[-1]))

                # eval mode: batch statistics would spread every cell's gradient everywhere
                was = self.backbone.training
                self.backbone.eval()
                try:
                    self._receptive[key] = receptive_offset(features, key, stride)
                finally:
                    self.backbone.train(was)
            receptive = self._receptive[key]
        return make_geometry(convention, tuple(input_size), base, stride, self.upsample,
                             receptive)

    def backbone_features(self, images: Tensor, backbone: Backbone | None = None) -> Tensor:
        """The backbone's ``feature`` map ``B×C'×h'×w'`` of images ``B×3×H×W`` in [0, 1];
        ``backbone`` runs instead of the model's own when given (e.g. its BatchNorm-folded
        copy, :func:`~wiseseg.models.freezing.fold_batchnorm`, for a fixed pass)."""
        # a fixed backbone runs without autograd, unless the caller differentiates w.r.t. the
        # image (peak backpropagation)
        track = torch.is_grad_enabled() and (self.train_backbone or images.requires_grad)
        with torch.set_grad_enabled(track):
            bb = self.backbone if backbone is None else backbone
            return self._join(bb(bb.normalize(images), upto=self.levels[-1]))

    def lower_features(self, images: Tensor, level: str, backbone: Backbone | None = None
                       ) -> Tensor:
        """The backbone's map at ``level`` (below the CAM's first level), the input of
        :meth:`features_above`: what a cache holds when only the stages above it train."""
        bb = self.backbone if backbone is None else backbone
        with torch.set_grad_enabled(torch.is_grad_enabled() and images.requires_grad):
            return bb(bb.normalize(images), upto=level)[level]

    def features_above(self, lower: Tensor, level: str) -> Tensor:
        """The ``feature`` map from the backbone's map at ``level``
        (:meth:`lower_features`), running only the stages above it."""
        pyramid = {level: lower}
        if level != self.levels[-1]:
            pyramid.update(self.backbone(lower, upto=self.levels[-1], after=level))
        return self._join(pyramid)

    def _join(self, pyramid: dict[str, Tensor]) -> Tensor:
        """The ``feature`` map from a backbone's pyramid: one level, or the levels concatenated
        on the first one's grid (deeper ones resized bilinearly, half-pixel centres)."""
        first = pyramid[self.levels[0]]
        if len(self.levels) == 1:
            return first
        size = first.shape[-2:]
        return torch.cat([first, *(F.interpolate(pyramid[lv], size=size, mode="bilinear",
                                                 align_corners=False)
                                   for lv in self.levels[1:])], dim=1)

    def cams_from_features(self, feats: Tensor) -> Tensor:
        """Class activation maps from backbone features (computed now or cached)."""
        cam = self.classifier(self.head(feats))
        if self.upsample > 1:
            # PRM's sub-pixel locating: the corner cells keep their place (align_corners)
            cam = F.interpolate(cam, scale_factor=self.upsample, mode="bilinear",
                                align_corners=True)
        return cam

    def cams(self, images: Tensor) -> Tensor:
        """Class activation maps ``B×C×h×w`` for images ``B×3×H×W`` in [0, 1]."""
        return self.cams_from_features(self.backbone_features(images))

    def forward(self, images: Tensor | None = None, labels: Tensor | None = None,
                features: Tensor | None = None, features_level: str | None = None,
                pos_weight: Tensor | None = None) -> dict[str, Tensor]:
        """Scores and peaks of ``images``, or of cached backbone ``features`` of them: the
        ``feature`` map, or with ``features_level`` the map of that lower level
        (:meth:`lower_features`), from which the trained stages above it run. With
        ``labels`` also the loss (``pos_weight``: see
        :func:`~wiseseg.models.peak_ops.multilabel_loss`)."""
        if features is not None and features_level is not None:
            features = self.features_above(features, features_level)
        cam = self.cams(images) if features is None else self.cams_from_features(features)
        scores, peaks = peak_stimulation(cam, self.peak_window, self.median_filter,
                                         self.stimulation)
        out = {"cams": cam, "scores": scores, "peaks": peaks}
        if labels is not None:
            out["loss"] = multilabel_loss(scores, labels, pos_weight)
        return out
