"""Optimizers from settings: SGD (the papers) or AdamW, with per-group learning rates."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from wiseseg.errors import ConfigError


def build_optimizer(groups: Iterable[dict[str, Any]], cfg: dict[str, Any]
                    ) -> torch.optim.Optimizer:
    """``cfg["optimizer"]`` (``sgd`` | ``adamw``) over parameter groups.

    Each group is ``{"params": [...], "lr_mult": float}``; its learning rate is
    ``cfg["lr"] × lr_mult``. Groups without trainable parameters are left out.
    """
    lr = float(cfg["lr"])
    groups = [{"params": [p for p in g["params"] if p.requires_grad],
               "lr": lr * float(g.get("lr_mult", 1.0))} for g in groups]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError("nothing to train: every parameter is frozen")
    kind = cfg.get("optimizer", "sgd")
    wd = float(cfg["weight_decay"])
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(cfg["momentum"]), weight_decay=wd)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=wd)
    raise ConfigError(f"unknown optimizer {kind!r} (sgd, adamw)")
