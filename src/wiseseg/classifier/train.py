"""Training the PeakCAM classifier from image-level labels (Algorithm 1, line 1)."""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wiseseg import __version__
from wiseseg.classifier.model_io import build_peakcam, save_classifier
from wiseseg.data.dataset import WeakSplit
from wiseseg.data.images import load_image
from wiseseg.data.transforms import color_jitter, resize_image, scale_into_canvas, to_tensor
from wiseseg.engine.distributed import DistInfo, cleanup, setup_training
from wiseseg.engine.hooks import CheckpointHook, EvalHook, MetricsLogHook, ProgressHook
from wiseseg.engine.optim import build_optimizer, build_scheduler
from wiseseg.engine.trainer import Trainer, TrainerConfig
from wiseseg.errors import ConfigError
from wiseseg.models.freezing import is_fixed
from wiseseg.models.peak_ops import class_balance_weights
from wiseseg.models.peakcam import PeakCAM

log = logging.getLogger(__name__)

#: file names (under ``RUN/cache/``) of the fixed backbone's cached features of the training
#: and the validation images, written by stage 1 and read by the peaks stage
TRAIN_FEATURES = "classifier_features"
VAL_FEATURES = "classifier_features_val"


#: what stage 1's loss does with a class an image's labels leave unchecked
#: (``ImageRecord.unknown``): ``ignore`` (the term is left out, as before) or ``absent``
#: (taught as not present, the "assume negative" rule of multi-label learning with missing
#: labels; wrong wherever the image does hold the class: it lost on VOC, docs/cpu-preset.md)
UNLABELLED_MODES = ("ignore", "absent")


