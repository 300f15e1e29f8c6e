"""The stages of ``wiseseg run`` (see :mod:`wiseseg.pipeline` for caching and resume).

Outputs (under RUN/):
    classifier/model.pt, metrics.jsonl        stage 1, PeakCAM
    peaks/peaks_<split>.json, quality.json    peaks (image-level labels) and their quality
    proposals/                                proposal store of the train and val images
    pseudo/pseudo.json                        pseudo labels (COCO + candidates)
    wise/model.pt                             Mask R-CNN on pseudo masks
    reference/model.pt                        Mask R-CNN on true masks (when GT exists)
    predict_wise/wise.json, wise_refine.json  val predictions (COCO results)
    predict_reference/reference.json
    prm/prm.json                              the PRM baseline's val predictions
    pseudo_quality/quality.json               Table 3
    evaluate/metrics.json                     every method's metrics
"""

from __future__ import annotations

import gc
import re
from pathlib import Path

from wiseseg.allocator import release_freed_memory
from wiseseg.engine.reproducibility import resolve_device
from wiseseg.io import atomic_write_json, read_json, read_jsonl
from wiseseg.pipeline import RunContext, Stage

METHODS = (("prm", "PRM"), ("wise", "WISE"), ("wise_refine", "WISE+Refine"),
           ("reference", "Mask R-CNN (GT)"))


def _device(ctx: RunContext):
    return resolve_device(ctx.cfg.get("device", "auto"))


def _last_eval(metrics_path: Path) -> dict:
    out = {}
    if metrics_path.exists():
        for rec in read_jsonl(metrics_path):
            out.update({k: v for k, v in rec.items() if k.startswith("eval/")})
    return out


# ----------------------------------------------------------------------------- stage 1
def run_classifier(ctx: RunContext, d: Path) -> dict:
    from wiseseg.classifier.train import train_classifier

    ds = ctx.dataset
    val = ds.weak(ctx.val_split) if ctx.val_split in ds.splits else None
    train_classifier(ds.weak(ctx.train_split), ctx.cfg["classifier"], d, val=val,
                     seed=ctx.cfg["seed"], deterministic=ctx.cfg["deterministic"],
                     device=ctx.cfg["device"], progress=ctx.progress, full_config=ctx.cfg,
                     feature_cache_dir=ctx.run_dir / "cache",
                     val_flips=bool(ctx.cfg["peaks"].get("flip", False)))
    return {k.removeprefix("eval/"): v for k, v in _last_eval(d / "metrics.jsonl").items()}


def run_peaks(ctx: RunContext, d: Path) -> dict:
    from wiseseg.classifier.metrics import peak_quality
    from wiseseg.classifier.model_io import load_classifier
    from wiseseg.classifier.peaks import compute_peaks, write_peaks

    dev = _device(ctx)
    model, ccfg, _ = load_classifier(ctx.stage_dir("classifier") / "model.pt", dev)
    ds, summary = ctx.dataset, {}
    for split in dict.fromkeys([ctx.train_split, ctx.val_split]):
        if split not in ds.splits:
            continue
        features = _classifier_features(ctx, model, ccfg, dev, split)
        peaks = compute_peaks(model, ds.weak(split), ccfg["input_size"], ctx.cfg["peaks"],
                              use_labels=True, device=dev, progress=ctx.progress,
                              category_ids=ds.category_ids, features=features)
        write_peaks(d / f"peaks_{split}.json", peaks)
        if ds.has_ground_truth(split):
            by_id = {im["image_id"]: im["peaks"] for im in peaks["images"]}
            summary[split] = peak_quality(by_id, ds.ground_truth(split), ds.records(split))
    atomic_write_json(d / "quality.json", summary, indent=2)
    return summary


