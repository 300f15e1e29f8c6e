"""The expected wall time of every stage of ``wiseseg run``, before it starts.

A run on a CPU can take from minutes to hours, and most of it is outside training (proposals,
pseudo masks, the PRM baseline's backward passes, predictions). :func:`plan_run` turns the
resolved settings and the data's sizes into *units of work* per stage (images × megapixels,
epochs × images, proposals decoded, peaks backpropagated, …) and multiplies them by
:data:`COST`, seconds per unit on the reference machine (2 CPU cores, no GPU). The run prints
the plan at the start, keeps it in ``RUN/auto.json`` and puts planned beside actual seconds in
``metrics.json``.

:data:`COST` is fitted by ``benchmarks/plan_costs.py`` from finished runs on real photographs
and the built-in data (non-negative least squares per stage over the runs' stage times); its
output, ``benchmarks/results/plan_costs.json``, says which runs and how well each stage fits.
On another machine the plan scales by one factor; on a GPU it is not printed (the constants
are for CPUs).

Units (``mp``: megapixels): ``mp_in`` the classifier input (square), ``mp_img`` the median
training image, ``mp_seg`` Mask R-CNN's training size.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from wiseseg.autoconfig import DataSizes

#: Seconds per unit on the reference 2-core CPU (see the module docstring): fitted by
#: benchmarks/plan_costs.py to the VOC sample, Penn-Fudan + negatives and three shapes runs
#: (benchmarks/results/plan_costs.json); the uncached classifier epoch is not in those runs
#: and stays an estimate.
COST: dict[str, float] = {
    # stage 1: fixed backbone's cached features (per image, flip and input megapixel), an
    # epoch over cached features (per image and megapixel), a forward pass (per image, view
    # and megapixel) for validation images and peaks
    "classifier_cache_mp": 0.01753,
    "classifier_epoch_mp": 0.07566,
    "classifier_epoch_uncached_mp": 1.5,
    "classifier_forward_mp": 0.3767,
    "peaks_cached_image": 0.0008282,
    # built-in proposals per image (scaled by its pixels up to the generator's working size),
    # refitted after 504233b to four runs of that code, VOC, Penn-Fudan, COCO subset, shapes
    # (plan_costs.py --stages proposals: plan_costs_proposals.json)
    "proposals_image": 0.7995,
    # candidates: per labelled training image (its CAMs, peaks) and per kept proposal and
    # megapixel, on the proposals' RLEs since c36568e (fitted by plan_costs.py --stages
    # pseudo to four runs of that code, VOC ×2, Penn-Fudan, shapes: plan_costs_pseudo.json)
    "pseudo_image": 0.01062,
    "pseudo_proposal_mp": 0.0001161,
    # Mask R-CNN: per image of an epoch (a fixed part and a part per megapixel), its cached
    # body features (per image, flip and megapixel), inference per image and megapixel
    "segmenter_image": 0.03424,
    "segmenter_image_mp": 0.4216,
    # trained upper backbone stages (frozen_stages 3) on cached c2–c4, per image of an
    # epoch and megapixel: the VOC calibration runs (calibrate_segmenter_voc_finetune.json,
    # seed 1: 410 → 501 s for 961 steps of 4 images at ~0.19 MP), not part of the fit
    "segmenter_upper_image_mp": 0.126,
    "segmenter_cache_mp": 0.004384,
    "predict_image_mp": 0.9138,
    # WISE+Refine: every prediction of an image against its proposals
    "refine_proposal_mp": 0.0001724,
    # PRM baseline: backward passes, per ground-truth-like instance of a validation image and
    # input megapixel (peaks ∝ instances)
    "prm_instance_mp": 0.9291,
    "evaluate_image": 0.007944,
}

#: A backbone's time per image relative to efficientnet_lite0 (the constants'), from
#: benchmarks/results/backbones.json (median seconds per image, mean of 256 and 320 px).
BACKBONE_COST = {"efficientnet_lite0": 1.0, "efficientnet_lite1": 1.26,
                            "efficientnet_lite2": 1.35}

#: The PRM stage's speed-up with two single-threaded processes instead of one on 2 cores
#: (benchmarks/prm_speed.py --workers 2 1, the shapes val split: 54.4 s against 71.7 s).
PRM_TWO_WORKERS = 1.32

#: The PRM stage's speed-up by the fused excitation chains (commit 8f2e456), which came after
#: ``prm_instance_mp`` was fitted (benchmarks/prm_speed.py, the shapes val split, two
#: workers: 68.6 s against 49.4 s, medians of 3 alternating rounds; prm_speed.json).
PRM_FUSED_CHAINS = 1.39

#: Below this many working pixels the built-in generator's cost falls with the image
#: (``proposals.builtin``'s fast setting works at ~120k pixels).
PROPOSAL_WORK_MP = 0.12


@dataclass(frozen=True)
class StagePlan:
    stage: str
    seconds: float
    units: dict[str, float]


def stage_units(cfg: dict, sizes: DataSizes, val_images: int, val_instances_per_image: float,
                reference: bool = True) -> dict[str, dict[str, float]]:
    """Units of work of every stage that runs (see the module docstring).

    Args:
        cfg: the resolved run configuration (no ``auto`` left).
        sizes: :func:`wiseseg.autoconfig.measure_sizes` of the training split.
        val_images: images of the validation split (0: no validation stages).
        val_instances_per_image: expected objects per validation image (the training
            split's mean), which sets the PRM baseline's peaks.
        reference: whether the Mask R-CNN on true masks is trained.
    """
    c, g, p = cfg["classifier"], cfg["segmenter"], cfg.get("proposals", {})
    n_weak = sizes.weak_images or sizes.images
    n_seg = sizes.segmenter_images or sizes.images
    mp_in = int(c["input_size"]) ** 2 / 1e6
    mp_img = sizes.short_side * sizes.long_side / 1e6
    scale = min(float(g["min_size"]) / sizes.short_side, float(g["max_size"]) / sizes.long_side)
    mp_seg = sizes.short_side * sizes.long_side * scale * scale / 1e6
    views = 2 if cfg["peaks"].get("flip") else 1
    scales = len(cfg["peaks"].get("scales") or [1.0])
    top_k = float(p.get("top_k") or 1000)
    cached = bool(c.get("cache_features")) and not c.get("train_backbone")
    c_epochs = float(c["epochs"])
    g_epochs = float(g["epochs"])
    rounds = max(1, int(g.get("rounds", 1) or 1))
    out: dict[str, dict[str, float]] = {}
    # backbone passes cost more with a larger backbone; epochs on cached features do not
    bb = BACKBONE_COST.get(str(c.get("backbone")), 1.0)
    # Mask R-CNN: its backbone's share of caching and inference (epochs on cached features
    # do not run it)
    bb_seg = BACKBONE_COST.get(str(g.get("backbone")), 1.0)
    out["classifier"] = {
        "classifier_cache_mp": n_weak * 2 * mp_in * bb if cached else 0.0,
        "classifier_epoch_mp" if cached else "classifier_epoch_uncached_mp":
            c_epochs * n_weak * mp_in * (1.0 if cached else bb),
        # validation images: one forward for the evaluation, or, with a cache, their cache
        # (with the mirror images the peaks take), which the peaks stage then reads
        "classifier_forward_mp": val_images * (views if cached else 1) * mp_in * bb,
    }
    # peaks: from the cached features (only other scales than 1 run the backbone), or from
    # the images
    out["peaks"] = {"peaks_cached_image": (n_weak + (val_images if cached else 0)) * views,
                    "classifier_forward_mp": (n_weak + val_images) * views * mp_in * bb
                    * ((scales - 1) if cached else scales)}
    labelled = sizes.pseudo_images or sizes.images
    prop_images = labelled + val_images  # labelled training images and validation
    out["proposals"] = {"proposals_image":
                        prop_images * min(mp_img, PROPOSAL_WORK_MP) / PROPOSAL_WORK_MP
                        / max(1, min(2, int(p.get("workers", 1) or 1)))}
    out["pseudo"] = {"pseudo_image": labelled, "pseudo_proposal_mp": labelled * top_k * mp_img}
    # training caches the fixed levels when c2–c4 at least are fixed (maskrcnn.cacheable)
    seg_cached = bool(g.get("cache_features")) and int(g.get("frozen_stages", 0)) >= 3
    upper = int(g.get("frozen_stages", 4)) == 3 and seg_cached
    train = {"segmenter_image": g_epochs * n_seg, "segmenter_image_mp": g_epochs * n_seg * mp_seg,
             "segmenter_upper_image_mp": g_epochs * n_seg * mp_seg if upper else 0.0}
    out["wise"] = {k: v * rounds for k, v in train.items()}
    out["wise"]["segmenter_cache_mp"] = n_seg * 2 * mp_seg * bb_seg if seg_cached else 0.0
    out["wise"]["predict_image_mp"] = (rounds - 1) * labelled * mp_seg * bb_seg
    if reference:  # its own images (true masks) and epochs (segmenter.reference_epochs)
        n_ref = sizes.reference_images or n_seg
        r_epochs = float(g.get("reference_epochs") or g_epochs)
        out["reference"] = {"segmenter_image": r_epochs * n_ref,
                            "segmenter_image_mp": r_epochs * n_ref * mp_seg,
                            "segmenter_upper_image_mp": r_epochs * n_ref * mp_seg if upper
                            else 0.0}
        if seg_cached and n_ref != n_seg:  # other images than WISE's: a cache of its own
            out["reference"]["segmenter_cache_mp"] = n_ref * 2 * mp_seg * bb_seg
    if val_images:
        out["predict_wise"] = {"predict_image_mp": val_images * mp_seg * bb_seg,
                               "refine_proposal_mp": val_images * top_k * mp_img}
        if reference:
            out["predict_reference"] = {"predict_image_mp": val_images * mp_seg * bb_seg}
        # prm.workers processes share the images (the constant: one process on 2 cores)
        two = int(cfg.get("prm", {}).get("workers", 1) or 1) > 1
        out["prm"] = {"prm_instance_mp": val_images * val_instances_per_image * mp_in * bb
                      / (PRM_TWO_WORKERS if two else 1.0) / PRM_FUSED_CHAINS}
    if reference:  # Table 3 needs the training split's true masks
        out["pseudo_quality"] = {"predict_image_mp": sizes.images * mp_seg * bb_seg}
    if val_images:
        out["evaluate"] = {"evaluate_image": val_images}
    return out


def plan_run(cfg: dict, sizes: DataSizes, val_images: int, val_instances_per_image: float,
             reference: bool = True, cost: dict[str, float] | None = None) -> list[StagePlan]:
    """Expected seconds of every stage (:func:`stage_units` × :data:`COST`)."""
    cost = COST if cost is None else cost
    return [StagePlan(stage, sum(cost[k] * v for k, v in units.items()), units)
            for stage, units in stage_units(cfg, sizes, val_images, val_instances_per_image,
                                            reference).items()]


def fit_epochs(cfg: dict, sizes: DataSizes, val_images: int, val_instances_per_image: float,
               reference: bool, max_seconds: float, keys: tuple[str, ...],
               min_epochs: int = 1) -> tuple[dict, list[str]]:
    """``cfg`` with the Mask R-CNN epochs named in ``keys`` (``epochs``,
    ``reference_epochs``: those ``auto`` chose) cut by one common factor, the smallest cut
    whose plan (:func:`plan_run`) ends within ``max_seconds``; none below ``min_epochs``.

    ``auto``'s epoch rules answer "how long should Mask R-CNN train to see every class
    enough", not "how long may the run take": on a larger or more varied training split
    the class-views floor alone can plan hours. This bounds the whole run's plan.

    Returns:
        ``(config, notes)``: the input unchanged and no notes when the plan already fits or
        ``keys`` is empty; else a copy, with one line saying what was cut and why (a warning
        when even ``min_epochs`` does not fit).
    """
    def total(c: dict) -> float:
        return sum(s.seconds for s in plan_run(c, sizes, val_images, val_instances_per_image,
                                               reference))

    g = cfg["segmenter"]
    first = {k: int(g[k]) for k in keys if g.get(k) is not None}
    before = total(cfg)
    if not first or before <= max_seconds:
        return cfg, []
    out = copy.deepcopy(cfg)
    for step in range(99, -1, -1):  # factors 0.99, 0.98, ... 0: the first that fits
        for k, e in first.items():
            out["segmenter"][k] = max(int(min_epochs), min(e, math.floor(e * step / 100)))
        if total(out) <= max_seconds:
            break
    after = total(out)
    what = ", ".join(f"{'reference ' if k == 'reference_epochs' else ''}Mask R-CNN "
                     f"{e} → {out['segmenter'][k]} epochs" for k, e in first.items())
    line = (f"{what}: the plan ({_minutes(before)}) was over auto.max_minutes "
            f"({_minutes(max_seconds)}); now {_minutes(after)}")
    if after > max_seconds:
        line = (f"warning: {what} (auto.min_epochs) and the plan is still "
                f"{_minutes(after)}, over auto.max_minutes ({_minutes(max_seconds)}): "
                f"fewer images, smaller images (auto.max_input) or fewer proposals "
                f"(proposals.top_k) shorten it")
    return out, [line]


def plan_lines(plan: list[StagePlan]) -> list[str]:
    """What the run prints: one line with every stage's minutes and the total."""
    total = sum(s.seconds for s in plan)
    parts = ", ".join(f"{s.stage} {_minutes(s.seconds)}" for s in plan)
    return [f"expected wall time on 2 CPU cores: {_minutes(total)} ({parts})"]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
