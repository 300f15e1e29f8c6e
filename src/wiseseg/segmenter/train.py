"""Training Mask R-CNN on pseudo masks (WISE) or on true masks (the reference row)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from wiseseg.classifier.train import steps_for
from wiseseg.data.dataset import ImageRecord
from wiseseg.engine.distributed import cleanup, setup_training
from wiseseg.engine.hooks import CheckpointHook, MetricsLogHook, ProgressHook
from wiseseg.engine.optim import build_optimizer
from wiseseg.engine.trainer import Trainer, TrainerConfig, warmup_schedule
from wiseseg.errors import ConfigError
from wiseseg.pseudo.sampling import fix_draws
from wiseseg.segmenter.data import SegmenterData
from wiseseg.segmenter.model_io import build_segmenter, save_segmenter


def segmenter_step(model, batch, device):
    images, targets = batch
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
    losses = model(images, targets)
    out = {"loss": sum(losses.values())}
    out.update(losses)
    return out


def train_segmenter(records: list[ImageRecord], instances: dict[int, object],
                    classes: tuple[str, ...], cfg: dict[str, Any], out_dir: str | Path,
                    masks: str = "pseudo", seed: int = 0, deterministic: bool = False,
                    device: str = "auto", resume: bool = True, progress: bool = True,
                    full_config: dict | None = None) -> Path:
    """Train torchvision's Mask R-CNN with the engine; returns the path of ``model.pt``.

    Args:
        records: training images.
        instances: image id → :class:`~wiseseg.pseudo.sampling.PseudoImage` (``masks=
            "pseudo"``, re-drawn per ``cfg["mode"]``) or → :class:`GroundTruth` (``"gt"``).
        cfg: the ``segmenter`` settings of a preset.
    """
    if masks not in ("pseudo", "gt"):
        raise ConfigError(f"masks must be 'pseudo' or 'gt', got {masks!r}")
    if not records:
        raise ConfigError("the training split is empty")
    out_dir = Path(out_dir)
    dev, dist = setup_training(device, seed, deterministic)
    mode = cfg.get("mode", "sample")
    if masks == "pseudo" and mode == "fixed":
        fix_draws(instances.values(), seed)
    data = SegmenterData(records, instances, cfg["min_size"], cfg["max_size"],
                         hflip=cfg["hflip"], jitter=cfg["color_jitter"], mode=mode,
                         dup_iou=cfg.get("dup_iou", 0.8))
    model = build_segmenter(cfg, len(classes)).to(dev)
    optimizer = build_optimizer([{"params": list(model.parameters())}], cfg)
    max_steps = steps_for(cfg, len(data), dist.world_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_schedule(max_steps, int(cfg["warmup_steps"]), cfg["schedule"]))
    wrapped = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda"
                                          else None)
    hooks = [ProgressHook(f"mask r-cnn ({masks})", enabled=progress),
             MetricsLogHook(every=int(cfg.get("log_every", 10))),
             CheckpointHook(int(cfg["checkpoint_every"]))]
    trainer = Trainer(
        model=wrapped, optimizer=optimizer, scheduler=scheduler, data=data,
        step_fn=segmenter_step,
        cfg=TrainerConfig(max_steps=max_steps, batch_size=int(cfg["batch_size"]), seed=seed,
                          checkpoint_every=int(cfg["checkpoint_every"]),
                          log_every=int(cfg.get("log_every", 10)),
                          grad_clip=cfg.get("grad_clip"), amp=bool(cfg.get("amp", True)),
                          num_workers=int(cfg.get("num_workers", 0))),
        out_dir=out_dir, device=dev, hooks=hooks,
        config={"segmenter": dict(cfg), "masks": masks, "seed": seed,
                **({"run": full_config} if full_config else {})},
        dist=dist,
    )
    t0 = time.time()
    trainer.fit(resume=resume)
    final = out_dir / "model.pt"
    if dist.is_main:
        save_segmenter(final, trainer.unwrapped(), cfg, classes,
                       extra={"masks": masks, "steps": trainer.step, "seed": seed,
                              "train_seconds": round(time.time() - t0, 1)})
    cleanup(dist)
    return final
