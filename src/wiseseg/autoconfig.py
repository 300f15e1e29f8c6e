"""Settings that follow the data: the ``auto`` values of a preset, resolved for one dataset.

A preset may set ``classifier.backbone``, ``classifier.input_size``, ``classifier.epochs``,
``segmenter.backbone``, ``segmenter.frozen_stages``, ``segmenter.min_size``,
``segmenter.max_size``, ``segmenter.anchor_sizes``, ``segmenter.epochs``,
``segmenter.reference_epochs`` and ``proposals.top_k`` to ``auto``.
:func:`resolve_auto` replaces them with numbers chosen from the training split's image sizes
and object sizes (``data-stats`` measures both), within the time budget of the ``auto``
section, and returns one line per choice saying why. The run prints the lines and saves them
(``RUN/auto.json``); the resolved numbers are what the run's config and stage hashes hold.

The rules (constants in the ``auto`` section):

- **object size**: the median, 10th and 90th percentile of ``√(area / image area)`` of the
  training split's instances when it has masks; without masks the objects are assumed to
  span ``assumed_object`` of the image side, and the run says so.
- **backbones** (classifier and Mask R-CNN): ``efficientnet_lite2`` for photographs,
  ``efficientnet_lite0`` for small images (median image side below ``SMALL_IMAGE_SIDE``,
  256 px), measured on two real sets and the shapes (see ``PHOTO_BACKBONE``).
- **Mask R-CNN's trained stages** (``segmenter.frozen_stages``): on photographs the upper
  stages (c5) train on cached c2–c4 features (3), on small images the body stays fixed (4)
  (see ``PHOTO_FROZEN_STAGES``).
- **classifier input**: the square side at which the median object spans ``cam_cells`` cells
  of the CAM (the backbone's stride at the CAM's feature level), rounded up to a multiple of
  32, within ``[min_input, max_input]``. A warning when even then the median object covers
  fewer than 3 cells.
- **Mask R-CNN size**: the scale at which the median object is ``object_px`` pixels across
  (never below 1× of the median image, at most ``max_upscale`` × and ``max_input``),
  applied to the median image's shorter and longer sides.
- **anchors**: five sizes (one per FPN level) doubling from the power of two nearest to the
  10th-percentile object at training size (at least 16 pixels).
- **proposals**: ``top_k`` 300 for images of median side below 256 px, else 1000.
- **epochs**: the time budget (``budget_minutes``, for a 2-core CPU like the one the cost
  constants were measured on by ``benchmarks/step_time.py``) is split between the classifier
  (``classifier_share``) and the Mask R-CNNs (one per self-training round of WISE, and the
  reference); epochs = budget ÷ (images × seconds per image at the chosen size), within
  ``[min_epochs, max_epochs]``.
- **classifier epochs by class views** (``classifier_class_views``, optional; replaces the
  classifier's budget share): stage 1 trains until the median class has been seen in this
  many images — epochs = views ÷ the median number of stage 1's training images labelled
  with the class (image-level labels), at least ``classifier_min_epochs``, at most
  ``max_epochs``. Measured with ``benchmarks/calibrate_peaks.py`` (train-fit → train-calib):
  VOC 2012 sample (29 images a class) 14–20 % peak recall at 8 epochs, 47.4 / 53.7 at 24 and
  48.7 / 48.4 at 48; Penn-Fudan + negatives (109 images) 80.9 / 83.1 at 8 epochs and
  70.2 / 69.6 at 19 (over-trained); the shapes (217) 69.3 / 67.3 at 4 and 76.4 / 75.5 at 8.
  1024 views with at least 8 epochs gives 33, 8 and 8 epochs on the three training splits.
- **enough views of every class** (``segmenter_class_views``, optional): a class that few
  images show needs more epochs than the budget gives. Mask R-CNN trains at least until the
  median class has been seen in this many images (epochs ≥ views ÷ the median number of its
  training images that carry the class's label — image-level labels, so it needs no masks).
  Measured on VOC 2012 train-fit → train-calib (``benchmarks/calibrate_segmenter.py``): the
  reference Mask R-CNN went from 11.5 mAP50 at 5 epochs to 24.3 at 30 on 124 images whose
  median class is in 8.5 of them; on the shapes (256 images a class) and Penn-Fudan (128)
  the floor stays below the budget's epochs and changes nothing. When the floor exceeds the
  budget the run says so and how long it expects the training to take.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass

import numpy as np

from wiseseg.data.dataset import Dataset
from wiseseg.errors import ConfigError

AUTO = "auto"
AUTO_KEYS = (("classifier", "backbone"), ("classifier", "input_size"), ("classifier", "epochs"),
             ("segmenter", "backbone"), ("segmenter", "frozen_stages"),
             ("segmenter", "min_size"), ("segmenter", "max_size"),
             ("segmenter", "anchor_sizes"), ("segmenter", "epochs"),
             ("segmenter", "reference_epochs"), ("proposals", "top_k"))

#: ``proposals.top_k``: small images hold few distinct regions (the shapes' 128² images reach
#: 95 % recall@0.5 within 300), photographs need about 1000 (``benchmarks/proposals_real.py``).
SMALL_IMAGE_SIDE = 256

#: ``classifier.backbone``: on photographs Lite2's CAMs lead to better pseudo masks on stage 1's
#: own training images (``benchmarks/calibrate_pseudo.py``, mAP50 on train-fit: VOC sample
#: 14.1 → 18.0, Penn-Fudan + negatives 19.0 → 22.1), at ~1.35× the time of a backbone pass;
#: on the small shapes images (128 px, enlarged 3×) Lite0's peaks were better (train-calib
#: recall / precision 76.1 / 77.0 against 68.9 / 67.9, ``benchmarks/calibrate_peaks.py``).
#: ``segmenter.backbone`` (fixed, cached features): the Mask R-CNN on true masks, trained on
#: train-fit and scored on train-calib (``benchmarks/calibrate_segmenter.py``), mAP50 on the
#: VOC sample Lite0 19.0, Lite1 21.5, Lite2 24.6 (mAP25 31.9 → 42.9); Penn-Fudan + negatives
#: Lite0 89.8, Lite2 92.4; the shapes keep Lite0 (the demo's Mask R-CNN, measured there).
PHOTO_BACKBONE = "efficientnet_lite2"
SMALL_IMAGE_BACKBONE = "efficientnet_lite0"

#: ``segmenter.frozen_stages``: on photographs the Mask R-CNN trains its backbone's upper
#: stages (c5) at ``lr × segmenter.backbone_lr_mult`` on cached c2–c4 features; the reference
#: on true masks, train-fit → train-calib (``benchmarks/calibrate_segmenter.py``, seeds 0 and
#: 1): VOC sample mAP50 21.5 / 11.9 → 24.3 / 25.7 (mAP25 39.1 / 30.1 → 50.0 / 43.2) at ×0.01
#: (×0.1: 20.3; ×1: 12.5), Penn-Fudan + negatives see ``calibrate_segmenter_pennfudan_
#: negatives_finetune.json``; ~1.2× the training time there. On the small shapes images
#: the upper stages cost 1.39× a step (128 px, ``benchmarks/upper_stages_step.py``) and the
#: demo keeps them fixed.
PHOTO_FROZEN_STAGES = 3
SMALL_IMAGE_FROZEN_STAGES = 4

#: Seconds per training image on the reference 2-core CPU, with the backbone's features
#: cached: a classifier epoch and the one-off cache (per image and flip) grow with the input's
#: megapixels; a Mask R-CNN epoch costs a fixed part (RPN sampling, RoI heads, losses) plus a
#: part per megapixel. Measured on the shapes demo (lite0 classifier at 384 px: 8 epochs in
#: ~25 s, cache 0.04 s an image; Mask R-CNN at 128 px: 0.077 s an image) and
#: ``benchmarks/step_time.py`` (Mask R-CNN at 256 px: 1.39× the time at 128 px); refreshed by
#: hand when the models change.
#: ``segmenter_upper_epoch_mp``: the upper stages trained on cached c2–c4 (frozen_stages 3),
#: from the VOC calibration runs (``calibrate_segmenter_voc_finetune.json``, seed 1: 410 →
#: 501 s for 961 steps of 4 images at ~0.19 MP).
COST = {"classifier_epoch_mp": 0.05, "classifier_cache_mp": 0.3,
        "segmenter_epoch": 0.067, "segmenter_epoch_mp": 0.61, "segmenter_cache_mp": 0.3,
        "segmenter_upper_epoch_mp": 0.126}


@dataclass(frozen=True)
class DataSizes:
    """Sizes of a training split (pixels; object sides as fractions of the image side)."""

    images: int
    image_side: float  # median √(H·W)
    short_side: float  # median shorter side
    long_side: float  # median longer side
    object: float  # median √(object area / image area)
    object_p10: float
    object_p90: float
    measured: bool  # from masks (else assumed)
    #: images stage 1 trains on (with image-level-only ones and negatives; 0: ``images``)
    weak_images: int = 0
    #: images Mask R-CNN trains on (with negatives, :meth:`Dataset.segmenter_view`; 0: ``images``)
    segmenter_images: int = 0
    #: median over the classes of Mask R-CNN's training images labelled with the class
    images_per_class: float = 0.0
    #: median over the classes of stage 1's training images labelled with the class
    weak_images_per_class: float = 0.0
    #: Mask R-CNN's training images with a label (the ones that get proposals and pseudo masks)
    pseudo_images: int = 0
    #: mean objects per training image (masks; else labels per image)
    instances_per_image: float = 0.0
    #: images the reference Mask R-CNN (true masks) trains on, and the median over the classes
    #: of those labelled with the class (0: as WISE's)
    reference_images: int = 0
    reference_images_per_class: float = 0.0


def measure_sizes(ds: Dataset, split: str, assumed_object: float = 0.25,
                  negatives: float = 1.0, partial: bool = False) -> DataSizes:
    """The image and object sizes of ``split`` (objects from its masks when it has them).

    ``partial``: count the partially labelled images among Mask R-CNN's (``pseudo.
    partial_labels: predict``; an upper bound: stage 1 later leaves out those it finds an
    unlabelled class in)."""
    from wiseseg import rle

    recs = ds.records(split)
    if not recs:
        raise ConfigError(f"split {split!r} is empty: nothing to choose settings from")
    hw = np.array([(r.height, r.width) for r in recs], dtype=np.float64)
    side = float(np.median(np.sqrt(hw[:, 0] * hw[:, 1])))
    short, long = float(np.median(hw.min(axis=1))), float(np.median(hw.max(axis=1)))
    fractions = []
    objects = sum(len(r.labels) for r in recs)
    if ds.has_ground_truth(split):
        gts = ds.ground_truth(split)
        objects = 0
        for r in recs:
            segs = [i.segmentation for i in gts[r.id].instances]
            objects += len(segs)
            if segs:
                fractions.extend(np.sqrt(rle.area(segs) / float(r.height * r.width)).tolist())
    seg = ds.segmenter_records(split, "pseudo", negatives,
                               [r.id for r in ds.partially_labelled(split)] if partial else ())
    ref = ds.segmenter_records(split, "gt", negatives)
    weak = ds.weak(split).records
    per_class, ref_per_class, weak_per_class = (_per_class(part, len(ds.classes))
                                                for part in (seg, ref, weak))
    counts = {"weak_images": len(weak), "segmenter_images": len(seg),
              "weak_images_per_class": float(np.median(weak_per_class)),
              "images_per_class": float(np.median(per_class)),
              "pseudo_images": sum(1 for r in seg if r.labels),
              "instances_per_image": objects / len(recs),
              "reference_images": len(ref),
              "reference_images_per_class": float(np.median(ref_per_class))}
    if fractions:
        p10, p50, p90 = np.quantile(np.asarray(fractions), [0.1, 0.5, 0.9])
        return DataSizes(len(recs), side, short, long, float(p50), float(p10), float(p90),
                         True, **counts)
    a = float(assumed_object)
    return DataSizes(len(recs), side, short, long, a, a / 2, min(1.0, 2 * a), False, **counts)


def config_sizes(ds: Dataset, cfg: dict, split: str | None = None) -> DataSizes:
    """:func:`measure_sizes` of ``split`` (default ``data.train_split``) as the run's settings
    count its images: ``auto.assumed_object``, ``segmenter.negatives`` and
    ``pseudo.partial_labels``."""
    return measure_sizes(ds, split or cfg["data"]["train_split"],
                         float((cfg.get("auto") or {}).get("assumed_object", 0.25)),
                         float(cfg["segmenter"].get("negatives", 1.0)),
                         (cfg.get("pseudo") or {}).get("partial_labels") == "predict")


def _per_class(records, n_classes: int) -> np.ndarray:
    """Images labelled with each class."""
    out = np.zeros(max(1, n_classes))
    for r in records:
        for c in r.labels:
            out[c] += 1
    return out


def _round_up(v: float, step: int = 32) -> int:
    return int(math.ceil(v / step) * step)


def is_auto(cfg: dict) -> bool:
    return any(cfg.get(sec, {}).get(key) == AUTO for sec, key in AUTO_KEYS)


def resolve_auto(cfg: dict, ds: Dataset, split: str | None = None,
                 cam_stride: int | None = None) -> tuple[dict, list[str]]:
    """``cfg`` with its ``auto`` values replaced (see the module docstring), and the reasons.

    Args:
        cfg: a merged run configuration.
        ds: the dataset.
        split: the training split measured (default ``data.train_split``).
        cam_stride: the classifier's stride at its CAM level (default: from the backbone's
            ``output_stride`` and feature level; 8 for the ``cpu`` preset).

    Returns:
        ``(resolved config, [one line per choice or warning])``; the input is not modified.
    """
    if not is_auto(cfg):
        return cfg, []
    a = cfg.get("auto") or {}
    need = ("budget_minutes", "cam_cells", "object_px", "max_upscale", "min_input",
            "max_input", "assumed_object", "classifier_share", "min_epochs", "max_epochs")
    missing = [k for k in need if k not in a]
    if missing:
        raise ConfigError(f"settings marked auto need the auto section's {', '.join(missing)}")
    out = copy.deepcopy(cfg)
    c, g = out["classifier"], out["segmenter"]
    sizes = config_sizes(ds, out, split)
    notes = []
    obj_px = sizes.object * sizes.image_side
    where = "the training masks" if sizes.measured else \
        f"no masks: assumed {sizes.object:.0%} of the image side"
    extra = [f"{k} {v}" for k, v in (("stage 1 trains on", sizes.weak_images),
                                      ("Mask R-CNN on", sizes.segmenter_images))
             if v and v != sizes.images]
    notes.append(f"data: {sizes.images} training images"
                 + (f" ({', '.join(extra)} with the mask-free ones)" if extra else "")
                 + f", median {sizes.short_side:.0f}×"
                 f"{sizes.long_side:.0f} px; median object {obj_px:.0f} px across "
                 f"({sizes.object:.0%} of the image side, p10 {sizes.object_p10:.0%}, p90 "
                 f"{sizes.object_p90:.0%}; {where})")
    small = sizes.image_side < SMALL_IMAGE_SIDE
    for section, sec in (("classifier", c), ("Mask R-CNN", g)):
        if sec.get("backbone") == AUTO:
            sec["backbone"] = SMALL_IMAGE_BACKBONE if small else PHOTO_BACKBONE
            notes.append(f"{section} backbone {sec['backbone']}: median image side "
                         f"{sizes.image_side:.0f} px ({'<' if small else '≥'} "
                         f"{SMALL_IMAGE_SIDE}: {'small images' if small else 'photographs'})")
    if g.get("frozen_stages") == AUTO:
        g["frozen_stages"] = SMALL_IMAGE_FROZEN_STAGES if small else PHOTO_FROZEN_STAGES
        notes.append("Mask R-CNN backbone " + (
            "fixed (frozen_stages 4): small images" if small else
            f"fixed up to c4, its upper stages trained at lr × "
            f"{g.get('backbone_lr_mult', 1.0)} (frozen_stages 3): photographs"))
    stride = cam_stride or _cam_stride(c)

    if c.get("input_size") == AUTO:
        # no upscaling cap here: on shapes the peaks kept improving up to 3× (384 px for
        # 128-px images, benchmarks/calibrate_peaks.py) — the ImageNet features see small
        # objects better enlarged
        want = float(a["cam_cells"]) * stride / max(sizes.object, 1e-3)
        size = max(int(a["min_input"]), min(_round_up(want), int(a["max_input"])))
        c["input_size"] = size
        cells = sizes.object * size / stride
        notes.append(f"classifier at {size}×{size} px: the median object spans {cells:.1f} "
                     f"CAM cells of {stride} px (aim: {a['cam_cells']})")
    cells = sizes.object * int(c["input_size"]) / stride
    if cells < 3:
        notes.append(f"warning: the median object covers {cells:.1f} CAM cells at "
                     f"{c['input_size']} px (fewer than 3): peaks will merge neighbouring "
                     f"objects and miss small ones; raise classifier.input_size")

    if g.get("min_size") == AUTO or g.get("max_size") == AUTO:
        scale = float(a["object_px"]) / max(obj_px, 1.0)
        scale = min(max(scale, 1.0), float(a["max_upscale"]),
                    float(a["max_input"]) / sizes.long_side)
        scale = max(scale, min(1.0, float(a["max_input"]) / sizes.long_side))
        if g.get("min_size") == AUTO:
            g["min_size"] = max(32, int(round(sizes.short_side * scale)))
        if g.get("max_size") == AUTO:
            g["max_size"] = max(int(g["min_size"]), int(round(sizes.long_side * scale)))
        notes.append(f"Mask R-CNN at {g['min_size']}/{g['max_size']} px (×{scale:.2f}): the "
                     f"median object is {obj_px * scale:.0f} px across (aim: "
                     f"{a['object_px']}; at most {a['max_input']} px, {a['max_upscale']}×)")
        if obj_px * scale < 16:
            notes.append(f"warning: the median object is {obj_px * scale:.0f} px across at "
                         f"Mask R-CNN's training size: too small for its 14×14 mask head to "
                         f"learn much; raise auto.max_input or segmenter.min_size")
    train_scale = min(float(g["min_size"]) / sizes.short_side,
                      float(g["max_size"]) / sizes.long_side)
    if g.get("anchor_sizes") == AUTO:
        # at least 16 px: smaller anchors only add negatives on a stride-4 level
        small = max(16.0, sizes.object_p10 * sizes.image_side * train_scale)
        base = 2 ** round(math.log2(small))
        g["anchor_sizes"] = [int(base * 2 ** k) for k in range(5)]
        notes.append(f"anchors {g['anchor_sizes']} px: from the 10th-percentile object "
                     f"({small:.0f} px at training size)")

    p = out.get("proposals", {})
    if p.get("top_k") == AUTO:
        p["top_k"] = 300 if sizes.image_side < SMALL_IMAGE_SIDE else 1000
        notes.append(f"{p['top_k']} proposals per image (median image side "
                     f"{sizes.image_side:.0f} px)")

    budget = float(a["budget_minutes"]) * 60.0
    n = sizes.weak_images or sizes.images
    if c.get("epochs") == AUTO:
        mp = int(c["input_size"]) ** 2 / 1e6
        per_epoch = COST["classifier_epoch_mp"] * mp * n
        views = a.get("classifier_class_views")
        if views and sizes.weak_images_per_class > 0:
            want = math.ceil(float(views) / sizes.weak_images_per_class)
            low = int(a.get("classifier_min_epochs") or a["min_epochs"])
            c["epochs"] = int(min(max(want, low), int(a["max_epochs"])))
            notes.append(f"classifier {c['epochs']} epochs: the median class, in "
                         f"{sizes.weak_images_per_class:g} of its {n} training images, is seen "
                         f"{views} times (auto.classifier_class_views; at least "
                         f"{low}, at most {a['max_epochs']} epochs); ~{per_epoch:.1f} s "
                         f"an epoch")
        else:
            setup = COST["classifier_cache_mp"] * mp * n * 2
            share = float(a["classifier_share"]) * budget - setup
            c["epochs"] = _epochs(share, per_epoch, a)
            notes.append(f"classifier {c['epochs']} epochs: ~{per_epoch:.1f} s each + "
                         f"{setup:.0f} s of cached features, within "
                         f"{float(a['classifier_share']):.0%} of the {a['budget_minutes']}-minute "
                         f"budget")
    n = sizes.segmenter_images or sizes.images  # negatives train Mask R-CNN too
    if AUTO in (g.get("epochs"), g.get("reference_epochs")):
        mp = (sizes.short_side * train_scale) * (sizes.long_side * train_scale) / 1e6
        setup = COST["segmenter_cache_mp"] * mp * n * 2
        # every self-training round trains a Mask R-CNN, and so does the reference
        models = max(1, int(g.get("rounds", 1) or 1)) + 1
        share = ((1 - float(a["classifier_share"])) * budget - setup) / models
        upper = COST["segmenter_upper_epoch_mp"] if int(g["frozen_stages"]) == 3 else 0.0
        wise = _segmenter_epochs(share, mp, n, sizes.images_per_class, a, upper)
        n_ref = sizes.reference_images or n
        ref = _segmenter_epochs(share, mp, n_ref, sizes.reference_images_per_class
                                or sizes.images_per_class, a, upper)
        if g.get("epochs") == AUTO:
            g["epochs"] = wise[0]
            notes.append(f"Mask R-CNN {g['epochs']} epochs: ~{wise[1]:.0f} s each ({models} "
                         f"models: {models - 1} of WISE, the reference) + {setup:.0f} s of "
                         f"cached features, {wise[2]}")
        if g.get("reference_epochs") == AUTO:
            g["reference_epochs"] = ref[0]
            if (n_ref, ref[0]) != (n, wise[0]):  # the same rule on the reference's images
                notes.append(f"reference Mask R-CNN {ref[0]} epochs on its {n_ref} images "
                             f"with true masks: ~{ref[1]:.0f} s each, {ref[2]}")
    return out, notes


def print_notes(notes: list[str], verbose: bool = True) -> None:
    """The choices on stderr, each as ``auto: …``; warnings (as they are) even when not
    ``verbose``."""
    for line in notes:
        if verbose or line.startswith("warning"):
            print(("" if line.startswith("warning") else "auto: ") + line, file=sys.stderr)


def _segmenter_epochs(share: float, mp: float, n: int, per_class: float, a: dict,
                      upper: float = 0.0) -> tuple[int, float, str]:
    """Epochs of a Mask R-CNN on ``n`` images (``per_class``: the median class's) within its
    ``share`` of the budget, or more to see the median class ``segmenter_class_views``
    times; with the seconds an epoch and why. ``upper``: seconds per image and megapixel of
    trained upper backbone stages (0 when the body is fixed)."""
    per_epoch = (COST["segmenter_epoch"] + (COST["segmenter_epoch_mp"] + upper) * mp) * n
    epochs = _epochs(share, per_epoch, a)
    why = "within the rest of the budget"
    views = a.get("segmenter_class_views")
    if views and per_class > 0:
        floor = _epochs(math.ceil(float(views) / per_class), 1.0, a)
        if floor > epochs:
            # the expected time of the whole run is the plan's line (wiseseg.runplan)
            why = (f"so that the median class, in {per_class:g} training images, is seen "
                   f"{views} times (auto.segmenter_class_views): more than the "
                   f"{epochs} the budget gives")
            epochs = floor
    return epochs, per_epoch, why


def _epochs(seconds: float, per_epoch: float, a: dict) -> int:
    e = int(seconds // max(per_epoch, 1e-9))
    return int(min(max(e, int(a["min_epochs"])), int(a["max_epochs"])))


def _cam_stride(c: dict) -> int:
    """The CAM's stride from the classifier settings (backbone output stride, feature level)."""
    first = str(c.get("feature", "c5")).split("+")[0]  # "c4+c5": the CAM is at c4's stride
    level = {"c2": 4, "c3": 8, "c4": 16, "c5": 32}.get(first, 32)
    return min(level, int(c.get("output_stride", 32)))
