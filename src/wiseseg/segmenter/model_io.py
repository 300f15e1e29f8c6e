"""Build Mask R-CNN from the ``segmenter`` settings; save / load the trained segmenter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from wiseseg.engine.checkpoint import load_model, save_model
from wiseseg.errors import ConfigError
from wiseseg.models.maskrcnn import build_maskrcnn

KIND = "wiseseg.maskrcnn"

_MODEL_KEYS = ("backbone", "pretrained", "backbone_weights", "frozen_stages", "freeze_bn",
               "fpn_channels", "representation_size", "mask_layers", "anchor_sizes", "min_size",
               "max_size", "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train",
               "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test", "rpn_batch_size_per_image",
               "box_batch_size_per_image", "box_score_thresh", "box_nms_thresh",
               "box_detections_per_img", "roi_align_backward", "cpu_shortcuts")


def build_segmenter(cfg: dict[str, Any], num_classes: int, pretrained: bool = True):
    """Mask R-CNN from settings (``pretrained=False``: no ImageNet loading, for checkpoints)."""
    kw = {k: cfg[k] for k in _MODEL_KEYS if k in cfg}
    unresolved = [k for k, v in kw.items() if v == "auto"]
    if unresolved:
        raise ConfigError(f"segmenter.{unresolved[0]} is 'auto': choose it from the data with "
                          f"wiseseg.autoconfig.resolve_auto(cfg, dataset) (wiseseg run and the "
                          f"commands do) or set a value")
    if not pretrained:
        kw["pretrained"], kw["backbone_weights"] = "none", None
    kw["mask_layers"] = tuple(kw.get("mask_layers", (256, 256, 256, 256)))
    kw["anchor_sizes"] = tuple(kw.get("anchor_sizes", (32, 64, 128, 256, 512)))
    return build_maskrcnn(num_classes, **kw)


def save_segmenter(path: str | Path, model, cfg: dict, classes, extra: dict | None = None
                   ) -> Path:
    return save_model(path, KIND, model, cfg, classes, extra)


def load_segmenter(path: str | Path, device: torch.device | str = "cpu"):
    """``(Mask R-CNN in eval mode, segmenter settings, class names, checkpoint extras)``."""
    model, cfg, classes, extras = load_model(
        path, KIND, "segmenter", lambda c, n: build_segmenter(c, n, pretrained=False))
    return model.to(device), cfg, classes, extras