def _classifier_features(ctx: RunContext, model, ccfg: dict, dev, split: str | None = None):
    """A split's cached backbone features from stage 1 — the training images' (the file its
    training wrote) or the validation images' (written for its evaluation), recomputed if
    the file is gone or lacks the mirror images the peaks need — or None when stage 1 does
    not cache features (or for another split)."""
    from wiseseg.classifier.train import (
        TRAIN_FEATURES,
        VAL_FEATURES,
        ClassifierData,
        classifier_feature_cache,
    )
    from wiseseg.models.freezing import is_fixed

    split = split or ctx.train_split
    if not (ccfg.get("cache_features") and not model.train_backbone
            and is_fixed(model.backbone)):
        return None
    # the training file wins when one split is both (the later key of a dict literal does)
    name = {ctx.val_split: VAL_FEATURES, ctx.train_split: TRAIN_FEATURES}.get(split)
    if name is None:
        return None
    data = ClassifierData(ctx.dataset.weak(split), ccfg["input_size"],
                          hflip=bool(ctx.cfg["peaks"].get("flip", False)))
    return classifier_feature_cache(model, data, dev, ctx.run_dir / "cache" / name,
                                    ctx.progress)


def run_proposals(ctx: RunContext, d: Path) -> dict:
    from wiseseg.proposals import build_proposal_source, compute_proposals, proposal_quality

    pc, ds = ctx.cfg["proposals"], ctx.dataset
    # pseudo masks need proposals on the labelled images Mask R-CNN trains on (negatives
    # have no peaks and need none); validation images for the Refine step and Table 3
    # (with pseudo.partial_labels: predict, the partially labelled ones too: which of them
    # Mask R-CNN trains on is known only after stage 1)
    partial = [r.id for r in ds.partially_labelled(ctx.train_split)] \
        if _partial_mode(ctx) == "predict" else []
    recs = {r.id: r for r in ds.segmenter_view(ctx.train_split, "pseudo", partial).records
            if r.labels or not ds.weak_only(ctx.train_split)}
    if ctx.val_split in ds.splits:
        recs.update((r.id, r) for r in ds.records(ctx.val_split))
    source = build_proposal_source(pc["method"], top_k=pc.get("top_k"))
    store = compute_proposals(list(recs.values()), source, d, workers=int(pc["workers"]),
                              progress=ctx.progress, top_k=pc.get("top_k"))
    summary = {"images": len(recs)}
    if ctx.has_val_gt():
        q = proposal_quality(store, ds, ctx.val_split)
        atomic_write_json(d / f"quality_{ctx.val_split}.json", q, indent=2)
        summary["val"] = q
    return summary


def run_pseudo(ctx: RunContext, d: Path) -> dict:
    from wiseseg.classifier.peaks import read_peaks
    from wiseseg.proposals import ProposalStore
    from wiseseg.pseudo.labels import build_pseudo_images, to_coco, write_pseudo
    from wiseseg.pseudo.partial import decide_partial

    ds = ctx.dataset
    peaks = read_peaks(ctx.stage_dir("peaks") / f"peaks_{ctx.train_split}.json")
    partial = decide_partial(ds.partially_labelled(ctx.train_split),
                             {im["image_id"]: im.get("class_scores")
                              for im in peaks["images"]},
                             float(ctx.cfg["peaks"]["class_threshold"]), _partial_mode(ctx))
    split = ds.segmenter_view(ctx.train_split, "pseudo", partial.kept)
    store = ProposalStore.open(ctx.stage_dir("proposals"))
    retrieval_fn = cam_fn = None
    cam_overlap = float(ctx.cfg["pseudo"].get("cam_overlap", 0) or 0) > 0
    if _prm_candidates(ctx) or cam_overlap:
        from wiseseg.classifier.model_io import load_classifier

        dev = _device(ctx)
        model, ccfg, _ = load_classifier(ctx.stage_dir("classifier") / "model.pt", dev)
    if _prm_candidates(ctx):
        from wiseseg.inference.prm_baseline import RetrievalSettings, retrieval_function

        retrieval_fn = retrieval_function(model, ccfg["input_size"],
                                          RetrievalSettings.from_config(ctx.cfg["prm"]), dev)
    if cam_overlap:
        from wiseseg.classifier.peaks import cam_function

        # the training images' CAMs from stage 1's cached features, as the peaks stage did
        cam_fn = cam_function(model, ccfg["input_size"], ctx.cfg["peaks"], dev,
                              ds.weak(ctx.train_split),
                              _classifier_features(ctx, model, ccfg, dev))
    images, stats = build_pseudo_images(split, peaks["by_id"], store, ctx.cfg["pseudo"],
                                        progress=ctx.progress, retrieval_fn=retrieval_fn,
                                        cam_fn=cam_fn)
    coco = to_coco(images, split, ds.category_ids, stats, dict(ctx.cfg["pseudo"]))
    summary = {**stats.as_dict(), "instances": len(coco["annotations"]),
               "images_without_instance": sum(1 for im in images if not im.instances)}
    if partial.kept or partial.excluded:
        coco["wiseseg"]["partial_labels"] = partial.as_dict(ds.classes)
        summary["partial_labels"] = {"kept": len(partial.kept),
                                     "excluded": len(partial.excluded)}
    write_pseudo(d / "pseudo.json", coco)
    return summary