class ClassifierData:
    """Images resized to a square input with their multi-hot image-level labels.

    Decoded, resized images are kept in memory (``cache=True``) because the same images are
    read every epoch and decoding dominates on small inputs. ``unlabelled_classes``: see
    :data:`UNLABELLED_MODES`.
    """

    def __init__(self, split: WeakSplit, input_size: int, hflip: bool = True,
                 scale: tuple[float, float] = (1.0, 1.0), jitter: float = 0.0,
                 cache: bool = True, unlabelled_classes: str = "ignore"):
        if unlabelled_classes not in UNLABELLED_MODES:
            raise ValueError(f"classifier.unlabelled_classes must be one of "
                             f"{', '.join(UNLABELLED_MODES)}, got {unlabelled_classes!r}")
        self.unlabelled_classes = unlabelled_classes
        self.records = list(split.records)
        self.num_classes = len(split.classes)
        self.size = int(input_size)
        self.hflip, self.scale, self.jitter = hflip, tuple(scale), float(jitter)
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def base_image(self, index: int) -> np.ndarray:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        img = resize_image(load_image(self.records[index].path), (self.size, self.size))
        if self._cache is not None:
            self._cache[index] = img
        return img

    def labels(self, index: int) -> torch.Tensor:
        y = torch.zeros(self.num_classes)
        if self.unlabelled_classes == "ignore":
            for c in self.records[index].unknown:
                y[c] = -1.0  # presence unknown: left out of the loss (multilabel_loss)
        for c in self.records[index].labels:
            y[c] = 1.0
        return y

    def load(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.base_image(index)
        lo, hi = self.scale
        if hi > lo or lo < 1.0:
            img = scale_into_canvas(img, float(rng.uniform(lo, hi)), rng)
        if self.hflip and rng.random() < 0.5:
            img = img[:, ::-1]
        img = color_jitter(img, self.jitter, rng)
        return to_tensor(img), self.labels(index)

    def collate(self, samples):
        images, labels = zip(*samples)
        return torch.stack(images), torch.stack(labels)


class CachedClassifierData(ClassifierData):
    """The classifier's samples as cached backbone features of the resized image, plain or
    flipped (:class:`~wiseseg.engine.feature_cache.FeatureCache`). Scale and colour jitter
    change pixels before the backbone and are not applied."""

    def __init__(self, base: ClassifierData, cache):
        self.__dict__.update(base.__dict__)
        self.cache = cache
        self._cache = None  # the images are not needed any more

    def load(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        flip = bool(self.hflip and rng.random() < 0.5)
        return self.cache.get(index, flip)["x"], self.labels(index)


def classifier_step(model, batch, device, pos_weight: torch.Tensor | None = None):
    """A step on images; ``pos_weight``: the class-balance weights (:func:`class_weights`)."""
    images, labels = batch
    out = model(images.to(device, non_blocking=True), labels.to(device, non_blocking=True),
                pos_weight=pos_weight)
    return {"loss": out["loss"]}


def cached_classifier_step(model, batch, device, level: str | None = None,
                           pos_weight: torch.Tensor | None = None):
    """A step on cached maps: the ``feature`` map, or (``level``) a lower level's map from
    which the trained backbone stages above it run."""
    feats, labels = batch
    dtype = next(model.parameters()).dtype
    out = model(labels=labels.to(device, non_blocking=True),
                features=feats.to(device, dtype, non_blocking=True), features_level=level,
                pos_weight=pos_weight)
    return {"loss": out["loss"]}


def class_weights(data: ClassifierData, exponent: float) -> torch.Tensor | None:
    """``classifier.class_balance``'s positive-term weights for the training images' labels
    as the loss sees them (:func:`~wiseseg.models.peak_ops.class_balance_weights`); None at
    0 (PRM's unweighted loss). Reads the labels only, no image."""
    if not exponent:  # no label needs reading (an empty split stops training earlier)
        return None
    labels = torch.stack([data.labels(i) for i in range(len(data))])
    return class_balance_weights(labels, float(exponent))


def cache_level(model: PeakCAM, cfg: dict[str, Any]) -> tuple[bool, str | None]:
    """Whether training reads cached backbone maps, and of which level: ``(True, None)`` for
    the ``feature`` map of a fixed backbone; ``(True, "c3")`` when the backbone trains above
    a fixed c3 (``train_backbone`` with ``frozen_stages`` 2 and frozen BatchNorm: the stages
    above run on the cached c3 every step); ``(False, None)`` without a cache."""
    from wiseseg.models.freezing import fixed_levels

    if not cfg.get("cache_features", False):
        return False, None
    if not model.train_backbone:
        return is_fixed(model.backbone), None
    order = list(model.backbone.out_channels)
    below = [lv for lv in fixed_levels(model.backbone)
             if order.index(lv) <= order.index(model.levels[0])]
    return (True, below[-1]) if below else (False, None)


def classifier_feature_cache(model: PeakCAM, data: ClassifierData, device,
                             path: Path | None, progress: bool = True,
                             level: str | None = None):
    """The fixed backbone's ``feature`` map of every training image (resized to the input
    size), plain and flipped, or its map at ``level`` (:func:`cache_level`); loaded from
    ``path`` when it holds the same ones."""
    from wiseseg.config import config_hash
    from wiseseg.engine.feature_cache import FeatureCache, cache_batch_size
    from wiseseg.models.freezing import fold_batchnorm

    fingerprint = config_hash({
        "backbone": {k: [list(v.shape), float(v.double().sum())]
                     for k, v in model.backbone.state_dict().items()},
        "feature": model.feature, "size": data.size, "version": __version__,
        "images": [(str(r.path), r.height, r.width) for r in data.records],
        **({"level": level} if level else {}),
    })

    # the fixed backbone with its BatchNorms folded: the same maps, 1.2–1.3× faster on a CPU
    folded = fold_batchnorm(model.backbone).eval()

    def compute(indices, flip):
        x = torch.stack([to_tensor(data.base_image(i)[:, ::-1] if flip else data.base_image(i))
                         for i in indices]).to(device)
        feats = model.backbone_features(x, folded) if level is None \
            else model.lower_features(x, level, folded)
        return [{"x": f} for f in feats]

    return FeatureCache.build(len(data), compute, fingerprint, flips=data.hflip, path=path,
                              progress=progress,
                              batch_size=cache_batch_size(device), desc="backbone features")


def classifier_optimizer(model, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """The pretrained backbone at ``lr × backbone_lr_mult`` (PRM: 0.01), the rest at ``lr``."""
    head = [(n, p) for n, p in model.named_parameters() if not n.startswith("backbone.")]
    return build_optimizer([{"params": head},
                            {"params": list(model.backbone.named_parameters()),
                             "lr_mult": cfg["backbone_lr_mult"]}], cfg)


def steps_for(cfg: dict[str, Any], n_images: int, world_size: int = 1) -> int:
    """``steps`` when set (> 0), else ``epochs × steps per epoch``."""
    if int(cfg.get("steps") or 0) > 0:
        return int(cfg["steps"])
    per_epoch = max(1, n_images // (int(cfg["batch_size"]) * world_size))
    return max(1, round(float(cfg["epochs"]) * per_epoch))


def classification_map(model, data: ClassifierData, device, batch_size: int = 32,
                       features=None) -> float:
    """Image-level classification mAP (mean over classes with a positive image).

    ``features``: the fixed backbone's cached features of ``data``'s images
    (:func:`classifier_feature_cache`): the scores come from them, without running the
    backbone again."""
    from wiseseg.classifier.metrics import average_precision

    scores, labels = [], []
    model.eval()
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            idx = range(start, min(len(data), start + batch_size))
            if features is None:
                x = torch.stack([to_tensor(data.base_image(i)) for i in idx]).to(device)
                out = model(x)
            else:
                f = torch.stack([features.get(i, False)["x"] for i in idx])
                out = model(features=f.to(device, dtype))
            scores.append(out["scores"].float().cpu())
            labels.append(torch.stack([data.labels(i) for i in idx]))
    s, y = torch.cat(scores).numpy(), torch.cat(labels).numpy()
    aps = [average_precision(s[:, c], y[:, c]) for c in range(y.shape[1]) if y[:, c].any()]
    return float(np.mean(aps)) if aps else 0.0


def train_classifier(train: WeakSplit, cfg: dict[str, Any], out_dir: str | Path,
                     val: WeakSplit | None = None, seed: int = 0, deterministic: bool = False,
                     device: str = "auto", resume: bool = True, progress: bool = True,
                     full_config: dict | None = None,
                     feature_cache_dir: str | Path | None = None,
                     val_flips: bool = False) -> Path:
    """Train PeakCAM on image-level labels; returns the path of ``model.pt``.

    Args:
        train: the weak view of the training split (no masks).
        cfg: the ``classifier`` settings of a preset (see ``configs/cpu.yaml``).
        out_dir: run directory: ``checkpoints/last.pt``, ``metrics.jsonl``, ``tensorboard/``,
            ``model.pt``.
        val: optional split for the image-level mAP logged at the end (and every
            ``eval_every`` steps when > 0).
        resume: continue from ``checkpoints/last.pt`` when present.
        feature_cache_dir: where the backbone-feature cache file is kept when the backbone is
            fixed and ``cache_features`` is set (None: in memory only). ``val``'s images are
            cached too (:data:`VAL_FEATURES`, with their mirror images when ``val_flips``), so
            that the peaks stage finds them instead of running the backbone on them again.
    """
    out_dir = Path(out_dir)
    dev, dist = setup_training(device, seed, deterministic)
    if len(train) == 0:
        raise ConfigError("the training split is empty")
    model = build_peakcam(cfg, len(train.classes)).to(dev)
    data = ClassifierData(train, cfg["input_size"], hflip=cfg["hflip"],
                          scale=tuple(cfg["scale"]), jitter=cfg["color_jitter"],
                          unlabelled_classes=cfg.get("unlabelled_classes", "ignore"))
    pos_weight = class_weights(data, float(cfg.get("class_balance") or 0.0))
    if pos_weight is not None:
        log.info("classifier.class_balance=%s: positive-term weights %s", cfg["class_balance"],
                 ", ".join(f"{c} {w:.2f}" for c, w in zip(train.classes, pos_weight.tolist())))
        pos_weight = pos_weight.to(dev)
    step_fn = partial(classifier_step, pos_weight=pos_weight)
    val_features = None
    # a fixed backbone: its feature map cached; fixed lower stages: theirs, the rest trains
    cached, level = cache_level(model, cfg)
    if cached:
        path = Path(feature_cache_dir) / TRAIN_FEATURES if feature_cache_dir \
            else None
        data = CachedClassifierData(data, classifier_feature_cache(
            model, data, dev, path, progress and dist.is_main, level=level))
        step_fn = partial(cached_classifier_step, level=level, pos_weight=pos_weight)
        cached = level is None  # validation features serve the peaks only when fixed
    max_steps = steps_for(cfg, len(data), dist.world_size)
    optimizer = classifier_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, max_steps, cfg)
    wrapped = _wrap_ddp(model, dist, dev)
    logger = MetricsLogHook(every=int(cfg.get("log_every", 10)))
    hooks = [ProgressHook("classifier", enabled=progress), logger,
             CheckpointHook(int(cfg["checkpoint_every"]))]
    if val is not None and len(val):
        # kept on disk, the validation images' features also serve the peaks stage (with
        # their mirror images when it averages over flips); in memory, the plain ones only
        val_data = ClassifierData(val, cfg["input_size"],
                                  hflip=bool(val_flips and feature_cache_dir))
        if cached:
            val_features = classifier_feature_cache(
                model, val_data, dev,
                Path(feature_cache_dir) / VAL_FEATURES if feature_cache_dir else None,
                progress and dist.is_main)
            val_data = CachedClassifierData(val_data, val_features)  # drops the images
        every = int(cfg.get("eval_every") or 0) or max_steps
        hooks.append(EvalHook(lambda m: {"val_cls_mAP": classification_map(
            m, val_data, dev, features=val_features)}, every, logger))
    trainer = Trainer(
        model=wrapped, optimizer=optimizer, scheduler=scheduler, data=data,
        step_fn=step_fn,
        cfg=TrainerConfig(max_steps=max_steps, batch_size=int(cfg["batch_size"]), seed=seed,
                          checkpoint_every=int(cfg["checkpoint_every"]),
                          log_every=int(cfg.get("log_every", 10)), amp=bool(cfg.get("amp", True)),
                          num_workers=int(cfg.get("num_workers", 0))),
        out_dir=out_dir, device=dev, hooks=hooks,
        config={"classifier": dict(cfg), "seed": seed, **({"run": full_config}
                                                              if full_config else {})},
        dist=dist,
    )
    t0 = time.time()
    trainer.fit(resume=resume)
    final = out_dir / "model.pt"
    if dist.is_main:
        save_classifier(final, trainer.unwrapped(), cfg, train.classes,
                        extra={"steps": trainer.step, "seed": seed,
                               "class_weights": None if pos_weight is None
                               else [round(w, 4) for w in pos_weight.tolist()],
                               "train_seconds": round(time.time() - t0, 1)})
    cleanup(dist)
    return final


def _wrap_ddp(model, dist: DistInfo, dev: torch.device):
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
