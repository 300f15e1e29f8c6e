"""Training Mask R-CNN on pseudo masks (WISE) or on true masks (the reference row)."""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

from wiseseg import __version__
from wiseseg.allocator import release_freed_memory
from wiseseg.classifier.train import steps_for
from wiseseg.data.dataset import ImageRecord
from wiseseg.engine.distributed import cleanup, setup_training
from wiseseg.engine.hooks import CheckpointHook, MetricsLogHook, ProgressHook
from wiseseg.engine.optim import build_optimizer, build_scheduler
from wiseseg.engine.trainer import Trainer, TrainerConfig
from wiseseg.errors import ConfigError
from wiseseg.models.maskrcnn import MaskRCNNOnFeatures, cacheable
from wiseseg.pseudo.sampling import fix_draws
from wiseseg.segmenter.data import CachedSegmenterData, SegmenterData
from wiseseg.segmenter.model_io import build_segmenter, save_segmenter


def _to(targets, device):
    return [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]


def _total(losses: dict) -> dict:
    out = {"loss": sum(losses.values())}
    out.update(losses)
    return out


def segmenter_step(model, batch, device):
    images, targets = batch
    images = [im.to(device, non_blocking=True) for im in images]
    return _total(model(images, _to(targets, device)))


def cached_segmenter_step(model, batch, device):
    """A step of :class:`~wiseseg.models.maskrcnn.MaskRCNNOnFeatures` on cached features."""
    feats, sizes, targets = batch
    feats = [{k: v.to(device, non_blocking=True) for k, v in f.items()} for f in feats]
    return _total(model(feats, sizes, _to(targets, device)))


def cache_name(data: SegmenterData) -> str:
    """The feature cache's file name for a training set: ``segmenter_features_<hash>`` of its
    images and sizes, so that Mask R-CNNs trained on the same images share one cache (WISE
    and the reference on fully labelled data) and ones trained on different images (WISE on
    image-level images too) keep their own, and a resumed run finds each again."""
    from wiseseg.config import config_hash

    key = config_hash({"images": [(str(r.path), r.height, r.width) for r in data.records],
                       "sizes": [data.min_size, data.max_size]})
    return f"segmenter_features_{key[:12]}"


def feature_cache_for(model, data: SegmenterData, device, path: Path | None,
                      progress: bool = True):
    """The fixed body levels' features (:func:`~wiseseg.models.maskrcnn.fixed_levels`) of
    every training image, plain and flipped (computed once; loaded from ``path`` when it
    holds the same ones)."""
    from wiseseg.config import config_hash
    from wiseseg.data.transforms import to_tensor
    from wiseseg.engine.feature_cache import FeatureCache, cache_batch_size
    from wiseseg.models.freezing import fold_batchnorm
    from wiseseg.models.maskrcnn import body_features, fixed_levels

    levels = fixed_levels(model)
    body_state = model.backbone.body.state_dict()
    fingerprint = config_hash({
        "body": {k: [list(v.shape), float(v.double().sum())] for k, v in body_state.items()},
        "levels": list(levels),
        "transform": [model.transform.min_size, model.transform.max_size,
                      model.transform.image_mean, model.transform.image_std],
        "images": [(str(r.path), r.height, r.width) for r in data.records],
        "sizes": [data.min_size, data.max_size], "version": __version__,
    })

    folded = fold_batchnorm(model.backbone.body).eval()  # the same maps, 1.2–1.3× faster on a CPU

    def compute(indices, flip):
        ims = [to_tensor(data.training_image(i, flip)).to(device) for i in indices]
        return body_features(model, ims, folded, levels)

    model.eval()
    cache = FeatureCache.build(len(data), compute, fingerprint, flips=data.hflip,
                               path=path, batch_size=cache_batch_size(device),
                               progress=progress, desc="backbone features")
    model.train()
    return cache


def without_pseudo_masks(records: list[ImageRecord], instances: dict[int, object]
                         ) -> list[ImageRecord]:
    """The training images less those whose image-level label names a class but that got no
    pseudo mask: their objects are unknown, and training them as background would teach the
    detector to miss objects (the official WISE code skips them too). Negative images (an
    empty label) stay: they are known background."""
    from wiseseg.pseudo.sampling import PseudoImage

    kept = [r for r in records
            if not r.labels or not isinstance(instances.get(r.id), PseudoImage)
            or instances[r.id].instances]
    if not kept:
        raise ConfigError("no training image has a pseudo mask: nothing to train on "
                          "(see the pseudo stage's peaks_without_candidate)")
    return kept