def _partial_mode(ctx: RunContext) -> str:
    return str(ctx.cfg["pseudo"].get("partial_labels", "skip"))


def _prm_candidates(ctx: RunContext) -> bool:
    return int(ctx.cfg["pseudo"].get("prm_candidates", 0) or 0) > 0


# ----------------------------------------------------------------------------- stage 2
def _train_segmenter(ctx: RunContext, d: Path, masks: str,
                     instances: dict | None = None) -> dict:
    from wiseseg.pseudo.labels import pseudo_view, read_pseudo
    from wiseseg.segmenter.train import segmenter_settings, train_segmenter

    ds = ctx.dataset
    include: set[int] = set()
    if masks == "pseudo":
        split = pseudo_view(ctx.stage_dir("pseudo") / "pseudo.json", ds, ctx.train_split)
        include = {r.id for r in split.records if r.unknown}
        inst = instances if instances is not None else \
            read_pseudo(ctx.stage_dir("pseudo") / "pseudo.json", split, ds.category_ids)
    else:
        inst = dict(ds.ground_truth(ctx.train_split))
    recs = ds.segmenter_records(ctx.train_split, masks,
                                float(ctx.cfg["segmenter"].get("negatives", 1.0)), include)
    # a self-training round follows another within the stage: the last one's feature cache
    # and predictions are freed; their memory goes back before this one loads its own
    gc.collect()
    release_freed_memory()
    train_segmenter(recs, inst, ds.classes, segmenter_settings(ctx.cfg["segmenter"], masks), d,
                    masks=masks, seed=ctx.cfg["seed"], deterministic=ctx.cfg["deterministic"],
                    device=ctx.cfg["device"], progress=ctx.progress, full_config=ctx.cfg,
                    feature_cache_dir=ctx.run_dir / "cache")
    gc.collect()  # its feature cache goes back before the predictions that may follow
    release_freed_memory()
    return {"masks": masks, "images": len(recs)}


