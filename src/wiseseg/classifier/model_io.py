"""Build a PeakCAM from settings, and save/load the trained classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from wiseseg.engine.checkpoint import load_model, save_model
from wiseseg.errors import ConfigError, WisesegError
from wiseseg.models.backbones import build_backbone
from wiseseg.models.freezing import freeze_batchnorm, freeze_stages
from wiseseg.models.peakcam import PeakCAM

KIND = "wiseseg.peakcam"


def build_peakcam(cfg: dict[str, Any], num_classes: int, pretrained: bool = True) -> PeakCAM:
    """A PeakCAM from the ``classifier`` settings (``pretrained=False`` skips weight loading,
    used when a trained state dict follows)."""
    unresolved = [k for k in ("backbone", "input_size") if cfg.get(k) == "auto"]
    if unresolved:
        raise ConfigError(f"classifier.{unresolved[0]} is 'auto': choose it from the data with "
                          f"wiseseg.autoconfig.resolve_auto(cfg, dataset) (wiseseg run and the "
                          f"commands do) or set a value")
    backbone = build_backbone(
        cfg["backbone"],
        pretrained=cfg["pretrained"] if pretrained else "none",
        weights=cfg.get("backbone_weights") if pretrained else None,
        output_stride=int(cfg["output_stride"]),
    )
    model = PeakCAM(backbone, num_classes, feature=cfg["feature"], upsample=cfg["upsample"],
                    peak_window=cfg["peak_window"], median_filter=cfg["median_filter"],
                    head_channels=tuple(cfg.get("head_channels") or ()),
                    train_backbone=bool(cfg.get("train_backbone", True)),
                    stimulation=cfg.get("stimulation", "mean"),
                    geometry=cfg.get("cam_geometry", "uniform"))
    if cfg.get("freeze_bn", False):
        freeze_batchnorm(model.backbone)
    if int(cfg.get("frozen_stages", 0)) > 0:
        freeze_stages(model.backbone, int(cfg["frozen_stages"]))
    return model


def save_classifier(path: str | Path, model: PeakCAM, cfg: dict, classes: tuple[str, ...],
                    extra: dict | None = None) -> Path:
    return save_model(path, KIND, model, cfg, classes, extra)


def load_classifier(path: str | Path, device: torch.device | str = "cpu"
                    ) -> tuple[PeakCAM, dict, list[str]]:
    """``(model in eval mode, classifier settings, class names)`` from a saved classifier."""
    model, cfg, classes, _ = load_model(
        path, KIND, "classifier", lambda c, n: build_peakcam(c, n, pretrained=False))
    return model.to(device), cfg, classes


def check_classes(path: str | Path, ckpt_classes: list[str], data_classes: tuple[str, ...],
                  what: str = "classifier") -> None:
    """The model (``what``) must have been trained on the dataset's classes, in order."""
    if list(ckpt_classes) != list(data_classes):
        raise WisesegError(
            f"{path}: the {what} was trained on {len(ckpt_classes)} classes "
            f"({', '.join(ckpt_classes[:6])}{'…' if len(ckpt_classes) > 6 else ''}) but the "
            f"dataset has {len(data_classes)} ({', '.join(data_classes[:6])}"
            f"{'…' if len(data_classes) > 6 else ''})"
        )