def segmenter_settings(cfg: dict[str, Any], masks: str) -> dict[str, Any]:
    """The ``segmenter`` section as the Mask R-CNN on ``masks`` trains with it: the reference
    on true masks (``masks="gt"``) takes ``reference_epochs`` as its epochs, since its
    images can be fewer than WISE's (partially labelled images have no true masks)."""
    ref = cfg.get("reference_epochs")
    if masks != "gt" or ref is None:
        return cfg
    return {**cfg, "epochs": ref}


def segmenter_param_groups(model, cfg: dict[str, Any]) -> list[dict]:
    """The trained backbone stages (``frozen_stages`` < 4) at ``lr × backbone_lr_mult``, the
    rest (FPN, RPN, heads) at ``lr``."""
    body = [(n, p) for n, p in model.named_parameters() if n.startswith("backbone.body.")]
    rest = [(n, p) for n, p in model.named_parameters() if not n.startswith("backbone.body.")]
    return [{"params": rest},
            {"params": body, "lr_mult": float(cfg.get("backbone_lr_mult", 1.0))}]


def train_segmenter(records: list[ImageRecord], instances: dict[int, object],
                    classes: tuple[str, ...], cfg: dict[str, Any], out_dir: str | Path,
                    masks: str = "pseudo", seed: int = 0, deterministic: bool = False,
                    device: str = "auto", resume: bool = True, progress: bool = True,
                    full_config: dict | None = None,
                    feature_cache_dir: str | Path | None = None) -> Path:
    """Train torchvision's Mask R-CNN with the engine; returns the path of ``model.pt``.

    Args:
        records: training images.
        instances: image id → :class:`~wiseseg.pseudo.sampling.PseudoImage` (``masks=
            "pseudo"``, re-drawn per ``cfg["mode"]``) or → :class:`GroundTruth` (``"gt"``).
        cfg: the ``segmenter`` settings of a preset. With ``cache_features`` and a fixed
            backbone body up to c4 at least (``frozen_stages`` ≥ 3, frozen BatchNorm) the
            fixed levels' features are computed once per image and flip and the rest
            (with the upper stages when ``frozen_stages`` is 3) trains on them (same model,
            several times faster per step; colour jitter is then not applied).
        ``cfg["skip_unlabelled"]``: leave out the images whose label names a class but that
            got no pseudo mask (:func:`without_pseudo_masks`).
        feature_cache_dir: where the feature cache file is kept (shared by the stages that
            train on the same images with the same body); None keeps it in memory only.
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
    if masks == "pseudo" and cfg.get("skip_unlabelled", False):
        records = without_pseudo_masks(records, instances)
    data = SegmenterData(records, instances, cfg["min_size"], cfg["max_size"],
                         hflip=cfg["hflip"], jitter=cfg["color_jitter"], mode=mode,
                         dup_iou=cfg.get("dup_iou", 0.8),
                         unlabelled_classes=cfg.get("unlabelled_classes", "background"))
    model = build_segmenter(cfg, len(classes)).to(dev)
    optimizer = build_optimizer(segmenter_param_groups(model, cfg), cfg)
    max_steps = steps_for(cfg, len(data), dist.world_size)
    scheduler = build_scheduler(optimizer, max_steps, cfg)
    step_fn, wrapped = segmenter_step, model
    if cfg.get("cache_features", False) and cacheable(model):
        path = None
        if feature_cache_dir is not None:
            path = Path(feature_cache_dir) / cache_name(data)
        cache = feature_cache_for(model, data, dev, path, progress and dist.is_main)
        data = CachedSegmenterData(data, cache)
        step_fn, wrapped = cached_segmenter_step, MaskRCNNOnFeatures(model)
        # the decoded images the cache was made from are gone: their memory goes back
        # rather than adding to the training's peak
        gc.collect()
        release_freed_memory()
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(wrapped, device_ids=[dev.index] if dev.type == "cuda"
                                          else None)
    hooks = [ProgressHook(f"mask r-cnn ({masks})", enabled=progress),
             MetricsLogHook(every=int(cfg.get("log_every", 10))),
             CheckpointHook(int(cfg["checkpoint_every"]))]
    trainer = Trainer(
        model=wrapped, optimizer=optimizer, scheduler=scheduler, data=data,
        step_fn=step_fn,
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
        save_segmenter(final, model, cfg, classes,
                       extra={"masks": masks, "steps": trainer.step, "seed": seed,
                              "train_seconds": round(time.time() - t0, 1)})
    cleanup(dist)
    return final