def run_wise(ctx: RunContext, d: Path) -> dict:
    """WISE's Mask R-CNN on the pseudo masks; with ``segmenter.rounds`` > 1, self-training
    (:mod:`wiseseg.pseudo.self_training`): round r trains in ``d/round<r>/`` on the labels
    made from round r − 1's confident predictions on the training images
    (``d/round<r>/pseudo.json``); the last round trains in ``d`` (``d/model.pt``)."""
    rounds = int(ctx.cfg["segmenter"].get("rounds", 1) or 1)
    if rounds <= 1:
        return _train_segmenter(ctx, d, "pseudo")
    from wiseseg.pseudo.labels import pseudo_view, read_pseudo, to_coco, write_pseudo
    from wiseseg.pseudo.sampling import CandidateStats
    from wiseseg.pseudo.self_training import relabel, relabelled_records

    ds = ctx.dataset
    split = pseudo_view(ctx.stage_dir("pseudo") / "pseudo.json", ds, ctx.train_split)
    labels = read_pseudo(ctx.stage_dir("pseudo") / "pseudo.json", split, ds.category_ids)
    # every labelled image is relabelled, the image-level-only ones too: beside a few
    # images with masks they are most of the training images
    relabelled = relabelled_records(split.records)
    model_dir = d / "round1"
    summary: dict = {**_train_segmenter(ctx, model_dir, "pseudo", labels), "rounds": []}
    min_score = float(ctx.cfg["segmenter"].get("self_training_score", 0.5))
    for r in range(2, rounds + 1):
        preds_path = model_dir / "train_predictions.json"
        if not preds_path.is_file():  # resumable: a finished round's predictions are kept
            atomic_write_json(preds_path, _predict(ctx, model_dir, ctx.train_split,
                                                   records=relabelled, mask_threshold=0.5,
                                                   min_score=min_score, flip=False))
        labels, st = relabel(labels, read_json(preds_path, "predictions"), split.records,
                             ds.category_ids, min_score)
        model_dir = d if r == rounds else d / f"round{r}"
        write_pseudo(model_dir / "pseudo.json",
                     to_coco(labels.values(), split, ds.category_ids, CandidateStats(),
                             {"self_training_round": r, "min_score": min_score,
                              "dup_iou": ctx.cfg["segmenter"].get("dup_iou", 0.8)}))
        _train_segmenter(ctx, model_dir, "pseudo", labels)
        summary["rounds"].append({"round": r, **st.as_dict()})
    return summary


def run_reference(ctx: RunContext, d: Path) -> dict:
    return _train_segmenter(ctx, d, "gt")


def _predict(ctx: RunContext, model_dir: Path, split: str, records=None,
             **settings) -> list[dict]:
    """Predictions of ``model_dir/model.pt`` on ``split`` (or on ``records``, named
    ``split`` in the body cache); ``settings`` (batch_size, mask_threshold, min_score)
    replace the ``predict`` section's.

    When the body is fixed up to c4 at least and the split's images share one size, the
    fixed levels' maps of the split are computed once per run
    (``RUN/cache/segmenter_body_<split>.features``, :func:`_body_pool`) and every Mask
    R-CNN predicts from them — WISE's self-training and Table 3 on the training images, WISE
    and the reference on the validation images (the same results as running the body each
    time: :func:`~wiseseg.inference.predict.predict_from_body`)."""
    from wiseseg.inference.predict import (
        body_cache,
        predict,
        predict_from_body,
        records_as_items,
        uniform_size,
    )
    from wiseseg.models.freezing import fold_batchnorm
    from wiseseg.models.maskrcnn import cacheable
    from wiseseg.segmenter.model_io import load_segmenter

    dev = _device(ctx)
    pc = {**ctx.cfg["predict"], **settings}
    model, _, _, _ = load_segmenter(model_dir / "model.pt", dev)
    recs = list(ctx.dataset.records(split) if records is None else records)
    kw = dict(batch_size=int(pc["batch_size"]), mask_threshold=float(pc["mask_threshold"]),
              min_score=float(pc["min_score"]), progress=ctx.progress)
    if recs and cacheable(model) and uniform_size(recs) and not pc.get("flip"):
        pool, name = _body_pool(ctx, split, recs)
        name = re.sub(r"[^\w.-]", "_", name)
        cache = body_cache(model, pool, dev, ctx.run_dir / "cache" / f"segmenter_body_{name}",
                           ctx.progress)
        where = {r.id: k for k, r in enumerate(pool)}
        return predict_from_body(model, recs, cache, ctx.dataset.category_ids, device=dev,
                                 positions=[where[r.id] for r in recs], **kw)
    # loaded to predict only, nothing trains: the same maps, 1.2–1.3× faster
    model.backbone.body = fold_batchnorm(model.backbone.body)
    # with flip: the image and its mirror, from the images (not the body cache)
    return predict(model, records_as_items(recs), ctx.dataset.category_ids, device=dev,
                   total=len(recs), flip=bool(pc.get("flip")), **kw)


def _body_pool(ctx: RunContext, split: str, recs: list) -> tuple[list, str]:
    """The images whose body maps one cache holds for predictions on ``recs`` of ``split``,
    and the cache's name: on the training split every image Mask R-CNN trains on (the
    pseudo masks' view), so that self-training's relabelled images and Table 3's images with
    masks read one cache; else the split's images. ``recs`` alone (named ``split+N``) when
    they are not all in it or its images differ in size."""
    from wiseseg.inference.predict import uniform_size
    from wiseseg.pseudo.labels import pseudo_view

    labels = ctx.stage_dir("pseudo") / "pseudo.json"
    pool = list(pseudo_view(labels, ctx.dataset, split).records
                if split == ctx.train_split and labels.is_file()
                else ctx.dataset.records(split))
    ids = {r.id for r in pool}
    if all(r.id in ids for r in recs) and uniform_size(pool):
        return pool, split
    return recs, f"{split}+{len(recs)}"


def run_predict_wise(ctx: RunContext, d: Path) -> dict:
    from wiseseg.inference.refine import refine_all, refine_summary
    from wiseseg.proposals import ProposalStore

    preds = _predict(ctx, ctx.stage_dir("wise"), ctx.val_split)
    atomic_write_json(d / "wise.json", preds)
    refined = refine_all(preds, ProposalStore.open(ctx.stage_dir("proposals")),
                         float(ctx.cfg["predict"]["refine_min_iou"]))
    atomic_write_json(d / "wise_refine.json", refined)
    return {"predictions": len(preds), "refine": refine_summary(refined)}


def run_predict_reference(ctx: RunContext, d: Path) -> dict:
    preds = _predict(ctx, ctx.stage_dir("reference"), ctx.val_split)
    atomic_write_json(d / "reference.json", preds)
    return {"predictions": len(preds)}


def run_prm(ctx: RunContext, d: Path) -> dict:
    from wiseseg.classifier.model_io import load_classifier
    from wiseseg.inference.prm_baseline import RetrievalSettings, prm_baseline
    from wiseseg.proposals import ProposalStore

    dev = _device(ctx)
    model, ccfg, _ = load_classifier(ctx.stage_dir("classifier") / "model.pt", dev)
    preds = prm_baseline(model, ctx.dataset.records(ctx.val_split),
                         ProposalStore.open(ctx.stage_dir("proposals")), ccfg["input_size"],
                         ctx.cfg["peaks"], ctx.dataset.category_ids,
                         RetrievalSettings.from_config(ctx.cfg["prm"]), device=dev,
                         progress=ctx.progress, workers=int(ctx.cfg["prm"].get("workers", 1)),
                         model_path=ctx.stage_dir("classifier") / "model.pt")
    atomic_write_json(d / "prm.json", preds)
    return {"predictions": len(preds)}


def run_pseudo_quality(ctx: RunContext, d: Path) -> dict:
    from wiseseg.pseudo.quality import pseudo_quality

    preds = _predict(ctx, ctx.stage_dir("wise"), ctx.train_split)
    atomic_write_json(d / "wise_train.json", preds)
    q = pseudo_quality(ctx.dataset, ctx.train_split, ctx.stage_dir("pseudo") / "pseudo.json",
                       predictions=preds)
    atomic_write_json(d / "quality.json", q, indent=2)
    return {k: v for k, v in q.items() if not isinstance(v, dict)}


def prediction_files(ctx: RunContext) -> dict[str, Path]:
    files = {"prm": ctx.stage_dir("prm") / "prm.json",
             "wise": ctx.stage_dir("predict_wise") / "wise.json",
             "wise_refine": ctx.stage_dir("predict_wise") / "wise_refine.json",
             "reference": ctx.stage_dir("predict_reference") / "reference.json"}
    return {k: v for k, v in files.items() if v.exists()}


def run_evaluate(ctx: RunContext, d: Path) -> dict:
    from wiseseg.evaluation import evaluate_predictions
    from wiseseg.evaluation.plots import plot_breakdowns

    out = {}
    for key, path in prediction_files(ctx).items():
        out[key] = evaluate_predictions(read_json(path, "predictions"), ctx.dataset,
                                        ctx.val_split,
                                        min_score=float(ctx.cfg["evaluate"]["min_score"]),
                                        source=path)
    atomic_write_json(d / "metrics.json", out, indent=2)
    if out:
        names = dict(METHODS)
        plot_breakdowns({names[k]: v for k, v in out.items()}, d)
    return {k: {t: v[t] for t in ("mAP25", "mAP50", "mAP75", "ABO")} for k, v in out.items()}


#: segmenter settings that concern pseudo masks only: the reference on true masks ignores them
PSEUDO_ONLY = ("mode", "dup_iou", "rounds", "self_training_score", "skip_unlabelled",
               "unlabelled_classes")


def _reference_ignores(ctx: RunContext) -> tuple[str, ...]:
    """The reference reads its own epochs when ``segmenter.reference_epochs`` is set."""
    own = ctx.cfg["segmenter"].get("reference_epochs") is not None
    return tuple(f"segmenter.{k}" for k in PSEUDO_ONLY + (("epochs",) if own else ()))


def _has_train_gt(ctx: RunContext) -> bool:
    return ctx.dataset.has_ground_truth(ctx.train_split)


def _reference_on(ctx: RunContext) -> bool:
    return ctx.reference and _has_train_gt(ctx)


STAGES = (
    Stage("classifier", run_classifier, config=("data", "classifier")),
    Stage("peaks", run_peaks, deps=("classifier",), config=("data", "peaks")),
    Stage("proposals", run_proposals, config=("data", "proposals"),
          settings=("pseudo.partial_labels",)),
    Stage("pseudo", run_pseudo, deps=("peaks", "proposals"),
          config=lambda ctx: ("pseudo", "peaks") + (("prm",) if _prm_candidates(ctx) else ()),
          ignores=("prm.workers",)),
    Stage("wise", run_wise, deps=("pseudo",), config=("segmenter",),
          ignores=("segmenter.reference_epochs",)),
    Stage("reference", run_reference, config=("data", "segmenter"), enabled=_reference_on,
          ignores=_reference_ignores),
    Stage("predict_wise", run_predict_wise, deps=("wise", "proposals"), config=("predict",),
          enabled=lambda ctx: ctx.val_split in ctx.dataset.splits),
    Stage("predict_reference", run_predict_reference, deps=("reference",),
          config=("predict",),
          enabled=lambda ctx: _reference_on(ctx) and ctx.val_split in ctx.dataset.splits),
    Stage("prm", run_prm, deps=("classifier", "proposals"), config=("peaks", "prm"),
          ignores=("prm.workers",),  # how the work is shared, not what it computes
          enabled=lambda ctx: ctx.val_split in ctx.dataset.splits),
    Stage("pseudo_quality", run_pseudo_quality, deps=("pseudo", "wise"), config=("predict",),
          enabled=_has_train_gt),
    Stage("evaluate", run_evaluate,
          deps=("prm", "predict_wise", "predict_reference"), config=("evaluate",),
          enabled=lambda ctx: ctx.has_val_gt()),
)
